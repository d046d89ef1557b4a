"""The MQTT source on a real Mosquitto: registration, manual ack after commit, discovery,
heartbeat timeouts and bad input. The source runs in-process with an `emit` we control."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import yaml

from common.mqtt import AsyncMqtt, MqttUrl
from edge.config import BrokerConfig, EdgeConfig, UplinkConfig
from edge.metrics import Metrics
from edge.mqtt.source import MqttSource
from edge.profiles import SHIPPED_DIR, ProfileLibrary
from edge.registry import Device, Registry, Transport
from simulators import payloads as pl
from tests.conftest import until
from tests.servers import Mosquitto

pytestmark = pytest.mark.integration


class Harness:
    """A source with a controllable emit: points are collected; `fail` makes the commit fail."""

    def __init__(self, tmp: Path, broker_url: str, profiles_dirs: list[str] | None = None, **kw) -> None:
        self.cfg = EdgeConfig(site="sunny-garden", gateway="gw-01", state_dir=str(tmp / "state"),
                              local_broker=BrokerConfig(url=broker_url), uplink=UplinkConfig(url=broker_url),
                              profiles_dirs=profiles_dirs or [])
        self.cfg.state_path.mkdir(parents=True, exist_ok=True)
        self.registry = Registry(self.cfg.registry_db)
        self.metrics = Metrics()
        self.points: list = []
        self.fail = False
        self.gate: asyncio.Event | None = None  # when set to an Event, commits wait for it
        self.emits = 0
        self.kw = kw
        self.source: MqttSource | None = None
        self.task: asyncio.Task | None = None

    async def emit(self, points, *, stamped: bool = False) -> None:
        if self.fail:
            raise OSError("disk full (test)")
        if self.gate is not None:
            await self.gate.wait()
        self.emits += 1
        self.points.extend(points)

    def add(self, name: str, profile: str, mqtt_id: str, **tags) -> None:
        self.registry.add(Device(id=name, profile=profile, transport=Transport("mqtt", mqtt_id=mqtt_id),
                                 tags=tags))

    async def start(self) -> MqttSource:
        self.source = MqttSource(self.cfg, ProfileLibrary(self.cfg.profiles_dirs), self.registry, self.emit,
                                 self.metrics, **self.kw)
        self.source.reconcile(self.registry.all())
        self.task = asyncio.create_task(self.source.run())
        for _ in range(100):
            if self.source.mqtt is not None and self.source.mqtt.connected.is_set():
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # subscriptions sent on connect
        return self.source

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        async with asyncio.timeout(10):  # a cancelled source must not hang
            await asyncio.gather(self.task, return_exceptions=True)

    def of(self, measurement: str, device: str | None = None) -> list:
        return [p for p in self.points if p.measurement == measurement and (device is None or p.tags["device"] == device)]


async def _publisher(url: str) -> AsyncMqtt:
    pub = AsyncMqtt(MqttUrl.parse(url), f"test-pub-{random.getrandbits(32):x}")
    assert await pub.start()
    return pub


NOW = lambda: datetime.now(timezone.utc)  # noqa: E731


async def test_registered_gate_events_become_private_tagged_points(tmp_path, mosquitto):
    h = Harness(tmp_path, mosquitto.url)
    h.add("1号门", "hikvision-isapi", "gate-1", building="5幢")
    h.add("东门", "generic-facegate", "gate-2")
    await h.start()
    pub = await _publisher(mosquitto.url)
    rng = random.Random(1)
    sent, futs = [], []
    for i in range(40):
        topic, payload = pl.facegate_message("hikvision-isapi" if i % 2 else "generic-facegate",
                                             "gate-1" if i % 2 else "gate-2", rng, NOW())
        sent.append(payload)
        futs.append(pub.publish_nowait(topic, payload))
    await asyncio.gather(*futs)
    await until(lambda: h.metrics.counters["mqtt_messages_committed"] == 40, what="40 committed")
    gate = h.of("gate_event") + h.of("gate_alarm")
    assert len(gate) == 40
    for p in gate:
        assert p.tags["site"] == "sunny-garden" and p.tags["gateway"] == "gw-01"
        assert p.tags["device"] in ("1号门", "东门")
    assert all(p.tags.get("building") == "5幢" for p in gate if p.tags["device"] == "1号门")
    # privacy: no names, no raw ids, no pictures anywhere in points; person is a 16-hex pseudonym
    blob = repr(h.points)
    for payload in sent:
        doc = payload.decode()
        for key in ('"name":"', '"Name":"'):
            if key in doc:
                name = doc.split(key)[1].split('"')[0]
                if name:
                    assert name not in blob
    assert "picture" not in blob and "Photo" not in blob
    persons = [p.fields["person"] for p in gate if "person" in p.fields]
    assert persons and all(len(x) == 16 for x in persons)
    # online on first message, as device_health
    health = h.of("device_health")
    assert {p.tags["device"] for p in health if p.fields["online"] is True} == {"1号门", "东门"}
    assert h.source.state["1号门"]["online"] is True
    # many messages share a commit
    assert h.emits < 40
    await h.stop()
    await pub.stop()


async def test_ack_only_after_commit_messages_come_back_after_a_failed_commit(tmp_path, mosquitto):
    h = Harness(tmp_path, mosquitto.url)
    h.add("g1", "generic-facegate", "gate-1")
    h.fail = True
    await h.start()
    pub = await _publisher(mosquitto.url)
    rng = random.Random(2)
    for _ in range(10):
        topic, payload = pl.facegate_message("generic-facegate", "gate-1", rng, NOW())
        if "/heartbeat" in topic:
            topic, payload = pl.facegate_message("generic-facegate", "gate-1", random.Random(5), NOW())
        await pub.publish(topic, payload)
    await until(lambda: h.metrics.counters["mqtt_commit_errors"] > 0, what="a failed commit")
    assert h.points == []
    await h.stop()  # killed with the commit still failing: nothing was acknowledged
    # a new agent with the same client id (persistent session) gets every message again
    h2 = Harness(tmp_path / "second", mosquitto.url)
    h2.registry = h.registry
    await h2.start()
    await until(lambda: h2.metrics.counters["mqtt_messages_committed"] == 10, what="10 redelivered")
    assert len(h2.of("gate_event") + h2.of("gate_alarm")) == 10
    await h2.stop()
    # and, acknowledged now, they do not come a third time
    h3 = Harness(tmp_path / "third", mosquitto.url)
    h3.registry = h.registry
    await h3.start()
    await asyncio.sleep(1.0)
    assert h3.metrics.counters["mqtt_messages_committed"] == 0
    await h3.stop()
    await pub.stop()


async def test_unregistered_devices_are_discovered_not_forwarded(tmp_path, mosquitto, caplog):
    caplog.set_level(logging.INFO, logger="edge.mqtt.source")
    h = Harness(tmp_path, mosquitto.url)
    h.add("lift A", "gbt24476-elevator", "lift-1")
    h.add("wrong lift", "generic-facegate", "lift-9")  # registered under a dialect it does not speak
    await h.start()
    pub = await _publisher(mosquitto.url)
    car = pl.ElevatorModel(seed=1)
    rng = random.Random(3)
    for i in range(30):
        car.step(3)
        await pub.publish(*pl.elevator_status("lift-1", car, NOW()))
        await pub.publish(*pl.elevator_status("lift-9", car, NOW()))
        await pub.publish(*pl.facegate_message("dahua-vto2mqtt", "DH-SN-77", rng, NOW()))
    await until(lambda: h.metrics.counters["mqtt_unregistered"] == 60, what="60 unregistered")
    await until(lambda: len(h.registry.discovered()) == 2, timeout=6, what="discovery flushed")
    found = {d["id"]: d for d in h.registry.discovered()}
    assert found["lift-9"]["profile"] == "gbt24476-elevator" and found["lift-9"]["count"] == 30
    assert found["lift-9"]["topic"] == "elevator/lift-9/status"
    assert found["DH-SN-77"]["profile"] == "dahua-vto2mqtt"
    assert found["DH-SN-77"]["first_seen_ns"] <= found["DH-SN-77"]["last_seen_ns"]
    assert sum("registered with profile generic-facegate" in r.message for r in caplog.records) == 1
    assert {p.tags["device"] for p in h.points} == {"lift A"}
    assert len(h.of("elevator_status")) == 30
    # registering it (what `devices add --mqtt-id` does) starts forwarding without a restart
    h.add("lift B", "gbt24476-elevator", "lift-9")
    h.registry.forget_discovered("lift-9")
    h.source.reconcile(h.registry.all())
    await pub.publish(*pl.elevator_status("lift-9", car, NOW()))
    await until(lambda: h.of("elevator_status", "lift B"), what="lift B forwarded")
    await h.stop()
    await pub.stop()


def _fast_heartbeat_profiles(tmp_path: Path) -> str:
    site = tmp_path / "site-profiles"
    site.mkdir()
    doc = yaml.safe_load((SHIPPED_DIR / "gbt24476-elevator.yaml").read_text(encoding="utf-8"))
    doc["heartbeat_timeout_s"] = 1
    (site / "gbt24476-elevator.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return str(site)


async def test_heartbeat_timeout_drives_device_health(tmp_path, mosquitto, caplog):
    caplog.set_level(logging.INFO, logger="edge.mqtt.source")
    h = Harness(tmp_path, mosquitto.url, profiles_dirs=[_fast_heartbeat_profiles(tmp_path)])
    h.add("lift A", "gbt24476-elevator", "lift-1")
    h.add("lift never", "gbt24476-elevator", "lift-2")
    await h.start()
    pub = await _publisher(mosquitto.url)
    rng = random.Random(4)
    await pub.publish(*pl.elevator_heartbeat("lift-1", rng, NOW(), 10))
    # The state flips when the message is mapped, the point is emitted by the commit task after
    # it: wait for both (waiting for the state alone raced with the commit).
    await until(lambda: h.source.state["lift A"]["online"] is True
                 and any("uptime_s" in p.fields for p in h.of("device_health", "lift A")), what="online")

    def logged(word: str) -> int:
        return sum("lift A" in r.message and word in r.message for r in caplog.records)

    # (on a loaded machine the start may outlast the 1 s timeout: count from here)
    offline0, online0 = logged("offline"), logged("is online")
    off0 = len([p for p in h.of("device_health", "lift A") if p.fields["online"] is False])
    hb = [p for p in h.of("device_health", "lift A") if "uptime_s" in p.fields]
    assert hb and hb[0].fields["online"] is True and hb[0].fields["uptime_s"] == 10
    await until(lambda: h.source.state["lift A"]["online"] is False, timeout=5, what="offline after silence")
    assert h.source.state["lift never"]["online"] is False  # never heard of: offline too
    off = [p for p in h.of("device_health", "lift A") if p.fields["online"] is False][off0:]
    assert len(off) == 1 and off[0].fields["silent_s"] >= 1
    await asyncio.sleep(1.5)  # still silent: no second offline point, no second log line
    assert len([p for p in h.of("device_health", "lift A") if p.fields["online"] is False]) == off0 + 1
    assert logged("offline") == offline0 + 1
    await pub.publish(*pl.elevator_heartbeat("lift-1", rng, NOW(), 12))
    await until(lambda: h.source.state["lift A"]["online"] is True, what="back online")
    assert logged("is online") == online0 + 1
    await h.stop()
    await pub.stop()


async def test_bad_input_is_counted_logged_once_and_never_blocks_good_devices(tmp_path, mosquitto, caplog):
    caplog.set_level(logging.INFO, logger="edge.mqtt.source")
    h = Harness(tmp_path, mosquitto.url)
    h.add("bad gate", "generic-facegate", "gate-bad")
    h.add("good gate", "hikvision-isapi", "gate-good")
    h.add("bad lift", "gbt24476-elevator", "lift-bad")
    await h.start()
    pub = await _publisher(mosquitto.url)
    rng = random.Random(5)
    bad_topic = "facegate/gate-bad/record"
    kinds = {
        "malformed_json": [b"{", b"{'a': 1}", b"", b"\x00\x00"],
        "not_utf8": [b'{"SN":"' + bytes([0xC3, 0x28, 0xFF]) + b'"}'],
        "wrong_dialect": [pl.malformed_payload(rng, "wrong_dialect")],
        "too_large": [pl.malformed_payload(rng, "huge")],
        "wrong_type": [b"[1,2,3]", b"42"],
    }
    good_sent = 0
    for rounds in range(3):
        for kind, payloads in kinds.items():
            for p in payloads:
                await pub.publish(bad_topic, p)
        await pub.publish("facegate/gate-bad/record", pl.malformed_payload(rng, "deep"))
        # an absurd time is kept at the receive time and flagged, not lost
        await pub.publish("elevator/lift-bad/status",
                          b'{"registration_code":"lift-bad","ts":"1970-01-01T00:00:05+08:00","service_mode":1}')
        for _ in range(5):
            await pub.publish(*pl.facegate_message("hikvision-isapi", "gate-good", rng, NOW()))
            good_sent += 1
    # binary junk on a topic nobody reads, and an elevator status missing everything
    await pub.publish("elevator/lift-bad/status", b'{"registration_code":"lift-bad"}')
    await pub.publish("somewhere/else", b"\xff\xfe")
    await until(lambda: len(h.of("gate_event", "good gate")) + len(h.of("gate_alarm", "good gate")) == good_sent,
                 what="every good event")
    await until(lambda: h.metrics.counters["mqtt_dropped_too_large"] == 3, what="drops counted")
    c = h.metrics.counters
    assert c["mqtt_dropped_malformed_json"] >= 12  # 4 x 3, + deep nesting
    assert c["mqtt_dropped_not_utf8"] == 3
    assert c["mqtt_dropped_wrong_dialect"] >= 3
    assert c["mqtt_dropped_wrong_type"] >= 6
    # 'somewhere/else' matches no profile; so does no subscription, so the broker never sends it
    bad_time = h.of("elevator_status", "bad lift")
    assert len(bad_time) == 3 and all(p.fields["time_corrected"] is True for p in bad_time)
    assert all(p.fields["device_time"].startswith("1970") for p in bad_time)
    # each kind logged once for the device, though it happened three times
    for reason in ("malformed json", "not utf8", "too large", "wrong dialect"):
        lines = [r for r in caplog.records if "gate-bad" in r.message and reason in r.message]
        assert len(lines) == 1, (reason, [r.message for r in lines])
    assert not [p for p in h.points if p.tags["device"] == "bad gate" and p.measurement != "device_health"]
    await h.stop()
    await pub.stop()


async def test_a_flooding_device_is_limited_and_others_go_through(tmp_path, mosquitto, caplog):
    caplog.set_level(logging.INFO, logger="edge.mqtt.source")
    h = Harness(tmp_path, mosquitto.url, flood_rate=20, flood_burst=50)
    h.add("flood", "hikvision-isapi", "gate-flood")
    h.add("calm", "hikvision-isapi", "gate-calm")
    await h.start()
    pub = await _publisher(mosquitto.url)
    rng = random.Random(6)
    futs = []
    calm = 0
    for i in range(1500):
        futs.append(pub.publish_nowait(*pl.facegate_message("hikvision-isapi", "gate-flood", rng, NOW(),
                                                            ms_time=True)))
        if i % 50 == 0:
            futs.append(pub.publish_nowait(*pl.facegate_message("hikvision-isapi", "gate-calm", rng, NOW())))
            calm += 1
    await asyncio.gather(*futs)
    await until(lambda: len(h.of("gate_event", "calm")) + len(h.of("gate_alarm", "calm")) == calm,
                 what="every calm event")
    await until(lambda: h.metrics.counters["mqtt_messages"] >= 1500 + calm, what="all seen")
    flood_kept = len(h.of("gate_event", "flood")) + len(h.of("gate_alarm", "flood"))
    dropped = h.metrics.counters["mqtt_dropped_flood"]
    assert dropped > 1000 and flood_kept + dropped == 1500
    assert len([r for r in caplog.records if "dropped" in r.message and "flood" in r.message]) == 1
    await h.stop()
    await pub.stop()


async def test_a_backlog_kept_by_the_broker_is_not_a_flood(tmp_path, mosquitto):
    """Hours of a gate's events, queued while the agent was down, arrive in one burst: they span
    hours of device time, so none is dropped as a flood (a drop would ack them away: lost)."""
    h = Harness(tmp_path, mosquitto.url, flood_rate=20, flood_burst=50)
    h.add("busy", "hikvision-isapi", "gate-busy")
    await h.start()
    pub = await _publisher(mosquitto.url)
    rng = random.Random(8)
    start = NOW() - timedelta(hours=2)
    futs = [pub.publish_nowait(*pl.facegate_message("hikvision-isapi", "gate-busy", rng,
                                                    start + timedelta(seconds=2 * i), ms_time=True))
            for i in range(1500)]
    await asyncio.gather(*futs)
    await until(lambda: h.metrics.counters["mqtt_messages"] >= 1500, what="all seen")
    await until(lambda: len(h.of("gate_event", "busy")) + len(h.of("gate_alarm", "busy")) == 1500,
                 what="every backlog event kept")
    assert h.metrics.counters["mqtt_dropped_flood"] == 0
    await h.stop()
    await pub.stop()


@pytest.fixture
def unlimited_broker(tmp_path):
    """A box broker that sends a client every queued message without waiting for acks."""
    srv = Mosquitto(tmp_path / "broker", extra_conf="max_inflight_messages 0\n").start()
    yield srv
    srv.stop()


async def test_a_backlog_is_taken_as_fast_as_it_is_committed_not_all_into_memory(tmp_path, unlimited_broker):
    """A box back after a day away has hundreds of thousands of events queued, and Mosquitto 2.0
    pushes its whole queue once the first acks arrive, whatever its max_inflight_messages (here:
    no limit at all): the source stops reading while it holds too many unacknowledged messages,
    and takes the rest as commits catch up. Nothing is lost."""
    mosquitto = unlimited_broker
    h = Harness(tmp_path, mosquitto.url, max_held=300)
    h.add("g1", "generic-facegate", "gate-1")
    await h.start()
    await h.stop()  # the persistent session now holds what is published while we are away
    pub = await _publisher(mosquitto.url)
    rng = random.Random(11)
    start = NOW() - timedelta(hours=3)
    await asyncio.gather(*[pub.publish_nowait(*pl.facegate_message("generic-facegate", "gate-1", rng,
                                                                   start + timedelta(seconds=i)))
                           for i in range(3000)])
    h.gate = asyncio.Event()  # the outbox is slow: commits wait
    await h.start()
    await until(lambda: h.source.mqtt.reading_paused, what="reading paused")
    await asyncio.sleep(1.5)
    taken = h.metrics.counters["mqtt_messages"]
    # what it holds: its allowance, plus what the read in progress brought (one read: 256 KB)
    assert 300 <= taken <= 300 + 256 * 1024 // 300, taken
    assert h.source.mqtt.connected.is_set()  # paused, not disconnected
    h.gate.set()
    await until(lambda: h.metrics.counters["mqtt_messages_committed"] >= 3000, timeout=30, what="all committed")
    assert len(h.of("gate_event")) + len(h.of("gate_alarm")) == 3000  # each once
    await asyncio.sleep(1.2)  # the watchdog copies the pauses into the metrics (status.json)
    assert h.metrics.counters["mqtt_read_pauses"] >= 2  # paused again as the backlog went on
    assert not h.source.mqtt.reading_paused
    await h.stop()
    await pub.stop()


class _Analytics:
    """Stands in for edge/analytics/service.py's enrich_gate_event (an in-process collaborator)."""

    def __init__(self, fail_every: int = 0) -> None:
        self.snapshots: list[bytes] = []
        self.fail_every = fail_every

    async def enrich_gate_event(self, points, snapshot: bytes) -> None:
        self.snapshots.append(snapshot)
        if self.fail_every and len(self.snapshots) % self.fail_every == 0:
            raise RuntimeError("detector crashed (test)")
        await asyncio.sleep(0.01)  # detection takes a while; other messages go on meanwhile
        for p in points:
            if p.measurement == "gate_event":
                p.fields["face_count"] = 1


