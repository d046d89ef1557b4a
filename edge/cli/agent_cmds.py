"""`poplar-edge init`, `run` and `status`."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
import yaml

from common.broker_config import tls_section
from common.cli import fail, print_json, run_until_signal, table
from common.logs import setup_logging
from common.mqtt import MqttUrl
from common.wire import ID_PATTERN
from edge import config as edge_config
from edge.cli.options import ConfigOpt, JsonOpt, load_config
from edge.outbox import read_stats_offline
from edge.registry import Registry


def register(app: typer.Typer) -> None:
    app.command("init")(init)
    app.command("run")(run)
    app.command("status")(status)


def init(
    config: ConfigOpt = None,
    site: Annotated[str, typer.Option(help="site (compound) id, e.g. sunny-garden")] = ...,
    gateway: Annotated[str, typer.Option(help="this box's id, e.g. gw-01")] = ...,
    state_dir: Annotated[str, typer.Option(help="folder for the outbox, registry and secrets")] = ...,
    local_broker: Annotated[Optional[str], typer.Option(help="the box's MQTT broker, mqtt://HOST:PORT")] = None,
    uplink: Annotated[str, typer.Option(help="central broker, mqtt://HOST:PORT or mqtts://HOST:PORT")] = ...,
    uplink_username: Annotated[Optional[str], typer.Option(help="per-gateway user on the central broker")] = None,
    uplink_password: Annotated[Optional[str], typer.Option(help="its password")] = None,
    uplink_ca_file: Annotated[Optional[str], typer.Option(
        help="PEM file of the CA that signed the central broker's certificate (default: the system's CAs)")] = None,
    uplink_cert_file: Annotated[Optional[str], typer.Option(help="this gateway's client certificate (PEM)")] = None,
    uplink_key_file: Annotated[Optional[str], typer.Option(help="its private key (PEM)")] = None,
    force: Annotated[bool, typer.Option(help="overwrite an existing config")] = False,
) -> None:
    """Write a working edge config (and create the state folder)."""
    path = edge_config.resolve_path(config)
    for name, value in (("--site", site), ("--gateway", gateway)):
        if not ID_PATTERN.match(value):
            fail(f"{name} {value!r}: use 1-64 letters, digits, '.', '_' or '-' (no spaces or '/')", 2)
    for name, value in (("--local-broker", local_broker), ("--uplink", uplink)):
        if value is None:
            continue
        try:
            MqttUrl.parse(value)
        except ValueError as exc:
            fail(f"{name} {value!r}: {exc}", 2)
    try:
        tls = tls_section(uplink_ca_file, uplink_cert_file, uplink_key_file, "--uplink-")
    except ValueError as exc:
        fail(str(exc), 2)
    if path.exists() and not force:
        fail(f"{path} already exists; use --force to overwrite it", 1)
    doc: dict = {"site": site, "gateway": gateway, "state_dir": str(Path(state_dir).resolve())}
    if local_broker:
        doc["local_broker"] = {"url": local_broker}
    doc["uplink"] = {"url": uplink}
    if uplink_username:
        doc["uplink"]["username"] = uplink_username
        doc["uplink"]["password"] = uplink_password or ""
    if tls:
        doc["uplink"]["tls"] = tls
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# Poplar edge config, written by poplar-edge init. Every setting: configs/edge.example.yaml\n"
                    + yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    if uplink_password:
        os.chmod(path, 0o600)
    cfg = edge_config.load(path)  # proves the file we wrote is valid
    cfg.state_path.mkdir(parents=True, exist_ok=True)
    Registry(cfg.registry_db).close()
    try:
        from edge.privacy import load_or_create_secret
        load_or_create_secret(cfg.secret_file)
    except ImportError:
        pass
    typer.echo(f"wrote {path}\nstate folder {cfg.state_dir}\nnext: poplar-edge devices add ... then poplar-edge run")


def run(config: ConfigOpt = None) -> None:
    """Run the agent in the foreground until SIGTERM or Ctrl-C."""
    cfg = load_config(config)
    setup_logging(cfg.log_level)
    from edge.agent import Agent

    run_until_signal(lambda stop: Agent(cfg).run(stop))


def _agent_running(doc: dict) -> bool:
    pid = doc.get("pid")
    fresh = time.time_ns() - int(doc.get("updated_ns", 0)) < 15e9
    if not pid or not fresh:
        return False
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError):
        return False
    return True


def status(config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """Devices, outbox depth and uplink state."""
    cfg = load_config(config)
    st: dict = {}
    if cfg.status_file.exists():
        try:
            st = json.loads(cfg.status_file.read_text())
        except (OSError, ValueError):
            st = {}
    running = _agent_running(st)
    reg = Registry(cfg.registry_db)
    devices = reg.all()
    reg.close()
    dev_state = st.get("devices", {}) if running else {}
    outbox = read_stats_offline(cfg.outbox_db)
    doc = {
        "site": cfg.site, "gateway": cfg.gateway, "agent_running": running,
        # str(MqttUrl) leaves out any user:password given in the URL
        "uplink": {**st.get("uplink", {"url": str(cfg.uplink.parsed())}), **({} if running else {"connected": False})},
        "outbox": outbox,
        "devices": [{"id": d.id, "name": d.name, "profile": d.profile, "address": d.transport.describe(),
                     "enabled": d.enabled,
                     "online": dev_state.get(d.id, {}).get("online"),
                     "consecutive_failures": dev_state.get(d.id, {}).get("consecutive_failures")}
                    for d in devices],
    }
    if running:  # the agent's counters: drops by reason, read pauses, resends...
        doc["metrics"] = st.get("metrics", {})
    if json_out:
        print_json(doc)
        return
    up = doc["uplink"]
    typer.echo(f"site {cfg.site}  gateway {cfg.gateway}  agent {'running' if running else 'NOT running'}")
    typer.echo(f"uplink {up.get('url')}: {'connected' if up.get('connected') else 'not connected'}"
               + (f" ({up['last_error']})" if up.get("last_error") else "")
               + (f"; {up.get('in_flight_batches', 0)} batches in flight" if running else ""))
    dropped = sum(outbox.get("dropped", {}).values())
    typer.echo(f"outbox {outbox['rows']} points, {outbox['bytes'] / 1e6:.1f} MB"
               + (f", {dropped} dropped so far" if dropped else ""))
    rows = [[d["id"], d["profile"], d["address"], "yes" if d["enabled"] else "no",
             {True: "online", False: "OFFLINE", None: "-"}[d["online"]]] for d in doc["devices"]]
    typer.echo(table(rows, ["device", "profile", "address", "enabled", "state"]) if rows else "no devices registered")
