"""`poplar-collector init-db` and `report` against a real InfluxDB 1.6.7, with data we write."""

from __future__ import annotations

import csv
import io
import json
import time
import urllib.request

import pytest

from common.lineprotocol import to_lines
from common.points import Point
from tests.conftest import run_cli

pytestmark = pytest.mark.integration

H = 3600 * 10**9


def _config(tmp_path, influx, db: str) -> str:
    cfg = str(tmp_path / "collector.yaml")
    run_cli("poplar-collector", "init", "--config", cfg, "--broker", "mqtt://127.0.0.1:1", "--influx-url",
            influx.url, "--database", db)
    return cfg


def _write(influx, db: str, points: list[Point]) -> None:
    req = urllib.request.Request(f"{influx.url}/write?db={db}&precision=ns", data=to_lines(points).encode(),
                                 method="POST")
    with urllib.request.urlopen(req) as r:
        assert r.status == 204


def _tags(device: str, **extra) -> dict:
    return {"site": "sunny", "gateway": "gw1", "device": device, **extra}


def test_init_db_is_idempotent_and_rollups_work(tmp_path, influx):
    db = f"initdb_{time.time_ns() % 10**9}"
    cfg = _config(tmp_path, influx, db)
    first = json.loads(run_cli("poplar-collector", "init-db", "--config", cfg, "--json").stdout)
    assert "created database " + db in first["changed"]
    assert len([c for c in first["changed"] if c.startswith("created continuous query")]) == 5
    rps = influx.rows(f'SHOW RETENTION POLICIES ON "{db}"', db)
    by = {r["name"]: r for r in rps}
    assert by["raw"]["duration"] == "2160h0m0s" and by["raw"]["default"] is True
    assert by["rollup"]["duration"] == "0s"
    cqs_before = influx.query("SHOW CONTINUOUS QUERIES")
    again = json.loads(run_cli("poplar-collector", "init-db", "--config", cfg, "--json").stdout)
    assert again["changed"] == []
    assert influx.query("SHOW CONTINUOUS QUERIES") == cqs_before
    assert influx.rows(f'SHOW RETENTION POLICIES ON "{db}"', db) == rps
    # a new raw retention is applied, and then stable again
    changed = json.loads(run_cli("poplar-collector", "init-db", "--config", cfg, "--raw-days", "30", "--json").stdout)
    assert changed["changed"] == ["changed retention policy raw to 30d (default)"]
    assert json.loads(run_cli("poplar-collector", "init-db", "--config", cfg, "--raw-days", "30",
                              "--json").stdout)["changed"] == []

    now = time.time_ns()
    hour0 = now - now % H - 3 * H
    _write(influx, db, [
        Point("meter", _tags("m1", building="5幢"), {"energy_import": 100.0, "active_power": 1000.0}, hour0 + 60 * 10**9),
        Point("meter", _tags("m1", building="5幢"), {"energy_import": 104.5, "active_power": 3000.0}, hour0 + 3000 * 10**9),
        Point("gate_event", _tags("g1", event="access"), {"result": "granted", "direction": "in"}, hour0 + 10**9),
        Point("gate_event", _tags("g1", event="access"), {"result": "granted", "direction": "in"}, hour0 + 2 * 10**9),
        Point("gate_event", _tags("g1", event="access"), {"result": "granted", "direction": "out"}, hour0 + 3 * 10**9),
        Point("gate_event", _tags("g1", event="access"), {"result": "denied", "direction": "in"}, hour0 + 4 * 10**9),
        Point("elevator_event", _tags("e1", fault="entrapment"), {"state": "active", "code": "09"}, hour0 + 10**9),
    ])
    run_cli("poplar-collector", "init-db", "--config", cfg, "--backfill", "1d")
    m = influx.rows('SELECT * FROM "rollup"."meter_1h"', db)
    assert len(m) == 1 and m[0]["energy_kwh"] == pytest.approx(4.5) and m[0]["active_power_mean"] == 2000.0
    assert m[0]["device"] == "m1" and m[0]["building"] == "5幢"
    g = influx.rows('SELECT * FROM "rollup"."gate_passes_1h"', db)
    assert len(g) == 1 and (g[0]["passes_in"], g[0]["passes_out"], g[0]["denied"]) == (2, 1, 1)
    e = influx.rows('SELECT * FROM "rollup"."elevator_faults_1h"', db)
    assert len(e) == 1 and e[0]["faults"] == 1 and e[0]["fault"] == "entrapment"


