"""Options and loaders shared by the edge commands."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from common.cli import fail, load_config_or_fail
from edge import config as edge_config
from edge.registry import Transport

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


def one_address(given: dict[str, str | None], choices: str) -> str:
    """The one address option given (`--tcp` ...), or fail saying which to give."""
    chosen = [option for option, value in given.items() if value]
    if len(chosen) != 1:
        fail(f"give exactly one address: {choices}" + (f" (got {', '.join(chosen)})" if chosen else ""), 2)
    return chosen[0]


def check_unit_parity(unit: int | None, parity: str | None) -> None:
    if unit is not None and not 1 <= unit <= 247:
        fail(f"--unit {unit}: Modbus unit ids are 1 to 247", 2)
    if parity is not None and parity.upper() not in ("N", "E", "O"):
        fail(f"--parity {parity!r}: use N, E or O", 2)


def parse_host_port(value: str, option: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        fail(f"{option} {value!r}: expected HOST:PORT, e.g. 192.168.1.50:502", 2)
    return host.strip("[]"), int(port)


def modbus_transport(tcp: str | None, rtu_over_tcp: str | None, serial: str | None, baud: int | None,
                     parity: str | None, defaults=None) -> Transport:
    """The Transport the address options describe. With `defaults` (a profile's serial settings),
    a serial line gets them for whatever was not given; without, they are left to the reader."""
    if tcp:
        host, port = parse_host_port(tcp, "--tcp")
        return Transport("tcp", host=host, port=port)
    if rtu_over_tcp:
        host, port = parse_host_port(rtu_over_tcp, "--rtu-over-tcp")
        return Transport("rtu_over_tcp", host=host, port=port)
    if defaults is None:
        return Transport("serial", device=serial, baud=baud, parity=parity.upper() if parity else None)
    return Transport("serial", device=serial, baud=baud or defaults.baud, parity=(parity or defaults.parity).upper(),
                     data_bits=defaults.data_bits, stop_bits=defaults.stop_bits)
