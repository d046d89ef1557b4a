"""Clock sanity end to end (issue 5, item 5), on real servers: a box whose clock reads 1970
(simulated with POPLAR_CLOCK_SKEW_S) gets its points into InfluxDB at the right time, marked
clock_corrected=true, with nothing lost; points far outside the collector's window are refused,
counted and reported back to the edge."""

from __future__ import annotations

import json
import time

import pytest

from edge.clock import SKEW_ENV
from tests.conftest import wait_for
from tests.test_outage_harness import PREFILL_DEVICE, Site

pytestmark = pytest.mark.integration

BOOTED_IN_1970 = -1_700_000_000  # seconds: the box thinks it is early 1970


def test_box_booted_in_1970_is_corrected_and_marked(tmp_path, spawn, mosquitto, central_broker, influx, influx_db):
    site = Site(tmp_path, spawn, mosquitto, central_broker, influx, influx_db, meters=2,
                edge_env={SKEW_ENV: str(BOOTED_IN_1970)})
    try:
        site.start_collector()
        site.start_edge()
        rows = wait_for(lambda: len(influx.rows("SELECT * FROM meter", influx_db)) >= 6 and
                        influx.rows("SELECT * FROM meter", influx_db), timeout=25, what="corrected meter rows")
        now = time.time_ns()
        assert all(abs(r["time"] - now) < 30 * 10**9 for r in rows), "timestamps must be today's, not 1970's"
        assert all(r["clock_corrected"] is True for r in rows)
        assert all(r["time"] % 10**9 == 0 for r in rows), "a whole-second correction keeps polls aligned"
        st = json.loads((site.state / "status.json").read_text())
        assert abs(st["clock"]["correction_ns"] / 1e9 + BOOTED_IN_1970) < 5
        health = wait_for(lambda: influx.rows("SELECT last(clock_correction_s) AS c FROM gateway_health", influx_db),
                          timeout=10, what="gateway_health with the clock correction")
        assert abs(health[0]["c"] + BOOTED_IN_1970) < 5
        time.sleep(1)
        result = site.finish_and_count()  # nothing refused as "too old", nothing lost
        assert result["influx"]["meter"] >= 6
    finally:
        site.stop_all()


def test_points_outside_the_collector_window_are_refused_counted_and_reported(tmp_path, spawn, mosquitto,
                                                                             central_broker, influx, influx_db):
    site = Site(tmp_path, spawn, mosquitto, central_broker, influx, influx_db, meters=0)
    try:
        # Stamped by an earlier run whose clock was two hours fast (plausible, so not correctable
        # after the fact), and a day in the past that is still inside the 30-day window.
        site.prefill(300, start_ns=time.time_ns() + 2 * 3600 * 10**9)
        site.prefill(200, start_ns=time.time_ns() - 86400 * 10**9)
        site.start_collector()
        site.start_edge()
        wait_for(lambda: site.outbox_rows() == 0 and
                 influx.count("meter", influx_db, "seq", f"WHERE device = '{PREFILL_DEVICE}'") == 200,
                 timeout=20, what="the batch to be acked")
        time.sleep(1.5)
        site.stop_edge()
        counters = json.loads((site.state / "status.json").read_text())["metrics"]["counters"]
        assert counters["uplink_points_refused"] == 300
        assert influx.count("meter", influx_db, "seq", f"WHERE device = '{PREFILL_DEVICE}'") == 200
        coll = site.collector.output()
        assert "in_the_future" in coll
    finally:
        site.stop_all()


async def test_a_devices_own_time_is_not_moved_by_the_box_clock_correction(tmp_path):
    """Box clock an hour slow, gate clock right (NTP): the gate's event keeps the gate's time; only
    points stamped by the box are corrected (and marked)."""
    from common.points import Point, Priority
    from edge.clock import Clock
    from edge.outbox import Outbox

    clock = Clock(skew_ns=0)
    hour = 3600 * 10**9
    clock.observe(time.time_ns() + hour, clock.now_ns())  # the collector is an hour ahead of the box
    assert clock.correction_ns
    ob = Outbox(tmp_path / "o.db", clock=clock)
    await ob.open()
    t_device = time.time_ns() + hour
    t_box = clock.now_ns()
    tags = {"site": "s", "gateway": "g", "device": "gate1"}
    await ob.put([Point("gate_event", tags, {"x": 1}, t_device, Priority.EVENT, box_time=False),
                  Point("device_health", tags, {"online": True}, t_box, Priority.HEALTH)])
    claim = await ob.claim(10)
    gate, health = (json.loads(b) for b in claim.bodies)
    assert gate[3] == t_device and "clock_corrected" not in gate[2]
    assert health[3] == t_box + clock.correction_ns and health[2]["clock_corrected"] is True
    await ob.close()
