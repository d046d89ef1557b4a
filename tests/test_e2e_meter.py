"""End to end, on real servers: a simulated meter's readings land in InfluxDB with the tags
site, gateway, device and the location tags given at registration."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli, wait_for
from tests.servers import free_port

pytestmark = pytest.mark.integration

DEVICE = "5幢1单元电表"


def test_meter_reading_reaches_influxdb(tmp_path, mosquitto, central_broker, influx, influx_db, spawn):
    port = free_port()
    sim = spawn("poplar-sim", "meter", "--profile", "eastron-sdm120", "--port", str(port), "--units", "1-3")
    edge_cfg = str(tmp_path / "edge.yaml")
    coll_cfg = str(tmp_path / "collector.yaml")
    run_cli("poplar-edge", "init", "--config", edge_cfg, "--site", "sunny-garden", "--gateway", "gw-01",
            "--state-dir", str(tmp_path / "edge-state"), "--local-broker", mosquitto.url,
            "--uplink", central_broker.url)
    run_cli("poplar-edge", "devices", "add", DEVICE, "--profile", "eastron-sdm120", "--tcp", f"127.0.0.1:{port}",
            "--unit", "1", "--building", "5幢", "--unit-no", "1单元", "--interval", "1", "--config", edge_cfg)
    run_cli("poplar-edge", "devices", "add", "meter-2", "--profile", "eastron-sdm120", "--tcp", f"127.0.0.1:{port}",
            "--unit", "2", "--interval", "1", "--config", edge_cfg)
    listed = json.loads(run_cli("poplar-edge", "devices", "list", "--json", "--config", edge_cfg).stdout)
    assert {d["id"] for d in listed} == {DEVICE, "meter-2"}

    run_cli("poplar-collector", "init", "--config", coll_cfg, "--broker", central_broker.url,
            "--influx-url", influx.url, "--database", influx_db)
    run_cli("poplar-collector", "gateways", "add", "gw-01", "--site", "sunny-garden", "--config", coll_cfg)

    collector = spawn("poplar-collector", "run", "--config", coll_cfg)
    edge = spawn("poplar-edge", "run", "--config", edge_cfg)

    rows = wait_for(lambda: influx.rows(f"SELECT * FROM meter WHERE device = '{DEVICE}'", influx_db),
                    timeout=40, what="meter rows in InfluxDB")
    row = rows[-1]
    assert row["site"] == "sunny-garden" and row["gateway"] == "gw-01"
    assert row["building"] == "5幢" and row["unit_no"] == "1单元"
    assert 200 < row["voltage"] < 240
    assert 49 < row["frequency"] < 51
    assert row["energy_import"] > 0
    # timestamps are aligned to the 1 s interval
    assert all(r["time"] % 1_000_000_000 == 0 for r in rows)
    wait_for(lambda: influx.rows("SELECT * FROM meter WHERE device = 'meter-2'", influx_db), timeout=20,
             what="second meter")
    health = influx.rows(f"SELECT * FROM device_health WHERE device = '{DEVICE}'", influx_db)
    assert health and health[-1]["online"] is True

    def status():
        doc = json.loads(run_cli("poplar-edge", "status", "--json", "--config", edge_cfg).stdout)
        return doc if doc["agent_running"] and doc["uplink"]["connected"] else None

    doc = wait_for(status, timeout=10, what="status: agent running, uplink connected")
    assert {d["id"]: d["online"] for d in doc["devices"]} == {DEVICE: True, "meter-2": True}
    assert doc["metrics"]["counters"]["points_accepted"] > 0  # the running agent's counters

    assert edge.stop() == 0, edge.output()
    assert collector.stop() == 0, collector.output()
    sim.stop()
