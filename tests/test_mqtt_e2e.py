"""End to end on real servers: simulated face gates -> box Mosquitto -> edge agent (killed with
SIGKILL mid-stream, restarted) -> central Mosquitto -> collector -> InfluxDB. Every event the
broker accepted lands in InfluxDB exactly once; unregistered gates show up in `devices discover`.
"""

from __future__ import annotations

import json
import re
import signal
import time

import pytest
import yaml

from tests.conftest import run_cli, wait_for

pytestmark = pytest.mark.integration

GATES = 12


def _status(edge_cfg: str) -> dict:
    return json.loads(run_cli("poplar-edge", "status", "--json", "--config", edge_cfg).stdout)


def _committed(edge_cfg: str) -> int:
    from pathlib import Path
    st = yaml.safe_load(Path(edge_cfg).read_text())["state_dir"]
    try:
        doc = json.loads((Path(st) / "status.json").read_text())
    except (OSError, ValueError):
        return 0
    return doc.get("metrics", {}).get("counters", {}).get("mqtt_messages_committed", 0)


@pytest.mark.slow
def test_gate_events_survive_sigkill_and_reach_influxdb_once(tmp_path, mosquitto, central_broker, influx,
                                                             influx_db, spawn):
    edge_cfg, coll_cfg = str(tmp_path / "edge.yaml"), str(tmp_path / "collector.yaml")
    run_cli("poplar-edge", "init", "--config", edge_cfg, "--site", "sunny-garden", "--gateway", "gw-01",
            "--state-dir", str(tmp_path / "edge-state"), "--local-broker", mosquitto.url,
            "--uplink", central_broker.url)
    devices = [{"id": f"{n}号闸机", "profile": "hikvision-isapi",
                "transport": {"kind": "mqtt", "mqtt_id": f"gate-{n}"}, "tags": {"building": "北门"}}
               for n in range(1, GATES + 1)]
    (tmp_path / "gates.yaml").write_text(yaml.safe_dump({"devices": devices}, allow_unicode=True), encoding="utf-8")
    run_cli("poplar-edge", "devices", "import", str(tmp_path / "gates.yaml"), "--config", edge_cfg)
    run_cli("poplar-collector", "init", "--config", coll_cfg, "--broker", central_broker.url,
            "--influx-url", influx.url, "--database", influx_db)
    run_cli("poplar-collector", "gateways", "add", "gw-01", "--site", "sunny-garden", "--config", coll_cfg)
    collector = spawn("poplar-collector", "run", "--config", coll_cfg)
    edge = spawn("poplar-edge", "run", "--config", edge_cfg, name="edge-1")
    wait_for(lambda: "box broker" in edge.output() and "connected" in edge.output(), timeout=20,
             what="edge connected to the box broker")

    # --ms-time: device clocks with milliseconds, so the agent's same-millisecond de-collision
    # never has to move a point (see docs/profiles-mqtt.md, "Replays").
    sim = spawn("poplar-sim", "facegate", "--broker", mosquitto.url, "--dialect", "hikvision-isapi",
                "--gates", str(GATES), "--rate", "800", "--count", "4000", "--traffic", "flat",
                "--ms-time", "--heartbeat-s", "3600", "--seed", "7", name="sim")
    wait_for(lambda: _committed(edge_cfg) >= 300, timeout=30, interval=0.05, what="events flowing")
    edge.proc.send_signal(signal.SIGKILL)  # mid-stream: no chance to flush or acknowledge
    edge.proc.wait(10)
    assert sim.proc.wait(60) == 0, sim.output()
    sent = int(re.search(r"sent (\d+) events", sim.output()).group(1))
    assert sent == 4000 and "0 not acknowledged" in sim.output()

    edge2 = spawn("poplar-edge", "run", "--config", edge_cfg, name="edge-2")

    def total() -> int:
        return influx.count("gate_event", influx_db) + influx.count("gate_alarm", influx_db)

    wait_for(lambda: total() >= sent, timeout=60, what=f"{sent} gate points in InfluxDB")
    time.sleep(2)  # anything delivered twice would show up now
    assert total() == sent, "an event was lost or counted twice"

    row = influx.rows("SELECT * FROM gate_event WHERE method = 'face' LIMIT 1", influx_db)[0]
    assert row["site"] == "sunny-garden" and row["gateway"] == "gw-01" and row["building"] == "北门"
    assert re.fullmatch(r"\d+号闸机", row["device"])
    assert re.fullmatch(r"[0-9a-f]{16}", row["person"] or "")
    assert row["result"] == "granted" and row["direction"] in ("in", "out")
    keys = {k for r in influx.rows("SELECT * FROM gate_event LIMIT 200", influx_db) for k, v in r.items()
            if v is not None}
    assert not keys & {"name", "employeeNoString", "cardNo", "pictureURL"}
    doc = wait_for(lambda: (d := _status(edge_cfg))["agent_running"] and d, timeout=10, what="status")
    assert all(d["online"] is True for d in doc["devices"]), doc["devices"]

    # an unregistered gate is discovered, not forwarded; registering it removes it from the list
    other = spawn("poplar-sim", "facegate", "--broker", mosquitto.url, "--dialect", "generic-facegate",
                  "--gates", "2", "--id-prefix", "east-", "--rate", "50", "--count", "20", "--traffic", "flat",
                  name="sim-east")
    assert other.proc.wait(30) == 0, other.output()
    found = wait_for(lambda: json.loads(run_cli("poplar-edge", "devices", "discover", "--json",
                                                "--config", edge_cfg).stdout), timeout=10, what="discovered")
    by_id = {d["id"]: d for d in found}
    assert set(by_id) == {"east-1", "east-2"}, found
    assert by_id["east-1"]["profile"] == "generic-facegate" and by_id["east-1"]["count"] >= 1
    assert by_id["east-1"]["topic"].startswith("facegate/east-1/")
    text = run_cli("poplar-edge", "devices", "discover", "--config", edge_cfg).stdout
    assert "east-1" in text and "--mqtt-id" in text
    run_cli("poplar-edge", "devices", "add", "东门", "--profile", "generic-facegate", "--mqtt-id", "east-1",
            "--config", edge_cfg)
    left = json.loads(run_cli("poplar-edge", "devices", "discover", "--json", "--config", edge_cfg).stdout)
    assert [d["id"] for d in left] == ["east-2"]
    assert influx.count("gate_event", influx_db, where="WHERE device = 'east-1'") == 0

    assert edge2.stop() == 0, edge2.output()
    assert collector.stop() == 0, collector.output()
    log = edge.output() + edge2.output()
    assert "edge/mqtt/" not in log, log[-3000:]  # no traceback through the MQTT source
