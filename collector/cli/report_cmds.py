"""`poplar-collector report energy|traffic|elevators|offline`: the common InfluxQL questions."""


import csv
import datetime as dt
import io
from enum import Enum
from typing import Annotated, Optional

import typer

from common.cli import fail, print_json, table
from collector import influxql as iq


class Kind(str, Enum):
    energy = "energy"
    traffic = "traffic"
    elevators = "elevators"
    offline = "offline"


class Format(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


DEFAULT_SINCE = {"energy": "7d", "traffic": "24h", "elevators": "7d", "offline": "24h"}


def _t(ns: int | None) -> str:
    if ns is None:
        return ""
    return dt.datetime.fromtimestamp(ns / 1e9, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def build(q: iq.InfluxQL, kind: str, site: str, since: str, stale_s: float, now_ns: int) -> tuple[list[str], list[dict]]:
    """(columns, rows) of one report."""
    if kind == "energy":
        rows = [{"day": _t(r["time"])[:10], "building": r.get("building") or "(none)",
                 "kwh": round(r["kwh"], 3)} for r in q.rows(iq.energy_query(site, since), epoch="ns")
                if r.get("kwh") is not None]
        return ["day", "building", "kwh"], rows
    if kind == "traffic":
        merged: dict[tuple, dict] = {}
        for col, query in iq.traffic_queries(site, since).items():
            for r in q.rows(query, epoch="ns"):
                key = (r["time"], r["device"])
                row = merged.setdefault(key, {"hour": _t(r["time"]), "gate": r["device"], "in": 0, "out": 0,
                                              "denied": 0})
                row[col] = r["n"]
        return ["hour", "gate", "in", "out", "denied"], [merged[k] for k in sorted(merged)]
    if kind == "elevators":
        rows = [{"elevator": r["device"], "fault": r.get("fault") or "", "faults": r["faults"],
                 "last": _t(r["time"]), "last_code": r.get("last_code") or ""}
                for r in q.rows(iq.elevator_query(site, since), epoch="ns")]
        rows.sort(key=lambda r: (-r["faults"], r["elevator"], r["fault"]))
        return ["elevator", "fault", "faults", "last", "last_code"], rows
    # offline: the latest health report says offline, or the last report is too old
    rows = []
    for r in q.rows(iq.offline_query(site, since), epoch="ns"):
        age = (now_ns - r["time"]) / 1e9
        if r.get("online") is False or age > stale_s:
            rows.append({"device": r["device"], "online": r.get("online"), "last_report": _t(r["time"]),
                         "age_s": round(age), "why": "reports offline" if r.get("online") is False
                         else f"no report for {round(age)} s"})
    rows.sort(key=lambda r: r["device"])
    return ["device", "online", "last_report", "age_s", "why"], rows


def register(app: typer.Typer) -> None:
    from collector.cli import ConfigOpt, load_config

    @app.command("report")
    def report(
        kind: Annotated[Kind, typer.Argument(help="energy | traffic | elevators | offline")],
        site: Annotated[str, typer.Option(help="the site (compound) to report on")] = ...,
        since: Annotated[Optional[str], typer.Option(help="how far back, e.g. 24h, 7d (default per report)")] = None,
        fmt: Annotated[Format, typer.Option("--format", help="table, csv or json")] = Format.table,
        stale: Annotated[int, typer.Option(help="offline: a device silent this many seconds counts as offline")] = 600,
        config: ConfigOpt = None,
    ) -> None:
        """Energy per building per day, gate traffic per hour, elevator faults, offline devices."""
        import time

        cfg = load_config(config)
        since = since or DEFAULT_SINCE[kind.value]
        try:
            iq.check_since(since)
        except ValueError as exc:
            fail(f"--since {exc}", 2)
        q = iq.InfluxQL(cfg)
        try:
            cols, rows = build(q, kind.value, site, since, stale, time.time_ns())
        except iq.InfluxError as exc:
            fail(f"InfluxDB: {exc}")
        finally:
            q.close()
        if fmt is Format.json:
            print_json(rows)
        elif fmt is Format.csv:
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
            typer.echo(buf.getvalue(), nl=False)
        elif not rows:
            typer.echo(f"no {kind.value} data for site {site} in the last {since}")
        else:
            typer.echo(table([[r[c] for c in cols] for r in rows], cols))
