"""Outages on real servers (issue 5, item 7). Each test runs a whole site (meter simulator, edge
agent, central Mosquitto, collector, InfluxDB 1.x as real processes), starts with a backlog of
points put straight into the edge's outbox, breaks one thing, repairs it, and counts: what the
edge accepted plus the backlog must all be in InfluxDB, short by exactly the counted drops.

Outages last 6-10 s rather than the issue's minute: what matters to the edge is that the outage
outlasts its ack timeout (3 s here) and MQTT keepalive handling, so several resends and a
reconnect happen; a longer outage only makes the backlog larger, which bench/outbox_drain.py
covers at a million points. Keeping each test near 20 s keeps the suite under its time budget.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import wait_for
from tests.test_outage_harness import Site

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BACKLOG = 20_000


@pytest.fixture
def site(tmp_path, spawn, mosquitto, central_broker, influx, influx_db):
    s = Site(tmp_path, spawn, mosquitto, central_broker, influx, influx_db)
    yield s
    s.stop_all()


def _running(site: Site, seconds: float) -> None:
    """Let the site run, failing early if the edge died."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        assert site.edge is None or site.edge.proc.poll() is None, site.edge.output()[-3000:]
        time.sleep(0.5)


def test_central_broker_stopped_and_restarted(site, central_broker):
    site.prefill(BACKLOG)
    site.start_collector()
    site.start_edge()
    wait_for(lambda: site.influx.count("meter", site.db, "voltage") >= 3, timeout=20, what="first meter rows")
    central_broker.stop()
    _running(site, 60)  # a full minute, as the issue asks: meters keep polling into the outbox
    st = site.status()
    assert st["uplink"]["connected"] is False
    central_broker.start()  # persistence on: the collector's session and queued batches survive
    site.wait_drained()
    _running(site, 2)
    print(site.finish_and_count())


def test_collector_stopped_and_restarted(site):
    site.prefill(BACKLOG)
    site.start_collector()
    site.start_edge()
    wait_for(lambda: site.prefill_in_influx() > 0, timeout=20, what="the backlog starting to drain")
    site.stop_collector()  # mid-drain: batches in flight are never acked by this one
    _running(site, 6)
    counters = json.loads((site.state / "status.json").read_text())["metrics"]["counters"]
    assert counters.get("uplink_resends", 0) >= 1, counters  # resent after the 3 s ack timeout
    site.start_collector()
    site.wait_drained()
    _running(site, 2)
    print(site.finish_and_count())


def test_influxdb_stopped_and_restarted_collector_does_not_ack(site, influx):
    site.start_collector()
    site.start_edge()
    wait_for(lambda: site.influx.count("meter", site.db, "voltage") >= 3, timeout=20, what="first meter rows")
    influx.stop()
    _running(site, 7)
    st = site.status()
    # Nothing was acked while InfluxDB was down: the points wait in the outbox.
    assert st["outbox"]["rows"] >= 10, st["outbox"]
    influx.start()
    wait_for(lambda: site.outbox_rows() < 30, timeout=30, what="the outbox to drain after InfluxDB returned")
    _running(site, 2)
    print(site.finish_and_count())


def test_edge_sigkilled_and_restarted_twice(site):
    site.prefill(BACKLOG * 3)
    site.start_collector()
    left_at_kill = []
    for _ in range(2):
        site.start_edge()
        seen = site.prefill_in_influx()
        wait_for(lambda seen=seen: site.prefill_in_influx() > seen, timeout=20, what="the backlog draining")
        site.kill_edge()  # mid-drain, batches in flight
        left_at_kill.append(site.outbox_rows())
    assert left_at_kill[0] > 0, "the first kill must land mid-drain"
    site.start_edge()
    site.wait_drained()
    site.stop_edge()
    site.carry_leftovers()
    # The killed runs' counters died with them, so count the backlog exactly: every point once.
    assert site.prefill_in_influx() == BACKLOG * 3
    assert sum(site.dropped().values()) == 0


