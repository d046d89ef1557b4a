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
    port: Annotated[Optional[int], typer.Option(
        help="TCP port to serve on (0 = any free port; default 5020, none with --serial)")] = None,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    units: Annotated[str, typer.Option(help="unit ids served, e.g. 1-10 or 1,3,5")] = "1",
    rtu_over_tcp: Annotated[bool, typer.Option(
        "--rtu-over-tcp", help="speak RTU frames on the TCP port, like a serial device server")] = False,
    serial: Annotated[Optional[str], typer.Option(
        help="serve Modbus RTU on this serial port; 'pty' makes a virtual one and prints its path")] = None,
    baud: Annotated[Optional[int], typer.Option(help="serial baud rate (default: the profile's)")] = None,
    parity: Annotated[Optional[str], typer.Option(help="serial parity N, E or O (default: the profile's)")] = None,
    timeout_rate: Annotated[float, typer.Option(help="share of requests left unanswered (0-1)")] = 0.0,
    exception_rate: Annotated[float, typer.Option(help="share answered with exception 4 (0-1)")] = 0.0,
    garble_rate: Annotated[float, typer.Option(help="share answered with a broken frame (0-1)")] = 0.0,
    wrong_unit_rate: Annotated[float, typer.Option(help="share answered under another unit id (0-1)")] = 0.0,
    dead_units: Annotated[str, typer.Option(help="unit ids that never answer, e.g. 3,7")] = "",
    seed: Annotated[int, typer.Option(help="random seed (same seed, same meters)")] = 0,
) -> None:
    """Serve simulated meters of one profile over Modbus TCP, RTU over TCP or an RTU serial line."""
    setup_logging("info")
    from edge.profiles import ProfileLibrary
    from simulators.meter import Faults, MeterServer, SerialMeterServer, SimMeter, parse_units

    try:
        prof = ProfileLibrary().get(profile)
    except ConfigError as exc:
        fail(str(exc), 2)
    if getattr(prof, "kind", "modbus") != "modbus":
        fail(f"profile {profile!r} is not a Modbus profile; `poplar-edge profiles list` shows the kinds", 2)
    try:
        unit_ids = parse_units(units)
        dead = set(parse_units(dead_units)) if dead_units else set()
    except ValueError as exc:
        fail(str(exc), 2)
    for name, rate in (("--timeout-rate", timeout_rate), ("--exception-rate", exception_rate),
                       ("--garble-rate", garble_rate), ("--wrong-unit-rate", wrong_unit_rate)):
        if not 0 <= rate <= 1:
            fail(f"{name} {rate}: give a share from 0 to 1", 2)
    if parity is not None and parity.upper() not in ("N", "E", "O"):
        fail(f"--parity {parity!r}: use N, E or O", 2)
    if port is None and serial is None:
        port = 5020
    line = prof.serial
    settings = (baud or (line.baud if line else 9600), (parity or (line.parity if line else "N")).upper(),
                line.data_bits if line else 8, line.stop_bits if line else 1)

    async def main() -> None:
        meters = {u: SimMeter(prof, u, seed=seed * 1000 + u) for u in unit_ids}
        faults = Faults(timeout_rate, exception_rate, dead, garble_rate, wrong_unit_rate)
        server = MeterServer(meters, faults, seed, framing="rtu" if rtu_over_tcp else "tcp")
        ser = None
        if port is not None:
            try:
                bound = await server.start(host, port)
            except OSError as exc:
                fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port", 1)
            typer.echo(f"serving {len(meters)} simulated {profile} meters (units {units}) on {host}:{bound} "
                       f"({'RTU over TCP' if rtu_over_tcp else 'Modbus TCP'}); Ctrl-C stops", err=True)
        if serial is not None:
            ser = SerialMeterServer(server, serial, *settings)
            try:
                path = ser.start()
            except (OSError, ValueError) as exc:
                fail(f"cannot open serial port {serial}: {exc}", 1)
            typer.echo(f"serving {len(meters)} simulated {profile} meters (units {units}) as Modbus RTU on "
                       f"{path} at {settings[0]} {settings[2]}{settings[1]}{settings[3]}; Ctrl-C stops", err=True)
        await _until_signal()
        if ser is not None:
            ser.stop()
        await server.stop()

    asyncio.run(main())


# The MQTT simulators live in their own module.
from simulators import mqtt_sims  # noqa: E402

mqtt_sims.register(app)


def main() -> None:
    app()
