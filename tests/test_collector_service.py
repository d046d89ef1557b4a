"""The running collector against real Mosquitto and InfluxDB: authorisation, per-point
validation, acks, backpressure, status, and two collectors sharing the uplink."""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid

import pytest

from common import wire
from common.mqtt import AsyncMqtt, MqttUrl
from common.points import Point
from tests.conftest import run_cli, wait_for
from tests.servers import free_port

pytestmark = pytest.mark.integration


def _cfg(tmp_path, broker, influx_url, db, name="c.yaml", extra: str = "") -> str:
    cfg = str(tmp_path / name)
    run_cli("poplar-collector", "init", "--config", cfg, "--broker", broker.url, "--influx-url", influx_url,
            "--database", db, "--state-dir", str(tmp_path / "state"), "--force")
    with open(cfg, "a") as f:
        f.write("health_interval_s: 1\nstatus_interval_s: 0.5\n"
                "write: {retries: 1, backoff_s: 0.1, backoff_max_s: 0.3}\n" + extra)
    return cfg


def _serve(cfg: str, spawn, *gateways: tuple[str, str]):
    """Allow GATEWAYS ((name, site) pairs) in CFG's registry and run a collector on it."""
    for gw, site in gateways:
        run_cli("poplar-collector", "gateways", "add", gw, "--site", site, "--config", cfg)
    return spawn("poplar-collector", "run", "--config", cfg)


def _points(site, gw, n, start, device="m1"):
    return [Point("meter", {"site": site, "gateway": gw, "device": device}, {"voltage": 220.0 + i % 7, "i": i},
                  start + i) for i in range(n)]


