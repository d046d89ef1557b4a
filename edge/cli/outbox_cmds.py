"""`poplar-edge outbox stats` and `outbox export` (installers, central IT).

Both read the outbox file directly (read-only; SQLite WAL lets the agent keep running).
"""

from __future__ import annotations

import sqlite3
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from common.cli import fail, print_json, table
from edge.cli.options import ConfigOpt, JsonOpt, load_config
from edge.outbox import export_line_protocol, read_stats_offline

outbox_app = typer.Typer(no_args_is_help=True, add_completion=False)


def register(app: typer.Typer) -> None:
    app.add_typer(outbox_app, name="outbox", help="Look into the outbox; export a backlog by hand.")


def _age(ns: int | None) -> str:
    if not ns:
        return "-"
    s = max(0.0, (time.time_ns() - ns) / 1e9)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{s / size:.1f} {unit}"
    return f"{s:.0f} s"


@outbox_app.command("stats")
def stats(config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """Rows, bytes, oldest point, rows by class and drops by class."""
    cfg = load_config(config)
    try:
        doc = read_stats_offline(cfg.outbox_db)
    except sqlite3.DatabaseError as exc:
        fail(f"cannot read the outbox {cfg.outbox_db}: {exc}. If it is damaged, the agent moves it aside "
             "and starts a new one at its next start.", 1)
    doc["path"] = str(cfg.outbox_db)
    doc["max_bytes"] = cfg.outbox.max_bytes
    doc["oldest_age_s"] = round((time.time_ns() - doc["oldest_ns"]) / 1e9, 3) if doc.get("oldest_ns") else None
    if json_out:
        print_json(doc)
        return
    typer.echo(f"outbox {doc['path']}")
    typer.echo(f"{doc['rows']} points, {doc['bytes'] / 1e6:.1f} MB of a {cfg.outbox.max_bytes / 1e6:.0f} MB cap; "
               f"oldest {_age(doc.get('oldest_ns'))} old")
    classes = sorted(set(doc.get("by_class", {})) | set(doc.get("dropped", {})))
    rows = [[c, doc.get("by_class", {}).get(c, 0), doc.get("dropped", {}).get(c, 0)] for c in classes]
    if rows:
        typer.echo(table(rows, ["class", "waiting", "dropped"]))


@outbox_app.command("export")
def export(
    file: Annotated[str, typer.Argument(help="where to write line protocol; '-' for stdout")],
    config: ConfigOpt = None,
) -> None:
    """Write every waiting point as InfluxDB line protocol (for carrying a backlog by hand).

    Nothing is deleted: the points still go out when the uplink returns, and a replay
    overwrites the same points in InfluxDB. Load the file with:
    curl -XPOST 'http://INFLUX:8086/write?db=DB&precision=ns' --data-binary @FILE
    """
    cfg = load_config(config)
    if not cfg.outbox_db.exists():
        fail(f"no outbox at {cfg.outbox_db}: nothing to export (is --config the box's config?)", 1)
    try:
        if file == "-":
            n, skipped = export_line_protocol(cfg.outbox_db, sys.stdout)
        else:
            path = Path(file)
            tmp = path.with_name(path.name + ".partial")
            with open(tmp, "w", encoding="utf-8") as out:
                n, skipped = export_line_protocol(cfg.outbox_db, out)
            tmp.replace(path)
    except OSError as exc:
        fail(f"cannot write {file}: {exc.strerror or exc}", 1)
    except sqlite3.DatabaseError as exc:
        fail(f"cannot read the outbox {cfg.outbox_db}: {exc}", 1)
    msg = f"exported {n} points as line protocol (precision ns) to {file}"
    if skipped:
        msg += f"; {skipped} points could not be written as line protocol and were left out"
    typer.echo(msg, err=file == "-")
