"""`poplar-edge devices ...`: the device registry, for property staff."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
import yaml

from common.cli import fail, print_json, table
from common.yamlconf import ConfigError
from edge.cli.options import (BaudOpt, ConfigOpt, JsonOpt, ParityOpt, RtuOverTcpOpt, SerialOpt, TcpOpt, UnitOpt,
                              check_unit_parity, load_config, modbus_transport, one_address)
from edge.modbus.profile import SerialSettings
from edge.profiles import ProfileLibrary
from edge.registry import Device, Registry, RegistryError, Transport

app = typer.Typer(no_args_is_help=True)


def _open(config: str | None) -> tuple[Registry, ProfileLibrary]:
    cfg = load_config(config)
    return Registry(cfg.registry_db), ProfileLibrary(cfg.profiles_dirs)


@app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="unique device name; becomes the `device` tag (中文 welcome)")],
    profile: Annotated[str, typer.Option(help="device profile id (poplar-edge profiles list)")] = ...,
    tcp: TcpOpt = None,
    rtu_over_tcp: RtuOverTcpOpt = None,
    serial: SerialOpt = None,
    baud: BaudOpt = None,
    parity: ParityOpt = None,
    mqtt_id: Annotated[Optional[str], typer.Option(help="the device's id in its MQTT topics or payloads")] = None,
    unit: UnitOpt = None,
    building: Annotated[Optional[str], typer.Option(help="location tag: building (幢)")] = None,
    unit_no: Annotated[Optional[str], typer.Option(help="location tag: unit (单元)")] = None,
    floor: Annotated[Optional[str], typer.Option(help="location tag: floor")] = None,
    interval: Annotated[Optional[float], typer.Option(help="poll interval in seconds (default: the profile's)")] = None,
    display_name: Annotated[Optional[str], typer.Option(help="a friendlier name for screens")] = None,
    care_watch: Annotated[bool, typer.Option(help="household consented to care watch (关爱独居老人)")] = False,
    disabled: Annotated[bool, typer.Option(help="register it but do not read it yet")] = False,
    config: ConfigOpt = None,
) -> None:
    """Register a device."""
    reg, lib = _open(config)
    one_address({"--tcp": tcp, "--rtu-over-tcp": rtu_over_tcp, "--serial": serial, "--mqtt-id": mqtt_id},
                "--tcp HOST:PORT, --rtu-over-tcp HOST:PORT, --serial DEVICE or --mqtt-id ID")
    try:
        prof = lib.get(profile)
    except ConfigError as exc:
        fail(str(exc), 2)
    kind = lib.kind(profile)
    if mqtt_id and kind != "mqtt":
        fail(f"profile {profile!r} is a {kind} profile; --mqtt-id needs an MQTT profile", 2)
    if not mqtt_id and kind != "modbus":
        fail(f"profile {profile!r} is an {kind} profile; register it with --mqtt-id ID", 2)
    check_unit_parity(unit, parity)
    if interval is not None and not 0.1 <= interval <= 86400:
        fail(f"--interval {interval}: use 0.1 to 86400 seconds", 2)
    if mqtt_id:
        t = Transport("mqtt", mqtt_id=mqtt_id)
    else:  # a Modbus profile (checked above); serial settings default to the meter's factory ones
        t = modbus_transport(tcp, rtu_over_tcp, serial, baud, parity, prof.serial or SerialSettings(baud=9600))
    tags = {"building": building, "unit_no": unit_no, "floor": floor}
    dev = Device(id=name, profile=profile, transport=t, display_name=display_name or "", unit=unit,
                 tags={k: v for k, v in tags.items() if v}, interval_s=interval, enabled=not disabled,
                 options={"care_watch": True} if care_watch else {})
    try:
        reg.add(dev)
        if mqtt_id:
            reg.forget_discovered(mqtt_id)
    except RegistryError as exc:
        fail(str(exc), 1)
    typer.echo(f"registered {name} ({profile}, {t.describe()})")


def _device_row(d: Device) -> dict:
    return {"id": d.id, "name": d.name, "profile": d.profile, "address": d.transport.describe(),
            "transport": d.to_doc()["transport"], "unit": d.unit, "tags": d.tags, "interval_s": d.interval_s,
            "enabled": d.enabled, "options": d.options}


@app.command("list")
def list_(config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """List registered devices."""
    reg, _ = _open(config)
    devices = reg.all()
    if json_out:
        print_json([_device_row(d) for d in devices])
        return
    if not devices:
        typer.echo("no devices registered; add one with: poplar-edge devices add NAME --profile ID --tcp HOST:PORT")
        return
    rows = [[d.id, d.profile, d.transport.describe(), d.unit if d.unit is not None else "",
             " ".join(f"{k}={v}" for k, v in d.tags.items()), d.interval_s or "", "yes" if d.enabled else "no"]
            for d in devices]
    typer.echo(table(rows, ["device", "profile", "address", "unit", "location", "interval", "enabled"]))


@app.command("remove")
def remove(name: str, config: ConfigOpt = None) -> None:
    """Retire a device (its data in InfluxDB stays)."""
    reg, _ = _open(config)
    try:
        reg.remove(name)
    except RegistryError as exc:
        fail(str(exc))
    typer.echo(f"removed {name}")


@app.command("rename")
def rename(old: str, new: str, config: ConfigOpt = None) -> None:
    """Rename a device. New points carry the new name as their `device` tag."""
    reg, _ = _open(config)
    try:
        reg.rename(old, new)
    except RegistryError as exc:
        fail(str(exc))
    typer.echo(f"renamed {old} -> {new}")


@app.command("move")
def move(
    name: str,
    building: Annotated[Optional[str], typer.Option()] = None,
    unit_no: Annotated[Optional[str], typer.Option()] = None,
    floor: Annotated[Optional[str], typer.Option()] = None,
    config: ConfigOpt = None,
) -> None:
    """Change a device's location tags (give '' to clear one)."""
    reg, _ = _open(config)
    dev = reg.get(name)
    if dev is None:
        fail(f"no device named {name!r}")
    for k, v in (("building", building), ("unit_no", unit_no), ("floor", floor)):
        if v is not None:
            dev.tags[k] = v
    try:
        reg.update(dev)
    except RegistryError as exc:
        fail(str(exc))
    typer.echo(f"{name}: " + (" ".join(f"{k}={v}" for k, v in reg.get(name).tags.items()) or "no location"))


