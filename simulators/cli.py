"""`poplar-sim`: simulated devices for test engineers."""

from __future__ import annotations

import asyncio
import signal
from typing import Annotated, Optional

import typer

from common.cli import fail
from common.logs import setup_logging
from common.yamlconf import ConfigError

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Poplar simulators: meters over Modbus, face gates and elevators over MQTT.")


@app.callback()
def _root() -> None:
    """Poplar simulators: meters over Modbus, face gates and elevators over MQTT."""


async def _until_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


@app.command("meter")
def meter(
    profile: Annotated[str, typer.Option(help="Modbus device profile id, e.g. eastron-sdm120")] = ...,
    port: Annotated[int, typer.Option(help="TCP port to serve Modbus TCP on (0 = any free port)")] = 5020,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    units: Annotated[str, typer.Option(help="unit ids served, e.g. 1-10 or 1,3,5")] = "1",
    timeout_rate: Annotated[float, typer.Option(help="share of requests left unanswered (0-1)")] = 0.0,
    exception_rate: Annotated[float, typer.Option(help="share answered with exception 4 (0-1)")] = 0.0,
    dead_units: Annotated[str, typer.Option(help="unit ids that never answer, e.g. 3,7")] = "",
    seed: Annotated[int, typer.Option(help="random seed (same seed, same meters)")] = 0,
) -> None:
    """Serve simulated meters of one profile over Modbus TCP until stopped."""
    setup_logging("info")
    from edge.profiles import ProfileLibrary
    from simulators.meter import Faults, MeterServer, SimMeter, parse_units

    try:
        prof = ProfileLibrary().get(profile)
    except ConfigError as exc:
        fail(str(exc), 2)
    if getattr(prof, "kind", "modbus") != "modbus":
        fail(f"profile {profile!r} is not a Modbus profile", 2)
    try:
        unit_ids = parse_units(units)
        dead = set(parse_units(dead_units)) if dead_units else set()
    except ValueError as exc:
        fail(str(exc), 2)
    for name, rate in (("--timeout-rate", timeout_rate), ("--exception-rate", exception_rate)):
        if not 0 <= rate <= 1:
            fail(f"{name} {rate}: give a share from 0 to 1", 2)

    async def main() -> None:
        meters = {u: SimMeter(prof, u, seed=seed * 1000 + u) for u in unit_ids}
        server = MeterServer(meters, Faults(timeout_rate, exception_rate, dead), seed)
        bound = await server.start(host, port)
        typer.echo(f"serving {len(meters)} simulated {profile} meters (units {units}) on {host}:{bound} "
                   "(Modbus TCP); Ctrl-C stops", err=True)
        await _until_signal()
        await server.stop()

    asyncio.run(main())


# Other simulators register themselves from their own modules when present.
for _name in ("mqtt_sims",):
    try:
        _mod = __import__(f"simulators.{_name}", fromlist=["register"])
    except ModuleNotFoundError as _exc:
        if _exc.name != f"simulators.{_name}":
            raise
        continue
    _mod.register(app)


def main() -> None:
    app()
