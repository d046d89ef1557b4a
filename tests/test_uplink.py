"""The uplink against a real collector, central Mosquitto and InfluxDB: every batch delivered
twice still leaves each point once in InfluxDB; two events of one device in the same
millisecond stay two points; duplicate acks are harmless; the live lane keeps fresh points
moving while a backlog drains."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
import zlib

import pytest

from common import wire
from common.mqtt import AsyncMqtt, MqttUrl
from common.points import Point, Priority
from edge.agent import Agent
from edge.config import EdgeConfig
from edge.outbox import Outbox
from tests.conftest import run_cli, until, wait_for

pytestmark = pytest.mark.integration

SITE, GW = "sunny-garden", "gw-dup"


def _collector(tmp_path, central_broker, influx, db, spawn):
    cfg = tmp_path / "collector.yaml"
    run_cli("poplar-collector", "init", "--config", str(cfg), "--broker", central_broker.url,
            "--influx-url", influx.url, "--database", db)
    run_cli("poplar-collector", "gateways", "add", GW, "--site", SITE, "--config", str(cfg))
    proc = spawn("poplar-collector", "run", "--config", str(cfg), name="collector")
    wait_for(lambda: "subscribed to" in proc.output(), 15, what="the collector to subscribe")
    return proc


def _edge_cfg(tmp_path, central_broker, **uplink) -> EdgeConfig:
    return EdgeConfig(site=SITE, gateway=GW, state_dir=str(tmp_path / "state"),
                      uplink={"url": central_broker.url, "ack_timeout_s": 5, **uplink}, health_interval_s=3600)


async def test_every_batch_delivered_twice_influx_holds_each_point_once(tmp_path, central_broker, influx,
                                                                       influx_db, spawn):
    collector = _collector(tmp_path, central_broker, influx, influx_db, spawn)
    agent = Agent(_edge_cfg(tmp_path, central_broker, batch_max_points=700, max_inflight=4))
    up = agent.uplink
    original = up._send

    def send_twice(f):  # a replay of every batch, as after a lost ack
        original(f)
        original(f)

    up._send = send_twice
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await until(lambda: agent.outbox._db is not None, 10, "the outbox to open")
        tags = {"site": SITE, "gateway": GW, "device": "gate-1"}
        same_ms = 1_795_000_000_123_000_000
        # 5 x 1000 gate events, all stamped in the same millisecond: they must stay 5000 points.
        for k in range(5):
            await agent.emit([Point("gate_event", dict(tags), {"n": k * 1000 + i}, same_ms, Priority.EVENT)
                              for i in range(1000)])
        await agent.emit([Point("meter", {**tags, "device": f"m{i}"}, {"v": float(i)}, time.time_ns(),
                                Priority.TELEMETRY) for i in range(300)])
        await until(lambda: agent.outbox.rows == 0 and up.in_flight == 0, 30, "every batch acked")
        await asyncio.sleep(1.0)  # let the second copies' acks arrive
        c = agent.metrics.counters
        assert c["uplink_stale_acks"] >= c["uplink_batches_acked"] > 5, dict(c)  # every duplicate was acked, harmlessly
        assert influx.count("gate_event", influx_db, "n") == 5000
        assert influx.count("meter", influx_db, "v") == 300
        times = {r["time"] for r in influx.rows("SELECT n FROM gate_event", influx_db)}
        assert len(times) == 5000 and min(times) == same_ms and max(times) < same_ms + 1_000_000
    finally:
        stop.set()
        await task
        assert collector.stop() == 0, collector.output()[-2000:]


async def test_live_points_go_out_promptly_while_a_backlog_drains(tmp_path, central_broker, influx, influx_db,
                                                                 spawn):
    cfg = _edge_cfg(tmp_path, central_broker, batch_max_points=5000, max_inflight=4)
    ob = Outbox(cfg.outbox_db)
    cfg.state_path.mkdir(parents=True)
    await ob.open()
    tags = {"site": SITE, "gateway": GW, "device": "old"}
    t0 = time.time_ns() - 3600 * 10**9
    for lo in range(0, 150_000, 10_000):
        await ob.put([Point("meter", dict(tags), {"seq": i}, t0 + i * 1000) for i in range(lo, lo + 10_000)])
    await ob.close()
    collector = _collector(tmp_path, central_broker, influx, influx_db, spawn)
    agent = Agent(cfg)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await until(lambda: agent.uplink.connected and agent.metrics.counters["uplink_batches_acked"] > 0, 20,
                    "the drain to start")
        lat = []
        for i in range(5):
            sent = time.time_ns()
            await agent.emit([Point("meter", {**tags, "device": "live"}, {"i": i}, sent)])
            q = f"SELECT i FROM meter WHERE device = 'live' AND time = {sent}"
            await asyncio.to_thread(wait_for, lambda q=q: influx.rows(q, influx_db), 20, 0.05, "the live point")
            lat.append((time.time_ns() - sent) / 1e9)
            backlog_left = agent.outbox.rows
        assert backlog_left > 10_000, "the backlog must still be draining, or this measured nothing"
        # Each live point is in InfluxDB within a couple of collector round trips, not after the backlog.
        assert max(lat) < 3.0, lat
        await until(lambda: agent.outbox.rows == 0, 60, "the backlog to drain")
        assert influx.count("meter", influx_db, "seq", "WHERE device = 'old'") == 150_000
    finally:
        stop.set()
        await task
        collector.stop()


@pytest.mark.parametrize("version", [2, 1])
async def test_the_edge_sends_its_configured_wire_version_and_influxdb_gets_the_rows(
        version, tmp_path, central_broker, influx, influx_db, spawn):
    """v2 by default; `uplink.wire_version: 1` for a central collector older than v2. Either way
    the rows reach InfluxDB with their values and types."""
    collector = _collector(tmp_path, central_broker, influx, influx_db, spawn)
    seen: list[int] = []
    spy = AsyncMqtt(MqttUrl.parse(central_broker.url), f"spy-{uuid.uuid4().hex[:6]}")
    spy.on_messages(lambda msgs: seen.extend(json.loads(zlib.decompress(m.payload))["v"] for m in msgs))
    assert await spy.start()
    await spy.subscribe(wire.up_topic(SITE, GW))
    uplink = {} if version == 2 else {"wire_version": 1}
    agent = Agent(_edge_cfg(tmp_path, central_broker, batch_max_points=50, **uplink))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await until(lambda: agent.outbox._db is not None, 10, "the outbox to open")
        now = time.time_ns()
        tags = {"site": SITE, "gateway": GW, "building": "5幢"}
        await agent.emit([Point("meter", {**tags, "device": f"{i % 3}号电表"},
                                {"voltage": 220.25 + i, "seq": i, "ok": i % 2 == 0}, now + i) for i in range(200)]
                         + [Point("gate_event", {**tags, "device": "东门"}, {"event": "通行", "n": 1}, now)])
        await until(lambda: agent.outbox.rows == 0 and agent.uplink.in_flight == 0, 30, "every batch acked")
        rows = influx.rows("SELECT voltage, seq, ok, device FROM meter", influx_db)
        assert [(r["time"], r["voltage"], r["seq"], r["ok"], r["device"]) for r in rows] == \
            [(now + i, 220.25 + i, i, i % 2 == 0, f"{i % 3}号电表") for i in range(200)]
        assert influx.rows("SELECT event, n FROM gate_event", influx_db)[0] | {"time": 0} == \
            {"time": 0, "event": "通行", "n": 1}
        await until(lambda: len(seen) >= 5, 5, "the spy to see the batches")
        assert set(seen) == {version}  # the clock probe too
    finally:
        stop.set()
        await task
        await spy.stop()
        assert collector.stop() == 0, collector.output()[-2000:]
