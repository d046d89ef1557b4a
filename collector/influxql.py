"""The InfluxQL the collector runs for central IT: database set-up for 1.x (retention policies,
continuous queries for hourly roll-ups) and the canned reports. docs/queries.md explains each.

A synchronous HTTP client (httpx) is enough here: these are one-shot commands, not the hot path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import httpx

from collector.config import CollectorConfig, Influx1Admin

#: Tags kept in the roll-ups: location, never event details or person data.
ROLLUP_TAGS = '"site", "gateway", "device", "building", "unit_no", "floor"'
SINCE = re.compile(r"^(\d{1,6})([smhdw])$")


class InfluxError(RuntimeError):
    pass


def ident(name: str) -> str:
    """A double-quoted InfluxQL identifier."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def literal(text: str) -> str:
    """A single-quoted InfluxQL string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def check_since(since: str) -> str:
    if not SINCE.match(since):
        raise ValueError(f"{since!r}: use a number and a unit, e.g. 30m, 24h, 7d, 2w")
    return since


@dataclass(frozen=True)
class ContinuousQuery:
    name: str
    select: str  # the SELECT ... INTO ... FROM ... [WHERE ...] GROUP BY time(1h), ... body

    def create(self, db: str) -> str:
        return f"CREATE CONTINUOUS QUERY {ident(self.name)} ON {ident(db)} BEGIN {self.select} END"

    def backfill(self, since: str) -> str:
        """The same SELECT ... INTO over past data (CQs only see the interval that just ended)."""
        body = self.select
        where = f"time > now() - {check_since(since)}"
        if " WHERE " in body:
            body = body.replace(" WHERE ", f" WHERE {where} AND ", 1)
        else:
            body = body.replace(" GROUP BY ", f" WHERE {where} GROUP BY ", 1)
        return body


def continuous_queries(db: str, admin: Influx1Admin) -> list[ContinuousQuery]:
    raw = f"{ident(db)}.{ident(admin.raw_rp)}"
    roll = f"{ident(db)}.{ident(admin.rollup_rp)}"
    gb = f"GROUP BY time(1h), {ROLLUP_TAGS}"
    return [
        # energy_import is a cumulative kWh counter: the hour's consumption is its spread.
        ContinuousQuery("poplar_meter_1h", (
            'SELECT spread("energy_import") AS "energy_kwh", max("energy_import") AS "energy_import", '
            'mean("active_power") AS "active_power_mean", max("active_power") AS "active_power_max" '
            f'INTO {roll}."meter_1h" FROM {raw}."meter" {gb}')),
        ContinuousQuery("poplar_gate_in_1h", (
            f'SELECT count("result") AS "passes_in" INTO {roll}."gate_passes_1h" FROM {raw}."gate_event" '
            f"WHERE \"result\" = 'granted' AND \"direction\" = 'in' {gb}")),
        ContinuousQuery("poplar_gate_out_1h", (
            f'SELECT count("result") AS "passes_out" INTO {roll}."gate_passes_1h" FROM {raw}."gate_event" '
            f"WHERE \"result\" = 'granted' AND \"direction\" = 'out' {gb}")),
        ContinuousQuery("poplar_gate_denied_1h", (
            f'SELECT count("result") AS "denied" INTO {roll}."gate_passes_1h" FROM {raw}."gate_event" '
            f"WHERE \"result\" = 'denied' {gb}")),
        ContinuousQuery("poplar_elevator_faults_1h", (
            f'SELECT count("state") AS "faults" INTO {roll}."elevator_faults_1h" FROM {raw}."elevator_event" '
            f"WHERE \"state\" = 'active' {gb}, \"fault\"")),
    ]


class InfluxQL:
    """/query on InfluxDB 1.x (or the 1.x compatibility API of 2.x/3.x, with a token)."""

    def __init__(self, cfg: CollectorConfig) -> None:
        s = cfg.sink
        self.url = s.url
        headers, auth = {}, None
        if s.type == "influxdb1":
            self.db = s.database
            if s.username:
                auth = (s.username, s.password or "")
        else:
            self.db = s.bucket
            headers["Authorization"] = f"Token {s.token}"
        self._http = httpx.Client(base_url=s.url, timeout=s.timeout_s * 3, headers=headers, auth=auth)

    def close(self) -> None:
        self._http.close()

    def run(self, q: str, db: bool = True, epoch: str | None = None) -> list[dict]:
        """One or more statements; the results, or InfluxError with InfluxDB's message."""
        params = {"q": q}
        if db:
            params["db"] = self.db
        if epoch:
            params["epoch"] = epoch
        try:
            r = self._http.post("/query", data=params)
        except httpx.HTTPError as exc:
            raise InfluxError(f"InfluxDB at {self.url} unreachable: {exc}") from None
        if r.status_code in (401, 403):
            raise InfluxError(f"InfluxDB at {self.url} refused the credentials ({r.status_code}); "
                              "check the sink's username/password or token")
        try:
            doc = r.json()
        except ValueError:
            raise InfluxError(f"InfluxDB answered {r.status_code}: {r.text[:300]}") from None
        if "error" in doc:
            raise InfluxError(doc["error"])
        results = doc.get("results", [])
        for res in results:
            if "error" in res:
                raise InfluxError(res["error"])
        return results

    def rows(self, q: str, epoch: str | None = None) -> list[dict]:
        """Rows as dicts (column -> value) with the GROUP BY tags merged in."""
        out = []
        for res in self.run(q, epoch=epoch):
            for s in res.get("series", []):
                for v in s.get("values", []):
                    row = dict(s.get("tags", {}))
                    row.update(zip(s["columns"], v))
                    out.append(row)
        return out