async def test_snapshots_go_to_analytics_only_and_a_failure_costs_no_event(tmp_path, mosquitto):
    h = Harness(tmp_path, mosquitto.url, analytics=_Analytics(fail_every=3))
    h.add("东门", "generic-facegate", "gate-1")
    await h.start()
    pub = await _publisher(mosquitto.url)
    rng = random.Random(8)
    pic = pl.TINY_JPEG + b"unique-marker"
    faces = 0
    futs = []
    while faces < 9:
        topic, payload = pl.facegate_message("generic-facegate", "gate-1", rng, NOW(), snapshot=pic)
        if b'"Photo"' in payload:
            faces += 1
        if "/record" in topic:
            futs.append(pub.publish_nowait(topic, payload))
    await asyncio.gather(*futs)
    await until(lambda: h.metrics.counters["mqtt_messages_committed"] == len(futs), what="all committed")
    an = h.source.analytics
    assert len(an.snapshots) == faces and all(s == pic for s in an.snapshots)
    assert h.metrics.counters["mqtt_enrich_errors"] == 3
    events = h.of("gate_event")
    assert len(events) == len(futs)
    assert sum(1 for p in events if p.fields.get("face_count") == 1) == faces - 3
    assert "unique-marker" not in repr(h.points) and "/9j/" not in repr(h.points)
    await h.stop()
    await pub.stop()