def test_init_db_refuses_influxdb2_sink_clearly(tmp_path):
    cfg = str(tmp_path / "c.yaml")
    run_cli("poplar-collector", "init", "--config", cfg, "--broker", "mqtt://127.0.0.1:1", "--sink", "influxdb2",
            "--influx-url", "http://127.0.0.1:1", "--org", "o", "--bucket", "b", "--token", "t")
    r = run_cli("poplar-collector", "init-db", "--config", cfg, check=False)
    assert r.returncode == 2 and "InfluxDB 1.x" in r.stderr and "bucket" in r.stderr


def test_reports(tmp_path, influx, influx_db):
    cfg = _config(tmp_path, influx, influx_db)
    now = time.time_ns()
    day = 86400 * 10**9
    base = now - now % day
    if now - base < 2 * H:
        base -= day
    pts = [
        # two meters in 5幢, one in 6幢: 5幢 uses 3 + 2 kWh, 6幢 7 kWh on that day
        Point("meter", _tags("m1", building="5幢"), {"energy_import": 10.0}, base + 600 * 10**9),
        Point("meter", _tags("m1", building="5幢"), {"energy_import": 13.0}, base + 4200 * 10**9),
        Point("meter", _tags("m2", building="5幢"), {"energy_import": 50.0}, base + 600 * 10**9),
        Point("meter", _tags("m2", building="5幢"), {"energy_import": 52.0}, base + 4200 * 10**9),
        Point("meter", _tags("m3", building="6幢"), {"energy_import": 1.0}, base + 600 * 10**9),
        Point("meter", _tags("m3", building="6幢"), {"energy_import": 8.0}, base + 4200 * 10**9),
        Point("meter", _tags("other", building="5幢", site="elsewhere"), {"energy_import": 0.0}, base + 600 * 10**9),
        Point("meter", _tags("other", building="5幢", site="elsewhere"), {"energy_import": 99.0}, base + 4200 * 10**9),
    ]
    for i, (d, r) in enumerate([("in", "granted")] * 3 + [("out", "granted")] * 2 + [("in", "denied")]):
        pts.append(Point("gate_event", _tags("东门闸机", event="access"), {"result": r, "direction": d},
                         base + 60 * 10**9 + i))
    pts += [Point("elevator_event", _tags("e1", fault="entrapment"), {"state": "active", "code": "09"}, now - H),
            Point("elevator_event", _tags("e1", fault="entrapment"), {"state": "active", "code": "09"}, now - 2 * H),
            Point("elevator_event", _tags("e1", fault="entrapment"), {"state": "cleared", "code": "09"}, now - H + 1),
            Point("elevator_event", _tags("e2", fault="overspeed"), {"state": "active", "code": "03"}, now - H)]
    pts += [Point("device_health", _tags("d-up"), {"online": True}, now - 10 * 10**9),
            Point("device_health", _tags("d-down"), {"online": True}, now - 100 * 10**9),
            Point("device_health", _tags("d-down"), {"online": False}, now - 10 * 10**9),
            Point("device_health", _tags("d-silent"), {"online": True}, now - 2 * H)]
    _write(influx, influx_db, pts)

    def report(*args):
        return json.loads(run_cli("poplar-collector", "report", *args, "--site", "sunny", "--format", "json",
                                  "--config", cfg).stdout)

    energy = report("energy", "--since", "3d")
    assert {(r["building"], r["kwh"]) for r in energy} == {("5幢", 5.0), ("6幢", 7.0)}
    traffic = report("traffic", "--since", "2d")
    assert [(r["gate"], r["in"], r["out"], r["denied"]) for r in traffic] == [("东门闸机", 3, 2, 1)]
    elev = report("elevators")
    assert [(r["elevator"], r["fault"], r["faults"]) for r in elev] == [("e1", "entrapment", 2), ("e2", "overspeed", 1)]
    off = report("offline", "--stale", "3600")
    assert {r["device"]: r["why"].split(" ")[0] for r in off} == {"d-down": "reports", "d-silent": "no"}

    out = run_cli("poplar-collector", "report", "traffic", "--site", "sunny", "--since", "2d", "--format", "csv",
                  "--config", cfg).stdout
    assert list(csv.DictReader(io.StringIO(out)))[0]["in"] == "3"
    table = run_cli("poplar-collector", "report", "energy", "--site", "sunny", "--since", "3d", "--config", cfg).stdout
    assert table.splitlines()[-1].split()[1:] == ["6幢", "7"]
    empty = run_cli("poplar-collector", "report", "energy", "--site", "nowhere", "--config", cfg).stdout
    assert "no energy data for site nowhere" in empty
    bad = run_cli("poplar-collector", "report", "energy", "--site", "sunny", "--since", "yesterday",
                  "--config", cfg, check=False)
    assert bad.returncode == 2 and "30m, 24h, 7d" in bad.stderr
