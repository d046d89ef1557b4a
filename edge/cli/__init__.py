"""`poplar-edge`: the command line of the gateway box (installers, property staff).

Each group of commands lives in its own module; this one assembles them.
"""

from __future__ import annotations

import typer

from edge.cli import (agent_cmds, analytics_cmds, devices, discover_cmds, doctor_cmds, outbox_cmds, profiles_cmds,
                      read_cmds)

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Poplar (白杨) edge agent: poll meters, take gate and elevator events, forward them.")
agent_cmds.register(app)
app.add_typer(devices.app, name="devices", help="Register, list and remove devices (property staff).")

for _group in (doctor_cmds, profiles_cmds, read_cmds, discover_cmds, outbox_cmds, analytics_cmds):
    _group.register(app)


def main() -> None:
    app()
