"""Options and loaders shared by the edge commands."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from common.cli import load_config_or_fail
from edge import config as edge_config

ConfigOpt = Annotated[Optional[str], typer.Option(
    "--config", "-c", envvar=edge_config.ENV_VAR, show_envvar=True,
    help=f"edge config file (default {edge_config.DEFAULT_PATH})")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON document instead of text")]


# How a Modbus device is reached: shared by `devices add` and `read`.
TcpOpt = Annotated[Optional[str], typer.Option(help="Modbus TCP meter or gateway, HOST:PORT")]
RtuOverTcpOpt = Annotated[Optional[str], typer.Option(help="serial device server (RTU over TCP), HOST:PORT")]
SerialOpt = Annotated[Optional[str], typer.Option(help="RS-485 serial port, e.g. /dev/ttyUSB0")]
BaudOpt = Annotated[Optional[int], typer.Option(help="serial baud rate (default: the profile's)")]
ParityOpt = Annotated[Optional[str], typer.Option(help="serial parity N, E or O (default: the profile's)")]
UnitOpt = Annotated[Optional[int], typer.Option(help="Modbus unit id 1-247 (default: the profile's)")]


def load_config(path: str | None) -> edge_config.EdgeConfig:
    return load_config_or_fail(
        edge_config.load, edge_config.resolve_path(path),
        "create one with: poplar-edge init --config PATH --site SITE --gateway GW "
        "--state-dir DIR --local-broker mqtt://HOST:PORT --uplink mqtt://HOST:PORT")