class FakeEdge:
    """Publishes batches like the edge's uplink and records every ack it gets."""

    def __init__(self, url: str, site: str, gw: str) -> None:
        self.site, self.gw = site, gw
        self.mqtt = AsyncMqtt(MqttUrl.parse(url), f"fake-{gw}-{uuid.uuid4().hex[:6]}")
        self.acks: dict[str, list[wire.Ack]] = {}
        self.mqtt.on_messages(self._on)

    def _on(self, msgs):
        for m in msgs:
            a = wire.decode_ack(m.payload)
            self.acks.setdefault(a.batch_id, []).append(a)

    async def start(self):
        assert await self.mqtt.start()
        await self.mqtt.subscribe(wire.ack_topic(self.site, self.gw))

    async def send(self, batch_id: str, points: list[Point], site=None, gw=None, topic=None, version=wire.WIRE_VERSION):
        b = wire.Batch(site or self.site, gw or self.gw, batch_id, points, time.time_ns())
        await self.mqtt.publish(topic or wire.up_topic(self.site, self.gw), wire.encode_batch(b, version=version),
                                timeout=10)

    async def wait_acks(self, ids, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all(i in self.acks for i in ids):
            await asyncio.sleep(0.05)
        return {i: self.acks.get(i) for i in ids}


def test_authorisation_validation_and_status(tmp_path, central_broker, influx, influx_db, spawn):
    cfg = _cfg(tmp_path, central_broker, influx.url, influx_db)
    proc = _serve(cfg, spawn, ("gw1", "sunny"), ("gw2", "sunny"))
    now = time.time_ns()

    async def scenario():
        e1, e2, intruder = FakeEdge(central_broker.url, "sunny", "gw1"), FakeEdge(central_broker.url, "sunny", "gw2"), \
            FakeEdge(central_broker.url, "sunny", "gw9")
        for e in (e1, e2, intruder):
            await e.start()
        await asyncio.sleep(1.5)  # the collector subscribes
        good = _points("sunny", "gw1", 5, now)
        bad = [Point("meter", {"site": "sunny", "gateway": "gw1", "device": "m1"}, {"voltage": math.nan}, now + 10),
               Point("meter", {"site": "sunny", "gateway": "gw1", "device": "m1"}, {"voltage": math.inf}, now + 11),
               Point("no_such_measurement", {"site": "sunny", "gateway": "gw1", "device": "m1"}, {"v": 1}, now + 12),
               Point("meter", {"site": "sunny", "gateway": "gw1", "device": "x" * 5000}, {"v": 1}, now + 13),
               Point("meter", {"site": "sunny", "gateway": "gw1", "device": "m1"}, {"s": "y" * 5000}, now + 14),
               Point("meter", {"site": "sunny", "gateway": "gw1", "device": "m1", **{f"t{i}": "v" for i in range(20)}},
                     {"v": 1}, now + 15),
               Point("meter", {"site": "other", "gateway": "gw1", "device": "m1"}, {"v": 1}, now + 16)]
        await e1.send("b-mixed", good[:2] + bad + good[2:])
        await intruder.send("b-unknown", _points("sunny", "gw9", 3, now))
        await e2.send("b-lying", _points("sunny", "gw1", 3, now), gw="gw1")  # body says gw1 on gw2's topic
        await e1.mqtt.publish(wire.up_topic("sunny", "gw1"), b"not zlib", timeout=5)
        acks = {}
        acks.update(await e1.wait_acks(["b-mixed"]))
        acks.update(await intruder.wait_acks(["b-unknown"]))
        acks.update(await e2.wait_acks(["b-lying"]))
        run_cli("poplar-collector", "gateways", "remove", "gw1", "--config", cfg)
        await e1.send("b-after-remove", _points("sunny", "gw1", 2, now + 100))
        acks.update(await e1.wait_acks(["b-after-remove"]))
        for e in (e1, e2, intruder):
            await e.mqtt.stop()
        return acks

    acks = asyncio.run(scenario())
    mixed = acks["b-mixed"][0]
    assert (mixed.status, mixed.written, mixed.refused) == ("ok", 5, 7)
    for k in ("nan_or_infinity=2", "unknown_measurement=1", "string_too_long=2", "too_many_tags=1", "tag_mismatch=1"):
        assert k in mixed.reason
    for bid in ("b-unknown", "b-lying", "b-after-remove"):
        assert [a.status for a in acks[bid]] == ["rejected"], bid
    assert "not authorised" in acks["b-unknown"][0].reason
    assert "gateways add gw9" in acks["b-unknown"][0].reason
    assert "came on the topic" in acks["b-lying"][0].reason
    assert "not authorised" in acks["b-after-remove"][0].reason
    assert influx.count("meter", influx_db) == 5
    assert influx.count("meter", influx_db, where="WHERE gateway = 'gw9'") == 0

    def status():
        doc = json.loads(run_cli("poplar-collector", "status", "--json", "--config", cfg).stdout)
        c = doc["collectors"][0]["counters"] if doc["collectors"] else {}
        return doc if c.get("rejected_malformed") == 1 and c.get("rejected_unauthorised") == 3 else None

    doc = wait_for(status, timeout=10, what="status with the rejections")
    c = doc["collectors"][0]["counters"]
    assert doc["running"] == 1 and c["points_written"] == 5 and c["refused_nan_or_infinity"] == 2
    assert c["acks_ok"] == 1 and c["acks_rejected"] == 3 and c["batches_rejected"] == 4
    assert [g["gateway"] for g in doc["collectors"][0]["gateways"]] == ["gw1"]
    text = run_cli("poplar-collector", "status", "--config", cfg).stdout
    assert "running" in text and "rejected_unauthorised=3" in text
    health = wait_for(lambda: [r for r in influx.rows("SELECT * FROM collector_health WHERE gateway = '_collector'",
                                                      influx_db) if r.get("rejected_unauthorised") == 3],
                      timeout=10, what="collector_health with the rejections")
    assert health[-1]["points_written"] == 5 and health[-1]["sink_ok"] is True
    lag = wait_for(lambda: influx.rows("SELECT * FROM collector_health WHERE gateway = 'gw1'", influx_db),
                   timeout=10, what="per-gateway health")
    assert lag[-1]["last_seen_s_ago"] >= 0 and "lag_s" in lag[-1]
    assert proc.stop() == 0
    stopped = json.loads(run_cli("poplar-collector", "status", "--json", "--all", "--config", cfg).stdout)
    assert stopped["running"] == 0 and stopped["collectors"][0]["running"] is False
    r = run_cli("poplar-collector", "status", "--config", cfg, check=False)
    assert r.returncode == 1 and "no collector is running" in r.stderr


def test_sink_down_means_no_ok_acks_then_recovery(tmp_path, central_broker, influx, influx_db, spawn):
    dead = f"http://127.0.0.1:{free_port()}"
    cfg = _cfg(tmp_path, central_broker, dead, influx_db)
    proc = _serve(cfg, spawn, ("gw1", "sunny"))
    now = time.time_ns()

    async def down():
        e = FakeEdge(central_broker.url, "sunny", "gw1")
        await e.start()
        await asyncio.sleep(1.5)
        for i in range(3):
            await e.send(f"b{i}", _points("sunny", "gw1", 4, now + i * 100))
        acks = await e.wait_acks(["b0", "b1", "b2"])
        await e.mqtt.stop()
        return acks

    acks = asyncio.run(down())
    assert all(a and {x.status for x in a} == {"retry"} for a in acks.values()), acks
    proc.stop()
    # InfluxDB back (the config points at the real one now): the edge's resend is written and acked
    cfg = _cfg(tmp_path, central_broker, influx.url, influx_db)
    spawn("poplar-collector", "run", "--config", cfg)

    async def up():
        e = FakeEdge(central_broker.url, "sunny", "gw1")
        await e.start()
        await asyncio.sleep(1.5)
        for i in range(3):
            await e.send(f"b{i}", _points("sunny", "gw1", 4, now + i * 100))
        acks = await e.wait_acks(["b0", "b1", "b2"])
        await e.mqtt.stop()
        return acks

    acks = asyncio.run(up())
    assert all(a and a[-1].status == "ok" for a in acks.values()), acks
    assert influx.count("meter", influx_db) == 12


def test_two_collectors_share_the_uplink_and_one_stops_mid_stream(tmp_path, central_broker, influx, influx_db, spawn):
    """Every batch written once and acked once; stopping one collector mid-stream loses nothing."""
    c1 = _cfg(tmp_path, central_broker, influx.url, influx_db, "c1.yaml", "name: c1\n")
    c2 = _cfg(tmp_path, central_broker, influx.url, influx_db, "c2.yaml", "name: c2\n")
    for g in ("gw1", "gw2", "gw3"):
        run_cli("poplar-collector", "gateways", "add", g, "--site", "sunny", "--config", c1)
    p1 = spawn("poplar-collector", "run", "--config", c1)
    spawn("poplar-collector", "run", "--config", c2)
    now = time.time_ns()
    n_batches, per = 150, 50

    async def scenario():
        edges = [FakeEdge(central_broker.url, "sunny", g) for g in ("gw1", "gw2", "gw3")]
        for e in edges:
            await e.start()
        await asyncio.sleep(2)
        ids = {e.gw: [] for e in edges}
        for i in range(n_batches):
            e = edges[i % 3]
            bid = f"{e.gw}-{i}"
            ids[e.gw].append(bid)
            await e.send(bid, _points("sunny", e.gw, per, now + i * per, device=f"d{i % 5}"))
            if i == n_batches // 2:
                p1.proc.send_signal(15)  # SIGTERM: unsubscribe, finish, ack, leave
            await asyncio.sleep(0.01)
        out = {}
        for e in edges:
            out.update(await e.wait_acks(ids[e.gw], timeout=30))
            await e.mqtt.stop()
        return out

    acks = asyncio.run(scenario())
    assert p1.proc.wait(20) == 0
    missing = [b for b, a in acks.items() if not a]
    assert not missing, f"{len(missing)} batches never acked: {missing[:5]}"
    assert all([x.status for x in a] == ["ok"] for a in acks.values()), \
        [(b, [x.status for x in a]) for b, a in acks.items() if [x.status for x in a] != ["ok"]][:5]
    assert influx.count("meter", influx_db, "i") == n_batches * per

    def written_by_collector():
        # the running collector rewrites its status file every status_interval_s: wait for it
        docs = json.loads(run_cli("poplar-collector", "status", "--json", "--all", "--config", c1).stdout)["collectors"]
        w = {d["collector"]: d["counters"].get("batches_written", 0) for d in docs}
        return w if sum(w.values()) >= n_batches else None

    written = wait_for(written_by_collector, timeout=15, what="status files counting every batch")
    assert set(written) == {"c1", "c2"} and sum(written.values()) == n_batches
    assert written["c1"] > 0 and written["c2"] > 0  # both really took part


def test_batch_limits_refuse_whole_batches(tmp_path, central_broker, influx, influx_db, spawn):
    cfg = _cfg(tmp_path, central_broker, influx.url, influx_db,
               extra="limits: {max_batch_bytes: 2048, max_points_per_batch: 10}\n")
    _serve(cfg, spawn, ("gw1", "sunny"))
    now = time.time_ns()

    async def scenario():
        e = FakeEdge(central_broker.url, "sunny", "gw1")
        await e.start()
        await asyncio.sleep(1.5)
        await e.send("many", _points("sunny", "gw1", 11, now))
        await e.send("fine", _points("sunny", "gw1", 10, now + 100))
        big = [Point("meter", {"site": "sunny", "gateway": "gw1", "device": "m1"},
                     {"s": "".join(uuid.uuid4().hex for _ in range(16))}, now + 200 + i) for i in range(16)]  # incompressible > 2 KiB
        await e.send("big", big)
        acks = await e.wait_acks(["many", "fine", "big"])
        await asyncio.sleep(0.5)
        await e.mqtt.stop()
        return acks, e.acks

    acks, all_acks = asyncio.run(scenario())
    assert acks["many"][0].status == "rejected" and "limit of 10" in acks["many"][0].reason
    assert acks["fine"][0].status == "ok" and acks["fine"][0].written == 10
    # too large to decode: counted, answered "rejected" from the id in its head, never written
    assert [(a.status, "over the collector's limit" in a.reason) for a in acks["big"]] == [("rejected", True)]
    doc = wait_for(lambda: (d := json.loads(run_cli("poplar-collector", "status", "--json", "--config", cfg).stdout))
                   and d["collectors"] and d["collectors"][0]["counters"].get("rejected_too_large") == 1 and d,
                   timeout=10, what="rejected_too_large in status")
    assert doc["collectors"][0]["counters"]["rejected_too_many_points"] == 1
    assert influx.count("meter", influx_db) == 10


def test_v1_and_v2_batches_are_both_written_alike(tmp_path, central_broker, influx, influx_db, spawn):
    """Gateways upgrade at other times than the collector: a v1 batch is still accepted, and the
    same points sent as v2 land in InfluxDB with the same values, types and refusals."""
    cfg = _cfg(tmp_path, central_broker, influx.url, influx_db)
    _serve(cfg, spawn, ("gw1", "sunny"))
    now = time.time_ns()

    def pts(device: str) -> list[Point]:
        tags = {"site": "sunny", "gateway": "gw1", "device": device, "building": "5幢"}
        return [Point("meter", tags, {"voltage": 220.5 + i, "n": i, "ok": i % 2 == 0, "note": f'说"{i}"\\'}, now + i)
                for i in range(20)] + [
            Point("meter", tags, {"voltage": math.nan}, now + 100),           # refused: nan_or_infinity
            Point("meter", tags, {"n": 2**64}, now + 101),                    # refused: integer_out_of_range
            Point("meter", tags, {"voltage": 1.0}, now - 90 * 86400 * 10**9)]  # refused: too_old

    async def scenario():
        e = FakeEdge(central_broker.url, "sunny", "gw1")
        await e.start()
        await asyncio.sleep(1.5)
        await e.send("as-v1", pts("电表-v1"), version=1)
        await e.send("as-v2", pts("电表-v2"), version=2)
        acks = await e.wait_acks(["as-v1", "as-v2"])
        await e.mqtt.stop()
        return acks

    acks = asyncio.run(scenario())
    for bid in ("as-v1", "as-v2"):
        a = acks[bid][0]
        assert (a.status, a.written, a.refused) == ("ok", 20, 3), (bid, a)
        assert "nan_or_infinity=1" in a.reason and "integer_out_of_range=1" in a.reason and "too_old=1" in a.reason
    rows = {d: influx.rows(f"SELECT voltage, n, ok, note, building FROM meter WHERE device = '电表-{d}'", influx_db)
            for d in ("v1", "v2")}
    assert len(rows["v1"]) == 20 and rows["v1"] == rows["v2"]
    assert rows["v2"][3] == {"time": now + 3, "voltage": 223.5, "n": 3, "ok": False, "note": '说"3"\\',
                             "building": "5幢"}
    types = influx.query('SHOW FIELD KEYS FROM "meter"', influx_db)["results"][0]["series"][0]["values"]
    assert dict(map(tuple, types)) == {"voltage": "float", "n": "integer", "ok": "boolean", "note": "string"}