def test_box_broker_restarted(site, mosquitto, spawn):
    """Face gates publish to the box broker (QoS 1, the agent's persistent session); the broker is
    restarted mid-stream. Every event the simulator got a PUBACK for must reach InfluxDB."""
    from tests.conftest import run_cli

    gates = 4
    for g in range(1, gates + 1):
        run_cli("poplar-edge", "devices", "add", f"gate-{g}", "--profile", "generic-facegate", "--mqtt-id",
                f"gate-{g}", "--config", str(site.edge_cfg))
    site.prefill(BACKLOG // 4)
    site.start_collector()
    site.start_edge()
    wait_for(lambda: site.influx.count("meter", site.db, "voltage") >= 3, timeout=20, what="first meter rows")
    sim = spawn("poplar-sim", "facegate", "--broker", mosquitto.url, "--gates", str(gates), "--rate", "100",
                "--count", "300", "--traffic", "flat", "--ms-time", "--heartbeat-s", "3600", name="gates-1")
    assert sim.proc.wait(30) == 0, sim.output()
    mosquitto.restart()  # persistence on: what it accepted for the agent's session survives
    _running(site, 3)
    sim2 = spawn("poplar-sim", "facegate", "--broker", mosquitto.url, "--gates", str(gates), "--rate", "100",
                 "--count", "200", "--traffic", "flat", "--ms-time", "--heartbeat-s", "3600", "--seed", "3",
                 name="gates-2")
    assert sim2.proc.wait(30) == 0, sim2.output()
    site.wait_drained()
    _running(site, 1)
    result = site.finish_and_count()  # InfluxDB == everything committed + backlog, exactly
    counters = json.loads((site.state / "status.json").read_text())["metrics"]["counters"]
    assert counters["mqtt_messages_committed"] == 500, counters  # every PUBACKed message, once
    # each of the 500 messages (events and alarms, no keep-alives) is one point in InfluxDB
    assert result["influx"]["gate_event"] + result["influx"]["gate_alarm"] == 500, (result, counters)


def test_outbox_cap_reached_during_an_outage_drops_by_policy_counted_exactly(tmp_path, spawn, mosquitto,
                                                                             central_broker, influx, influx_db):
    cap = 1024 * 1024
    site = Site(tmp_path, spawn, mosquitto, central_broker, influx, influx_db,
                edge_overrides={"outbox": {"max_bytes": cap}})
    try:
        # Fill to just under the cap, then let live points arrive with the collector down.
        n = 1890  # 552 bytes each: about 5 KB under the cap
        size = site.prefill(n, pad=400, chunk=100)
        assert cap - 12_000 < size <= cap and not sum(site.dropped().values()), size
        site.start_edge()
        wait_for(lambda: sum(site.dropped().values()) > 0 and site.dropped().get("telemetry", 0) > 0,
                 timeout=25, interval=0.5, what="the cap to be reached and telemetry dropped")
        dropped = site.dropped()
        assert dropped.get("health", 0) > 0, "health goes before telemetry"
        assert dropped.get("alarm", 0) == dropped.get("event", 0) == 0
        site.start_collector()
        wait_for(lambda: site.outbox_rows() < 30, timeout=30, what="drain after the outage")
        _running(site, 1.5)  # one more health report with the final counters
        result = site.finish_and_count()  # InfluxDB == accepted + backlog - dropped, exactly
        final = site.dropped()
        reported = site.influx.rows("SELECT last(dropped_telemetry) AS t, last(dropped_health) AS h "
                                    "FROM gateway_health", site.db)[0]
        assert 0 < reported["t"] <= final["telemetry"] and 0 < reported["h"] <= final["health"]
        assert result["dropped"] == sum(final.values())
        # The oldest backlog went first: the surviving backlog points are its newest.
        seqs = [r["seq"] for r in site.influx.rows("SELECT seq FROM meter WHERE device = 'prefill'", site.db)]
        assert seqs == list(range(n - len(seqs), n))
    finally:
        site.stop_all()
