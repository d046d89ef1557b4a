"""`poplar-edge doctor`: the installer's checklist at the gateway box.

Each check says what is wrong and what to do. Exit code 0 when everything passes, 1 otherwise.
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import typer

from common.cli import print_json
from common.mqtt import probe
from common.yamlconf import ConfigError
from edge import config as edge_config
from edge.cli.options import ConfigOpt, JsonOpt
from edge.profiles import ProfileLibrary
from edge.registry import Registry


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    hint: str = ""


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)


def _tcp(host: str, port: int, timeout: float = 2.0) -> str | None:
    try:
        with socket.create_connection((host, port), timeout):
            return None
    except OSError as exc:
        return exc.strerror or str(exc)


def run_checks(config: str | None) -> list[Check]:
    path = edge_config.resolve_path(config)
    checks: list[Check] = []
    try:
        cfg = edge_config.load(path)
    except ConfigError as exc:
        return [Check("config", False, str(exc), "fix the lines named above; configs/edge.example.yaml shows every setting")]
    checks.append(Check("config", True, f"{path} is valid (site {cfg.site}, gateway {cfg.gateway})"))

    state = cfg.state_path
    if not state.exists():
        checks.append(Check("state folder", False, f"{state} does not exist", f"mkdir -p {state}"))
    elif not os.access(state, os.W_OK):
        checks.append(Check("state folder", False, f"{state} is not writable by this user",
                            "chown the folder to the user that runs poplar-edge"))
    else:
        free = shutil.disk_usage(state).free
        ok = free > min(cfg.outbox.max_bytes, 512 * 1024**2)
        checks.append(Check("disk space", ok, f"{free / 1e9:.1f} GB free in {state}; outbox cap "
                            f"{cfg.outbox.max_bytes / 1e9:.1f} GB",
                            "" if ok else "free disk space or lower outbox.max_bytes"))
    if cfg.outbox_db.exists():
        try:
            db = sqlite3.connect(f"file:{cfg.outbox_db}?mode=ro", uri=True, timeout=5)
            res = db.execute("PRAGMA quick_check").fetchone()[0]
            rows = db.execute("SELECT count(*) FROM points").fetchone()[0]
            db.close()
            checks.append(Check("outbox", res == "ok", f"{rows} points waiting; integrity {res}",
                                "" if res == "ok" else "the agent moves a damaged outbox aside on start"))
        except sqlite3.DatabaseError as exc:
            checks.append(Check("outbox", False, f"cannot read {cfg.outbox_db}: {exc}",
                                "the agent moves a damaged outbox aside on start"))
    secret = cfg.secret_file
    if secret.exists():
        mode = stat.S_IMODE(secret.stat().st_mode)
        ok = not mode & 0o077
        checks.append(Check("site secret", ok, f"{secret} mode {oct(mode)}",
                            "" if ok else f"chmod 600 {secret} (it keys residents' pseudonyms)"))
    year = time.gmtime().tm_year
    checks.append(Check("clock", year >= 2024, f"system clock says {time.strftime('%Y-%m-%d %H:%M:%S')} UTC"
                        if year >= 2024 else f"system clock says year {year}",
                        "" if year >= 2024 else "set the time (NTP); until then the agent corrects "
                                                "timestamps from the collector's clock"))

    if cfg.local_broker:
        why = probe(cfg.local_broker.parsed(), cfg.local_broker.username, cfg.local_broker.password,
                    cfg.local_broker.tls_files(), timeout=3)
        checks.append(Check("box broker", why is None, why or f"{cfg.local_broker.url} accepts connections",
                            "" if why is None else "start Mosquitto on the box: systemctl enable --now mosquitto"))
    u = cfg.uplink
    why = probe(u.parsed(), u.username, u.password, u.tls_files(), timeout=5)
    checks.append(Check("uplink", why is None, why or f"{u.url} accepts our login",
                        "" if why is None else "points wait in the outbox until the uplink works; "
                                               "ask central IT for the address and credentials"))

    lib = ProfileLibrary(cfg.profiles_dirs)
    bad_profiles = []
    for pid in lib.ids():
        try:
            lib.get(pid)
        except ConfigError as exc:
            bad_profiles.append(str(exc).splitlines()[0])
    checks.append(Check("profiles", not bad_profiles, f"{len(lib.ids())} profiles" if not bad_profiles
                        else "; ".join(bad_profiles), "" if not bad_profiles else "poplar-edge profiles validate FILE"))

    reg = Registry(cfg.registry_db)
    devices = [d for d in reg.all() if d.enabled]
    reg.close()
    known = set(lib.ids())
    for d in devices:
        if d.profile not in known:
            checks.append(Check(f"device {d.id}", False, f"profile {d.profile!r} is not installed",
                                "poplar-edge profiles list shows the installed ones"))
        elif d.transport.kind in ("tcp", "rtu_over_tcp"):
            why = _tcp(d.transport.host, d.transport.port)
            checks.append(Check(f"device {d.id}", why is None, f"{d.transport.describe()}: "
                                + ("reachable" if why is None else why),
                                "" if why is None else "check the address, cable, and that the meter or serial "
                                                       "server is powered; then poplar-edge devices test NAME"))
        elif d.transport.kind == "serial":
            p = Path(d.transport.device or "")
            ok = p.exists() and os.access(p, os.R_OK | os.W_OK)
            checks.append(Check(f"device {d.id}", ok, f"serial port {p}: "
                                + ("present" if ok else "missing" if not p.exists() else "no permission"),
                                "" if ok else "check the USB-RS485 adapter (ls /dev/ttyUSB*) and that the user "
                                              "is in the dialout group"))
    if not devices:
        checks.append(Check("devices", True, "no devices registered yet (poplar-edge devices add ...)"))
    return checks


def doctor(config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """Check the config, state folder, clock, brokers, profiles and devices; say what to fix."""
    checks = run_checks(config)
    failed = [c for c in checks if not c.ok]
    if json_out:
        print_json({"ok": not failed, "checks": [c.__dict__ for c in checks]})
    else:
        for c in checks:
            typer.echo(f"{'ok  ' if c.ok else 'FAIL'}  {c.name}: {c.detail}")
            if not c.ok and c.hint:
                typer.echo(f"      -> {c.hint}")
        typer.echo("all checks passed" if not failed else f"{len(failed)} check(s) failed")
    raise typer.Exit(1 if failed else 0)