async def test_missing_and_mistyped_fields(tmp_path, mosquitto, caplog):
    caplog.set_level(logging.INFO, logger="edge.mqtt.source")
    h = Harness(tmp_path, mosquitto.url)
    h.add("lift", "gbt24476-elevator", "lift-1")
    h.add("door", "dahua-vto2mqtt", "DH1")
    await h.start()
    pub = await _publisher(mosquitto.url)
    ts = datetime.now(timezone.utc).isoformat()
    for _ in range(2):
        # missing: nothing recognisable -> unknown_message; Dahua without serialNumber -> missing_field
        await pub.publish("elevator/lift-1/status", b'{"registration_code":"lift-1"}')
        await pub.publish("DahuaVTO/AccessControl/Event", b'{"Action":"Pulse","Code":"AccessControl","Data":{}}')
        # mistyped optional fields: the point is kept without them, with a warning logged once
        await pub.publish("elevator/lift-1/status", json.dumps(
            {"registration_code": "lift-1", "ts": ts, "service_mode": "banana", "car_position": {"a": 1}}).encode())
    await pub.publish(*pl.facegate_message("dahua-vto2mqtt", "DH1", random.Random(1), NOW()))
    await until(lambda: h.of("gate_event", "door") or h.of("gate_alarm", "door"), what="the good Dahua event")
    await until(lambda: len(h.of("elevator_status", "lift")) == 2, what="mistyped statuses kept")
    c = h.metrics.counters
    assert c["mqtt_dropped_unknown_message"] == 2 and c["mqtt_dropped_missing_field"] == 2
    assert all("car_floor" not in p.fields and p.fields["service_mode"] == "unknown"
               for p in h.of("elevator_status", "lift"))
    assert c["mqtt_warnings"] >= 4
    assert sum("car_floor: skipped" in r.message for r in caplog.records) == 1
    assert sum("missing field" in r.message for r in caplog.records) == 1
    await h.stop()
    await pub.stop()