@app.command("enable")
def enable(name: str, config: ConfigOpt = None) -> None:
    """Start reading a device again."""
    reg, _ = _open(config)
    try:
        reg.set_enabled(name, True)
    except RegistryError as exc:
        fail(str(exc))
    typer.echo(f"enabled {name}")


@app.command("disable")
def disable(name: str, config: ConfigOpt = None) -> None:
    """Stop reading a device without forgetting it."""
    reg, _ = _open(config)
    try:
        reg.set_enabled(name, False)
    except RegistryError as exc:
        fail(str(exc))
    typer.echo(f"disabled {name}")


@app.command("export")
def export(file: Annotated[Path, typer.Argument(help="YAML file to write ('-' for stdout)")], config: ConfigOpt = None) -> None:
    """Export the registry as YAML."""
    reg, _ = _open(config)
    text = yaml.safe_dump({"devices": [d.to_doc() for d in reg.all()]}, allow_unicode=True, sort_keys=False)
    if str(file) == "-":
        typer.echo(text, nl=False)
    else:
        file.write_text(text, encoding="utf-8")
        typer.echo(f"wrote {len(reg.all())} devices to {file}")


@app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help="YAML file written by devices export")],
    replace: Annotated[bool, typer.Option(help="overwrite devices with the same name")] = False,
    config: ConfigOpt = None,
) -> None:
    """Import devices from YAML."""
    reg, lib = _open(config)
    try:
        doc = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        fail(f"{file}: cannot read: {exc}")
    items = doc.get("devices") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        fail(f"{file}: expected a top-level 'devices:' list")
    n = 0
    for i, d in enumerate(items):
        try:
            dev = Device.from_doc(d)
            lib.get(dev.profile)
            reg.add(dev, replace=replace)
            n += 1
        except (TypeError, KeyError, ConfigError, RegistryError) as exc:
            fail(f"{file}: devices[{i}]: {exc}; nothing after it was imported ({n} were)")
    typer.echo(f"imported {n} devices")
