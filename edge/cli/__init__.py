"""`poplar-edge`: the command line of the gateway box (installers, property staff).

Each group of commands lives in its own module; this one assembles them.
"""

from __future__ import annotations

import typer

from edge.cli import agent_cmds, devices

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Poplar (白杨) edge agent: poll meters, take gate and elevator events, forward them.")
agent_cmds.register(app)
app.add_typer(devices.app, name="devices", help="Register, list and remove devices (property staff).")

# Optional command groups, added by their own modules when present.
for _name in ("doctor_cmds", "profiles_cmds", "outbox_cmds", "read_cmds", "discover_cmds", "analytics_cmds"):
    try:
        _mod = __import__(f"edge.cli.{_name}", fromlist=["register"])
    except ModuleNotFoundError as _exc:
        if _exc.name != f"edge.cli.{_name}":
            raise
        continue
    _mod.register(app)


def main() -> None:
    app()