def test_replayed_message_keeps_its_timestamp_and_registry_tags(tmp_path):
    """The per-message hot path (no broker needed): registry tags on every point, the payload
    fingerprint below the millisecond (same message -> same time, another message of the same
    second -> another time), device times with sub-ms digits kept, and a registry change seen."""
    import paho.mqtt.client as paho

    from edge.mqtt.source import _stable_time

    h = Harness(tmp_path, "mqtt://127.0.0.1:1")
    h.add("gate A", "hikvision-isapi", "gate-1", building="3")
    src = MqttSource(h.cfg, ProfileLibrary(), h.registry, h.emit, h.metrics)
    src.reconcile(h.registry.all())

    def msg(payload: bytes) -> paho.MQTTMessage:
        m = paho.MQTTMessage(mid=1, topic=b"hikvision/gate-1/event")
        m.payload, m.qos = payload, 1
        return m

    t = datetime(2026, 3, 2, 8, 0, 1, tzinfo=timezone.utc)
    rng = random.Random(5)
    a = pl.facegate_message("hikvision-isapi", "gate-1", rng, t)[1]
    b = pl.facegate_message("hikvision-isapi", "gate-1", rng, t)[1]
    now = time.time_ns()
    first = src._handle(msg(a), now)
    again = src._handle(msg(a), now + 5)
    other = src._handle(msg(b), now)
    assert first and again and other
    ev = [p for p in first[0] if p.measurement == "gate_event"][0]
    assert ev.time_ns == _stable_time(int(t.timestamp()) * 10**9, a) != int(t.timestamp()) * 10**9
    assert [p.time_ns for p in again[0] if p.measurement == "gate_event"] == [ev.time_ns]
    assert [p.time_ns for p in other[0] if p.measurement == "gate_event"] != [ev.time_ns]
    assert ev.tags["site"] == "sunny-garden" and ev.tags["device"] == "gate A" and ev.tags["building"] == "3"
    # the first message also said the device is online, with the same tags at the receive time
    health = [p for p in first[0] if p.measurement == "device_health"]
    assert health and health[0].time_ns == now and health[0].tags.items() <= ev.tags.items()
    # sub-millisecond device time: kept as the device gave it
    d = json.loads(a)
    d["dateTime"] = "2026-03-02T16:00:01.123456+08:00"
    sub = src._handle(msg(json.dumps(d).encode()), now)
    assert sub and [p.time_ns for p in sub[0]] == [int(t.timestamp()) * 10**9 + 123_456_000]
    # a registry change (new building) reaches the points of the next message
    h.registry.remove("gate A")
    h.add("gate A", "hikvision-isapi", "gate-1", building="4")
    src.reconcile(h.registry.all())
    moved = src._handle(msg(b), now)
    assert moved and {p.tags["building"] for p in moved[0]} == {"4"}
    h.registry.close()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 100, allow_nan=False), max_size=60), st.floats(0.1, 50), st.floats(1, 20))
def test_flood_bucket_is_a_token_bucket_on_the_messages_own_clock(times, rate, burst):
    from edge.mqtt.source import _Bucket

    b, tokens, last = _Bucket(burst), burst, None
    for t in times:  # the rule written plainly: refill by the time elapsed (never backwards), cap at burst
        if last is not None:
            tokens = min(burst, tokens + max(0.0, t - last) * rate)
        last = t if last is None else max(last, t)
        expect = tokens >= 1
        if expect:
            tokens -= 1
        assert b.take(rate, burst, t) == expect
