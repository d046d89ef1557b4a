"""`poplar-edge devices discover`: MQTT devices that talk to the box broker but are not registered.

The agent's MQTT source records them (edge/mqtt/source.py) instead of forwarding their data, so
property staff can see what is out there and register it with `devices add --mqtt-id`.
"""

from __future__ import annotations

from datetime import datetime, timezone

import typer

from common.cli import print_json, table
from edge.cli.options import ConfigOpt, JsonOpt, load_config
from edge.registry import Registry


def register(app: typer.Typer) -> None:
    from edge.cli.devices import app as devices_app
    devices_app.command("discover")(discover)


def _when(ns: int | None) -> str:
    if not ns:
        return ""
    return datetime.fromtimestamp(ns / 1e9, timezone.utc).astimezone().isoformat(timespec="seconds")


def discover(config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """Unregistered MQTT devices seen on the box broker (their data is not forwarded until registered)."""
    cfg = load_config(config)
    reg = Registry(cfg.registry_db)
    try:
        # A device registered under another profile than the one it speaks stays listed: its
        # messages are not forwarded either.
        registered = {(d.profile, d.transport.mqtt_id) for d in reg.all() if d.transport.kind == "mqtt"}
        found = [d for d in reg.discovered() if (d.get("profile"), d.get("id")) not in registered]
    finally:
        reg.close()
    rows = [{"id": d["id"], "topic": d.get("topic"), "profile": d.get("profile"),
             "first_seen_ns": d.get("first_seen_ns"), "last_seen_ns": d.get("last_seen_ns"),
             "first_seen": _when(d.get("first_seen_ns")), "last_seen": _when(d.get("last_seen_ns")),
             "count": d.get("count", 0)} for d in found]
    if json_out:
        print_json(rows)
        return
    if not rows:
        typer.echo("no unregistered MQTT devices seen (the agent records them while it runs)")
        return
    typer.echo(table([[r["id"], r["topic"], r["profile"] or "?", r["first_seen"], r["last_seen"], r["count"]]
                      for r in rows], ["mqtt id", "last topic", "guessed profile", "first seen", "last seen",
                                       "messages"]))
    r = rows[0]
    typer.echo(f"\nregister one with: poplar-edge devices add NAME --profile {r['profile'] or 'PROFILE'} "
               f"--mqtt-id {r['id']} [--building B] [--floor F]")
