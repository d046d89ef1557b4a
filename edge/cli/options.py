"""Options and loaders shared by the edge commands."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from common.cli import fail
from common.yamlconf import ConfigError
from edge import config as edge_config

ConfigOpt = Annotated[Optional[str], typer.Option(
    "--config", "-c", envvar=edge_config.ENV_VAR, show_envvar=True,
    help=f"edge config file (default {edge_config.DEFAULT_PATH})")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON document instead of text")]


def load_config(path: str | None) -> edge_config.EdgeConfig:
    p = edge_config.resolve_path(path)
    try:
        return edge_config.load(p)
    except ConfigError as exc:
        hint = ""
        if not p.exists():
            hint = ("\n  create one with: poplar-edge init --config PATH --site SITE --gateway GW "
                    "--state-dir DIR --local-broker mqtt://HOST:PORT --uplink mqtt://HOST:PORT")
        fail(f"cannot use the edge config:\n  {str(exc).replace(chr(10), chr(10) + '  ')}{hint}", 2)
