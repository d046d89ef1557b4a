"""`poplar-edge read ...` and `poplar-edge devices test NAME`: read a meter once, for installers.

Both run the same plan the agent polls with (edge/modbus/reader.py), print every field with its
unit, and say in plain words what went wrong when the meter does not answer.
Exit status: 0 every field read, 1 nothing read, 3 some fields read and some refused.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Optional

import typer

from common.cli import fail, print_json, table
from common.yamlconf import ConfigError
from edge import config as edge_config
from edge.cli.devices import app as devices_app
from edge.cli.options import (BaudOpt, ConfigOpt, JsonOpt, ParityOpt, RtuOverTcpOpt, SerialOpt, TcpOpt, UnitOpt,
                              check_unit_parity, load_config, modbus_transport, one_address)
from edge.cli.profiles_cmds import library
from edge.profiles import ProfileLibrary
from edge.registry import Device, Registry, Transport


def register(app: typer.Typer) -> None:
    app.command("read")(read)
    devices_app.command("test")(test)


def _modbus_settings(config: str | None) -> tuple[float, int, int | None]:
    """timeout_s, retries, max_gap: from the edge config when there is one, else the defaults."""
    path = edge_config.resolve_path(config)
    if path.exists():
        m = load_config(str(path)).modbus
    else:
        m = edge_config.ModbusConfig()
    return m.timeout_s, m.retries, m.max_gap


def _read_once(prof, transport: Transport, unit: int, timeout: float, retries: int, max_gap: int | None):
    from edge.modbus.plan import plan_reads
    from edge.modbus.reader import read_meter
    from edge.modbus.transport import Bus, serial_line

    line = serial_line(transport, prof.serial) if transport.kind in ("serial", "rtu_over_tcp") else None

    async def main():
        bus = Bus(transport, timeout, 1, line)
        try:
            return await read_meter(bus, unit, plan_reads(prof, max_gap), retries=retries), bus
        finally:
            bus.close()

    return asyncio.run(main())


def _report(prof, reading, bus, unit: int, json_out: bool) -> None:
    if json_out:
        print_json({k: (int(v) if isinstance(v, bool) else v) for k, v in reading.values.items()
                    if isinstance(v, (int, float, bool))})
    elif reading.values:
        rows = []
        for reg in prof.polled_registers():
            if reg.field in reading.values:
                v = reading.values[reg.field]
                shown = f"{v:.6g}" if isinstance(v, float) else str(v)
                rows.append([reg.field, shown, reg.unit, reg.description])
        typer.echo(f"{prof.id} unit {unit} at {bus.describe()}: {len(reading.values)} fields in "
                   f"{reading.requests} request(s)")
        typer.echo(table(rows, ["field", "value", "unit", "description"]))
    for p in reading.problems:
        typer.echo(f"error: {p}", err=True)
    if not reading.values:
        codes = {getattr(p, "code", None) for p in reading.problems}
        if reading.problems and codes <= {1, 2}:
            typer.echo(f"hint: the meter answers but refuses every register of {prof.id}: is it really a "
                       f"{prof.vendor} {prof.model}? try another --profile", err=True)
        raise typer.Exit(1)
    if reading.problems:
        raise typer.Exit(3)


def read(
    profile: Annotated[str, typer.Option(help="Modbus profile id (poplar-edge profiles list)")] = ...,
    tcp: TcpOpt = None,
    rtu_over_tcp: RtuOverTcpOpt = None,
    serial: SerialOpt = None,
    baud: BaudOpt = None,
    parity: ParityOpt = None,
    unit: UnitOpt = None,
    timeout: Annotated[Optional[float], typer.Option(help="seconds to wait for each answer (default: config)")] = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Read a meter once, without registering it, and print every field with its unit."""
    one_address({"--tcp": tcp, "--rtu-over-tcp": rtu_over_tcp, "--serial": serial},
                "--tcp HOST:PORT, --rtu-over-tcp HOST:PORT or --serial DEVICE")
    check_unit_parity(unit, parity)
    if baud is not None and not 300 <= baud <= 921600:
        fail(f"--baud {baud}: use a serial speed such as 2400, 9600 or 19200", 2)
    if timeout is not None and not 0 < timeout <= 60:
        fail(f"--timeout {timeout}: use more than 0 and up to 60 seconds", 2)
    lib = library(config)
    prof = _modbus_profile(lib, profile)
    t = modbus_transport(tcp, rtu_over_tcp, serial, baud, parity)  # serial defaults: the profile's, at read time
    t_s, retries, max_gap = _modbus_settings(config)
    u = unit if unit is not None else prof.defaults.unit_id
    reading, bus = _read_once(prof, t, u, timeout or t_s, retries, max_gap)
    _report(prof, reading, bus, u, json_out)


def _modbus_profile(lib: ProfileLibrary, profile_id: str):
    try:
        prof = lib.get(profile_id)
    except ConfigError as exc:
        fail(str(exc), 2)
    if getattr(prof, "kind", None) != "modbus":
        fail(f"profile {profile_id!r} is not a Modbus profile; read works on meters", 2)
    return prof


def test(
    name: Annotated[str, typer.Argument(help="registered device name")],
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Read a registered meter once, as the agent would, and print every field with its unit."""
    cfg = load_config(config)
    reg = Registry(cfg.registry_db)
    try:
        dev: Device | None = reg.get(name)
    finally:
        reg.close()
    if dev is None:
        fail(f"no device named {name!r}; `poplar-edge devices list` shows the names", 1)
    if dev.transport.kind not in ("tcp", "rtu_over_tcp", "serial"):
        fail(f"{name} is reached over {dev.transport.kind}, not Modbus; its events show in `poplar-edge status`", 2)
    prof = _modbus_profile(ProfileLibrary(cfg.profiles_dirs), dev.profile)
    u = dev.unit if dev.unit is not None else prof.defaults.unit_id
    reading, bus = _read_once(prof, dev.transport, u, cfg.modbus.timeout_s, cfg.modbus.retries, cfg.modbus.max_gap)
    _report(prof, reading, bus, u, json_out)