# -- canned reports (docs/queries.md) ---------------------------------------------------------

def energy_query(site: str, since: str) -> str:
    """kWh per building per day: each meter's counter spread per day, summed per building."""
    return ("SELECT sum(\"kwh\") AS \"kwh\" FROM (SELECT spread(\"energy_import\") AS \"kwh\" FROM \"meter\" "
            f"WHERE \"site\" = {literal(site)} AND time > now() - {check_since(since)} "
            "GROUP BY time(1d), \"device\", \"building\") GROUP BY time(1d), \"building\"")


def traffic_queries(site: str, since: str) -> dict[str, str]:
    """Granted passes in and out, and denials, per gate per hour."""
    base = f"FROM \"gate_event\" WHERE \"site\" = {literal(site)} AND time > now() - {check_since(since)}"
    gb = "GROUP BY time(1h), \"device\" fill(none)"
    return {
        "in": f"SELECT count(\"result\") AS \"n\" {base} AND \"result\" = 'granted' AND \"direction\" = 'in' {gb}",
        "out": f"SELECT count(\"result\") AS \"n\" {base} AND \"result\" = 'granted' AND \"direction\" = 'out' {gb}",
        "denied": f"SELECT count(\"result\") AS \"n\" {base} AND \"result\" = 'denied' {gb}",
    }


def elevator_query(site: str, since: str) -> str:
    return (f"SELECT count(\"state\") AS \"faults\", last(\"code\") AS \"last_code\" FROM \"elevator_event\" "
            f"WHERE \"site\" = {literal(site)} AND \"state\" = 'active' AND time > now() - {check_since(since)} "
            "GROUP BY \"device\", \"fault\"")


def offline_query(site: str, since: str) -> str:
    """Each device's latest health point in the window (its time is the last report)."""
    return (f"SELECT last(\"online\") AS \"online\" FROM \"device_health\" "
            f"WHERE \"site\" = {literal(site)} AND time > now() - {check_since(since)} GROUP BY \"device\"")


def backlog_query(since: str = "15m") -> str:
    return ("SELECT last(\"outbox_rows\") AS \"outbox_rows\", last(\"oldest_point_age_s\") AS \"oldest_point_age_s\" "
            f"FROM \"gateway_health\" WHERE time > now() - {check_since(since)} GROUP BY \"site\", \"gateway\"")
