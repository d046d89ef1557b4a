"""AnalyticsService in process: simulated meter days through the worker thread, care watch with
consent, face counting on gate events, and its promises to the agent (never block, never raise,
clean shutdown, no OpenCV/onnxruntime unless switched on). emit is a list collector."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from common.points import Point, Priority
from edge.analytics.anomaly import LoadAnomalyModel
from edge.analytics.carewatch import DEFAULT_TZ
from edge.analytics.service import AnalyticsService, assemble_day
from edge.config import EdgeConfig
from edge.metrics import Metrics
from edge.registry import Device, Transport
from simulators.households import Household, inject_anomaly

DATA = Path(__file__).parent / "data"
START = datetime(2024, 3, 4, tzinfo=DEFAULT_TZ)   # a Monday, local midnight
TAGS = {"site": "sunny", "gateway": "gw-01"}


def config(tmp_path, **analytics) -> EdgeConfig:
    return EdgeConfig(site="sunny", gateway="gw-01", state_dir=str(tmp_path),
                      uplink={"url": "mqtt://127.0.0.1:1"}, analytics=analytics)


def device(name: str, care: bool = False, building: str = "5") -> Device:
    return Device(id=name, profile="chint-ddsu666", transport=Transport("tcp", host="127.0.0.1", port=502),
                  tags={"building": building}, options={"care_watch": True} if care else {})


class Harness:
    """A service with a fake clock and an emit that collects what would go to the outbox."""

    def __init__(self, tmp_path, **kw) -> None:
        analytics = {k: kw.pop(k) for k in ("faces", "meter_anomaly", "care_watch") if k in kw}
        self.now = START.timestamp()
        self.emitted: list[Point] = []
        self.metrics = Metrics()
        self.svc = AnalyticsService(config(tmp_path, **analytics), self._emit, self.metrics,
                                    clock=lambda: self.now, **kw)
        self.task: asyncio.Task | None = None

    async def _emit(self, points: list[Point]) -> None:
        self.emitted.extend(points)

    async def __aenter__(self) -> "Harness":
        self.task = asyncio.create_task(self.svc.run())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    def of(self, measurement: str) -> list[Point]:
        return [p for p in self.emitted if p.measurement == measurement]

    async def feed_day(self, day: int, profiles: dict[str, list[float]], skip: dict[str, set] | None = None,
                       per_quarter: int = 3, devices: dict[str, Device] | None = None) -> None:
        """Meter points of one simulated day, one outbox commit per poll round (every 5 min),
        then the clock moves to 00:06 of the next day and the worker is flushed."""
        start = START + timedelta(days=day)
        for q in range(96):
            for k in range(per_quarter):
                ts = int((start + timedelta(minutes=15 * q + 15 * k / per_quarter)).timestamp() * 1e9)
                batch = [Point("meter", {**TAGS, "device": dev, "building": "5"},
                               {"active_power": prof[q], "energy_import": 1000.0}, ts)
                         for dev, prof in profiles.items() if q not in (skip or {}).get(dev, set())]
                self.svc.observe(batch)
            if q % 24 == 0:
                await asyncio.sleep(0)       # let the loop breathe, as a real agent would
        await self.svc.flush()               # the worker sees the day while the clock is in it
        self.now = (start + timedelta(days=1, minutes=6)).timestamp()
        await self.svc.flush()


def profiles(seeds: dict[str, int], rng: random.Random) -> dict[str, list[float]]:
    return {dev: Household(s).day_profile(rng) for dev, s in seeds.items()}


# -- meter anomalies ---------------------------------------------------------------------------

async def test_each_meter_day_is_scored_once_after_midnight(tmp_path):
    model = LoadAnomalyModel.load()
    rng = random.Random(7)
    async with Harness(tmp_path, meter_anomaly=True) as h:
        h.svc.reconcile([device("A"), device("B")])
        day0 = profiles({"A": 11, "B": 12}, rng)
        await h.feed_day(0, day0)
        pts = h.of("meter_anomaly")
        assert sorted(p.tags["device"] for p in pts) == ["A", "B"]
        for p in pts:
            assert p.tags == {**TAGS, "device": p.tags["device"], "building": "5"}
            assert p.time_ns == int(START.timestamp()) * 10**9          # the day's local midnight
            assert p.priority == Priority.TELEMETRY
            assert p.fields["filled_quarters"] == 0
            assert p.fields["score"] == pytest.approx(model.score(day0[p.tags["device"]]), abs=1e-3)
            assert p.fields["flag"] is False and p.fields["threshold"] == pytest.approx(model.threshold, abs=1e-3)
        # day 1: B's supply is cut all day
        day1 = profiles({"A": 11, "B": 12}, rng)
        day1["B"] = inject_anomaly(day1["B"], "zero", rng)
        await h.feed_day(1, day1)
        pts = {p.tags["device"]: p for p in h.of("meter_anomaly")[2:]}
        assert pts["B"].fields["flag"] is True and pts["B"].fields["score"] > model.threshold
        assert pts["A"].fields["flag"] is False
        assert pts["B"].time_ns == int((START + timedelta(days=1)).timestamp()) * 10**9
        # a second tick does not score the same day again
        await h.svc.flush()
        assert len(h.of("meter_anomaly")) == 4
    assert h.metrics.counters["analytics_days_scored"] == 4
    assert h.metrics.counters["analytics_days_flagged"] == 1


async def test_day_is_judged_only_after_midnight_plus_grace(tmp_path):
    rng = random.Random(3)
    async with Harness(tmp_path, meter_anomaly=True, score_delay_s=300) as h:
        prof = profiles({"A": 5}, rng)
        for q in range(96):
            ts = int((START + timedelta(minutes=15 * q)).timestamp() * 1e9)
            h.svc.observe([Point("meter", {**TAGS, "device": "A"}, {"active_power": prof["A"][q]}, ts)])
        await h.svc.flush()
        for minutes_after_midnight, expected in ((-1, 0), (4, 0), (6, 1)):
            h.now = (START + timedelta(days=1, minutes=minutes_after_midnight)).timestamp()
            await h.svc.flush()
            assert len(h.of("meter_anomaly")) == expected, minutes_after_midnight


async def test_gaps_small_filled_large_skipped_and_late_points_counted(tmp_path):
    rng = random.Random(4)
    async with Harness(tmp_path, meter_anomaly=True) as h:
        day = profiles({"small": 1, "large": 2, "full": 3}, rng)
        await h.feed_day(0, day, skip={"small": {40, 41}, "large": set(range(40, 52))})
        pts = {p.tags["device"]: p for p in h.of("meter_anomaly")}
        assert set(pts) == {"small", "full"}           # 3 hours missing: not judged
        assert pts["small"].fields["filled_quarters"] == 2
        assert h.metrics.counters["analytics_days_skipped_gaps"] == 1
        # a point of the judged day arriving late (backlog replay) changes nothing
        late = int((START + timedelta(hours=23)).timestamp() * 1e9)
        h.svc.observe([Point("meter", {**TAGS, "device": "full"}, {"active_power": 9999.0}, late)])
        await h.svc.flush()
        assert len(h.of("meter_anomaly")) == 2
        assert h.metrics.counters["analytics_late_samples"] == 1


async def test_first_partial_day_is_not_judged(tmp_path):
    rng = random.Random(5)
    async with Harness(tmp_path, meter_anomaly=True) as h:
        # the agent started at noon: half a day is not a day
        await h.feed_day(0, profiles({"A": 1}, rng), skip={"A": set(range(48))})
        assert h.of("meter_anomaly") == []
        await h.feed_day(1, profiles({"A": 1}, rng))
        assert len(h.of("meter_anomaly")) == 1


def test_assemble_day_interpolates_and_refuses():
    sums, counts = [100.0 * q for q in range(96)], [1] * 96
    counts[10] = counts[11] = 0
    day, filled = assemble_day(sums, counts, max_fill=4)
    assert filled == 2 and day[10] == pytest.approx(1000) and day[11] == pytest.approx(1100)
    counts[0] = 0           # at the edge: nearest value
    day, _ = assemble_day(sums, counts, max_fill=4)
    assert day[0] == pytest.approx(100)
    assert assemble_day(sums, [0] * 96, max_fill=96) == (None, 96)
    assert assemble_day(sums, counts, max_fill=2)[0] is None


# -- care watch ----------------------------------------------------------------------------------

async def test_care_alert_only_for_consented_household(tmp_path, caplog):
    """Two identical elderly households; only A consented. Both go quiet on day 9 at 10:00."""
    seed = next(s for s in range(2000, 3000) if Household(s).kind == "elderly")
    caplog.set_level(logging.WARNING, logger="edge.analytics.service")
    async with Harness(tmp_path, care_watch=True) as h:
        h.svc.reconcile([device("A", care=True), device("B", care=False)])
        rng = random.Random(seed)
        hh = Household(seed)
        for d in range(10):
            prof = hh.day_profile(rng)
            if d == 9:
                prof = prof[:40] + [hh.base_w * rng.gauss(1, 0.05) for _ in range(56)]
            await h.feed_day(d, {"A": prof, "B": prof})
        alerts = h.of("care_alert")
        assert len(alerts) == 1, alerts
        a = alerts[0]
        assert a.tags == {**TAGS, "device": "A", "building": "5"} and a.priority == Priority.ALARM
        assert a.fields["reason"] == "no_activity" and a.fields["hours_quiet"] == 3
        assert a.fields["observed_w"] < a.fields["expected_w"] / 2
        assert a.fields["since"].startswith("2024-03-13T1")
        assert a.time_ns > int((START + timedelta(days=9, hours=10)).timestamp() * 1e9)
        assert not h.of("meter_anomaly")                        # not switched on
    lines = [r.getMessage() for r in caplog.records if "care watch" in r.getMessage()]
    assert len(lines) == 1 and "A has been quiet since 2024-03-13 1" in lines[0]


async def test_withdrawn_consent_deletes_the_watch(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="edge.analytics.service")
    async with Harness(tmp_path, care_watch=True) as h:
        h.svc.reconcile([device("A", care=True)])
        await h.feed_day(0, profiles({"A": 1}, random.Random(1)))
        assert "A" in h.svc._watches
        h.svc.reconcile([device("A", care=False)])
        await h.svc.flush()
        assert h.svc._watches == {}
        h.svc.reconcile([device("A", care=True)])
        await h.svc.flush()
        assert h.svc._watches["A"].learning          # starts over: nothing kept from before
    msgs = " ".join(r.getMessage() for r in caplog.records)
    assert "learnt profile is deleted" in msgs and "enrolled for A" in msgs


# -- the promises to the agent -------------------------------------------------------------------

def test_observe_never_blocks_or_raises(tmp_path):
    h = Harness(tmp_path, meter_anomaly=True, care_watch=True, queue_max=2)   # worker not running
    ts = int(START.timestamp() * 1e9)
    good = Point("meter", {**TAGS, "device": "A"}, {"active_power": 100.0}, ts)
    for _ in range(5):
        h.svc.observe([good])
    assert h.metrics.counters["analytics_skipped_queue_full"] == 3
    # points analytics cannot use are ignored, quietly
    for bad in ([Point("meter", {**TAGS}, {"active_power": 1.0}, ts)],
                [Point("meter", {**TAGS, "device": "A"}, {"active_power": "x"}, ts)],
                [Point("meter", {**TAGS, "device": "A"}, {"active_power": True}, ts)],
                [Point("gate_event", {**TAGS, "device": "A"}, {"result": "granted"}, ts)],
                []):
        h.svc.observe(bad)
    # not even garbage makes it raise
    h.svc.observe([None, 42])   # type: ignore[list-item]
    h.svc.observe(None)         # type: ignore[arg-type]
    assert h.metrics.counters["analytics_errors"] == 2
    assert h.svc._queue.qsize() == 2


async def test_nan_samples_are_counted_not_fatal(tmp_path):
    async with Harness(tmp_path, meter_anomaly=True, care_watch=True) as h:
        h.svc.reconcile([device("A", care=True)])
        ts = int(START.timestamp() * 1e9)
        h.svc.observe([Point("meter", {**TAGS, "device": "A"}, {"active_power": float("nan")}, ts),
                       Point("meter", {**TAGS, "device": "A"}, {"active_power": float("inf")}, ts + 1)])
        await h.svc.flush()
        assert h.metrics.counters["analytics_bad_samples"] == 2
        assert h.metrics.counters.get("analytics_errors", 0) == 0
        assert h.svc._thread is not None and h.svc._thread.is_alive()


async def test_cancel_stops_threads_and_commits_pending_results(tmp_path):
    h = Harness(tmp_path, meter_anomaly=True, faces=True)
    async with h:
        await h.svc.enrich_gate_event([Point("gate_event", {**TAGS, "device": "g"}, {"result": "granted"}, 1)],
                                      (DATA / "astronaut.jpg").read_bytes())
        thread, pool = h.svc._thread, h.svc._faces_pool
        # a result produced just before shutdown must still reach the outbox
        h.svc._out.append([Point("care_alert", {**TAGS, "device": "A"}, {"reason": "no_power"}, 5)])
    assert h.task is not None and h.task.done()
    assert thread is not None and not thread.is_alive()
    assert pool is not None and pool._shutdown and h.svc._faces_pool is None
    assert [p.measurement for p in h.emitted] == ["care_alert"]


def _gate(result: str | None = "granted") -> list[Point]:
    fields = {"method": "face"} if result is None else {"method": "face", "result": result}
    return [Point("gate_event", {**TAGS, "device": "gate-1", "event": "access"}, fields, 1)]


@pytest.mark.parametrize("image,result,count,tailgating", [
    ("two_faces.jpg", "granted", 2, True),
    ("astronaut.jpg", "granted", 1, False),
    ("coffee.jpg", "granted", 0, False),
    ("two_faces.jpg", "denied", 2, False),
    ("two_faces.jpg", None, 2, None),
])
async def test_gate_event_gets_face_count_and_tailgating(tmp_path, image, result, count, tailgating):
    async with Harness(tmp_path, faces=True) as h:
        pts = _gate(result)
        await h.svc.enrich_gate_event(pts, (DATA / image).read_bytes())
        assert pts[0].fields["face_count"] == count
        assert pts[0].fields.get("tailgating") is tailgating
        # only numbers and flags come out: no pixels, no boxes
        assert all(isinstance(v, (int, bool, str)) for v in pts[0].fields.values())
    assert h.metrics.counters["analytics_faces_analysed"] == 1
    assert h.metrics.counters.get("analytics_tailgating", 0) == int(bool(tailgating))


@pytest.mark.parametrize("snapshot", [b"\xff\xd8\xff\xe0garbage", b"not a jpeg", (DATA / "astronaut.jpg").read_bytes()[:300]])
async def test_broken_snapshot_leaves_points_unchanged(tmp_path, snapshot):
    async with Harness(tmp_path, faces=True) as h:
        pts = _gate()
        await h.svc.enrich_gate_event(pts, snapshot)
        assert pts[0].fields == {"method": "face", "result": "granted"}
        assert h.metrics.counters["analytics_faces_bad_image"] == 1


async def test_faces_off_busy_or_slow_leave_points_unchanged(tmp_path):
    img = (DATA / "two_faces.jpg").read_bytes()
    async with Harness(tmp_path, meter_anomaly=True) as h:      # faces not switched on
        pts = _gate()
        await h.svc.enrich_gate_event(pts, img)
        assert "face_count" not in pts[0].fields and h.svc._faces_pool is None
    async with Harness(tmp_path, faces=True, faces_max_pending=0) as h:
        pts = _gate()
        await h.svc.enrich_gate_event(pts, img)
        assert "face_count" not in pts[0].fields
        assert h.metrics.counters["analytics_faces_skipped_busy"] == 1
    async with Harness(tmp_path, faces=True, faces_timeout_s=0.0001) as h:
        pts = _gate()
        await h.svc.enrich_gate_event(pts, img)
        assert "face_count" not in pts[0].fields
        assert h.metrics.counters["analytics_faces_timeout"] == 1
    # and a gate event with no snapshot, or no gate_event point, is simply passed through
    async with Harness(tmp_path, faces=True) as h:
        pts = _gate()
        await h.svc.enrich_gate_event(pts, None)
        await h.svc.enrich_gate_event([], img)
        assert "face_count" not in pts[0].fields


async def test_gate_events_do_not_wait_for_each_other_beyond_the_bound(tmp_path):
    """Many snapshots at once: at most faces_max_pending are analysed, the rest skipped at once."""
    img = (DATA / "astronaut.jpg").read_bytes()
    async with Harness(tmp_path, faces=True, faces_max_pending=2) as h:
        batches = [_gate() for _ in range(6)]
        await asyncio.gather(*(h.svc.enrich_gate_event(b, img) for b in batches))
        counted = sum("face_count" in b[0].fields for b in batches)
        assert counted == 2 and h.metrics.counters["analytics_faces_skipped_busy"] == 4
        assert h.svc._faces_pending == 0 or await _settled(h)


async def _settled(h: Harness) -> bool:
    for _ in range(100):
        if h.svc._faces_pending == 0:
            return True
        await asyncio.sleep(0.01)
    return False


_IMPORT_CHECK = """
import json, sys
from edge.agent import Agent
from edge.config import EdgeConfig
cfg = EdgeConfig(site="s", gateway="g", state_dir=sys.argv[1], uplink={"url": "mqtt://127.0.0.1:1"},
                 analytics=json.loads(sys.argv[2]))
agent = Agent(cfg)
print(json.dumps({"cv2": "cv2" in sys.modules, "onnxruntime": "onnxruntime" in sys.modules,
                  "service": agent.analytics is not None}))
"""


@pytest.mark.parametrize("analytics,service", [({}, False), ({"care_watch": True}, True),
                                               ({"faces": True, "meter_anomaly": True}, True)])
def test_agent_starts_without_opencv_or_onnxruntime(tmp_path, analytics, service):
    """A meter-only agent never loads them; with analytics on, they load on their threads, later."""
    r = subprocess.run([sys.executable, "-c", _IMPORT_CHECK, str(tmp_path), json.dumps(analytics)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {"cv2": False, "onnxruntime": False, "service": service}


async def test_real_agent_scores_meter_days_into_its_outbox(tmp_path):
    """The wiring in edge/agent.py: registry -> reconcile, emit -> observe, results -> outbox."""
    import sqlite3
    import time as _time

    from edge.agent import Agent
    from edge.registry import Registry

    cfg = EdgeConfig(site="sunny", gateway="gw-01", state_dir=str(tmp_path / "state"),
                     uplink={"url": "mqtt://127.0.0.1:1"}, registry_reload_s=0.1,
                     analytics={"meter_anomaly": True, "care_watch": True})
    cfg.state_path.mkdir(parents=True)
    reg = Registry(cfg.registry_db)
    reg.add(device("5幢1单元电表", care=True))
    reg.close()
    agent = Agent(cfg)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        for _ in range(100):
            if "5幢1单元电表" in agent.analytics._watches:
                break
            await asyncio.sleep(0.05)
        assert "5幢1单元电表" in agent.analytics._watches        # consent seen through the registry
        # two complete days that ended before now (the real clock): one commit per day
        today = datetime.fromtimestamp(_time.time(), DEFAULT_TZ).replace(hour=0, minute=0, second=0, microsecond=0)
        rng = random.Random(9)
        for back in (3, 2):
            start = today - timedelta(days=back)
            prof = Household(21).day_profile(rng)
            await agent.emit([Point("meter", {**TAGS, "device": "5幢1单元电表", "building": "5"},
                                    {"active_power": prof[q], "energy_import": 10.0 + q},
                                    int((start + timedelta(minutes=15 * q + 1)).timestamp() * 1e9))
                              for q in range(96)])
        await agent.analytics.flush()
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
    db = sqlite3.connect(cfg.outbox_db)
    bodies = [json.loads(b) for (b,) in db.execute("SELECT body FROM points")]
    db.close()
    scored = [b for b in bodies if b[0] == "meter_anomaly"]
    assert len(scored) == 2, [(b[2]["score"], b[3]) for b in scored]
    assert {tuple(sorted(b[1].items())) for b in scored} == {
        (("building", "5"), ("device", "5幢1单元电表"), ("gateway", "gw-01"), ("site", "sunny"))}
    assert sorted(b[3] for b in scored) == [int((today - timedelta(days=d)).timestamp()) * 10**9 for d in (3, 2)]
    assert all(set(b[2]) >= {"score", "flag", "threshold"} for b in scored)
    assert agent.analytics._thread is not None and not agent.analytics._thread.is_alive()


async def test_learnt_routine_survives_a_restart_and_is_deleted_on_withdrawal(tmp_path):
    seed = next(s for s in range(2000, 3000) if Household(s).kind == "elderly")
    rng, hh = random.Random(seed), Household(seed)
    async with Harness(tmp_path, care_watch=True) as h:
        h.svc.reconcile([device("A", care=True), device("B")])
        for d in range(8):
            await h.feed_day(d, {"A": hh.day_profile(rng), "B": hh.day_profile(rng)})
        assert not h.svc._watches["A"].learning
    saved = json.loads((tmp_path / "carewatch.json").read_text())
    assert set(saved["watches"]) == {"A"}            # nothing about households without consent
    assert (tmp_path / "carewatch.json").stat().st_mode & 0o077 == 0
    # a new agent process: the watch resumes, and alerts on the first quiet day
    async with Harness(tmp_path, care_watch=True) as h2:
        h2.now = (START + timedelta(days=8)).timestamp()
        h2.svc.reconcile([device("A", care=True)])
        await h2.svc.flush()
        assert not h2.svc._watches["A"].learning
        prof = hh.day_profile(rng)
        await h2.feed_day(8, {"A": prof[:40] + [hh.base_w] * 56})
        assert len(h2.of("care_alert")) == 1
        h2.svc.reconcile([device("A", care=False)])
        await h2.svc.flush()
    assert not (tmp_path / "carewatch.json").exists()


async def test_unreadable_care_file_means_learning_again(tmp_path, caplog):
    (tmp_path / "carewatch.json").write_text("{not json")
    async with Harness(tmp_path, care_watch=True) as h:
        h.svc.reconcile([device("A", care=True)])
        await h.svc.flush()
        assert h.svc._watches["A"].learning
    assert "cannot read" in caplog.text


async def test_a_clock_gone_wrong_cannot_grow_memory(tmp_path):
    async with Harness(tmp_path, meter_anomaly=True) as h:
        for d in range(6):      # six different days, none of them over yet
            ts = int((START + timedelta(days=d)).timestamp() * 1e9)
            h.svc.observe([Point("meter", {**TAGS, "device": "A"}, {"active_power": 10.0}, ts)])
        await h.svc.flush()
        assert len(h.svc._days["A"]) == 3
        assert h.metrics.counters["analytics_late_samples"] == 3


@pytest.mark.integration
async def test_gate_snapshots_through_the_mqtt_source_on_a_real_broker(tmp_path, mosquitto):
    """A face terminal publishes records with base64 snapshots to Mosquitto; the MQTT source asks
    the service to count faces before committing. No picture reaches a point."""
    from common.mqtt import AsyncMqtt, MqttUrl
    from edge.config import BrokerConfig
    from edge.mqtt.source import MqttSource
    from edge.profiles import ProfileLibrary
    from edge.registry import Registry
    from simulators import payloads as pl

    cfg = EdgeConfig(site="sunny", gateway="gw-01", state_dir=str(tmp_path / "state"),
                     local_broker=BrokerConfig(url=mosquitto.url), uplink={"url": mosquitto.url},
                     analytics={"faces": True})
    cfg.state_path.mkdir(parents=True)
    reg = Registry(cfg.registry_db)
    reg.add(Device(id="东门", profile="generic-facegate", transport=Transport("mqtt", mqtt_id="gate-2")))
    collected: list[Point] = []

    async def emit(points: list[Point], *, stamped: bool = False) -> None:
        collected.extend(points)

    metrics = Metrics()
    svc = AnalyticsService(cfg, emit, metrics, faces_max_pending=16)   # all 9 arrive at once
    src = MqttSource(cfg, ProfileLibrary(cfg.profiles_dirs), reg, emit, metrics, analytics=svc)
    src.reconcile(reg.all())
    tasks = [asyncio.create_task(svc.run()), asyncio.create_task(src.run())]
    pub = AsyncMqtt(MqttUrl.parse(mosquitto.url), f"test-pub-{random.getrandbits(32):x}")
    try:
        for _ in range(100):
            if src.mqtt is not None and src.mqtt.connected.is_set():
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        assert await pub.start()
        rng = random.Random(3)
        images = [(DATA / n).read_bytes() for n in ("two_faces.jpg", "astronaut.jpg", "coffee.jpg")] * 3
        for img in images:
            topic, payload = pl.facegate_message("generic-facegate", "gate-2", rng,
                                                 datetime.now(DEFAULT_TZ), snapshot=img)
            await pub.publish(topic, payload)
        for _ in range(300):
            if metrics.counters["mqtt_messages_committed"] >= len(images):
                break
            await asyncio.sleep(0.05)
    finally:
        await pub.stop()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        reg.close()
    events = [p for p in collected if p.measurement == "gate_event"]
    assert len(events) == len(images)
    assert sorted(p.fields["face_count"] for p in events) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for p in events:
        if "result" in p.fields:
            assert p.fields["tailgating"] is (p.fields["result"] == "granted" and p.fields["face_count"] >= 2)
    assert any(p.fields.get("tailgating") for p in events)
    blob = repr(collected)
    assert "/9j/" not in blob and "Photo" not in blob and "\\xff\\xd8" not in blob   # no JPEG, raw or base64
    assert metrics.counters["analytics_faces_analysed"] == len(images)


async def test_optional_settings_time_zone_and_threshold(tmp_path, caplog):
    """analytics.time_zone / analytics.anomaly_threshold are used when the config has them."""
    from types import SimpleNamespace
    from zoneinfo import ZoneInfo

    def cfg(zone):
        return SimpleNamespace(state_dir=str(tmp_path), analytics=SimpleNamespace(
            faces=False, meter_anomaly=True, care_watch=False, time_zone=zone, anomaly_threshold=0.01))

    out: list[Point] = []

    async def emit(points, *, stamped=False):
        out.extend(points)

    berlin = ZoneInfo("Europe/Berlin")
    now = [datetime(2024, 3, 5, 0, 6, tzinfo=berlin).timestamp()]
    svc = AnalyticsService(cfg("Europe/Berlin"), emit, Metrics(), clock=lambda: now[0])
    assert svc.tz == berlin
    task = asyncio.create_task(svc.run())
    try:
        day = Household(3).day_profile(random.Random(3))
        start = datetime(2024, 3, 4, tzinfo=berlin)
        svc.observe([Point("meter", {**TAGS, "device": "A"}, {"active_power": day[q]},
                           int((start + timedelta(minutes=15 * q)).timestamp() * 1e9)) for q in range(96)])
        await svc.flush()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    (p,) = out
    assert p.time_ns == int(start.timestamp()) * 10**9          # Berlin midnight
    assert p.fields["threshold"] == 0.01 and p.fields["flag"] is True
    assert AnalyticsService(cfg("Mars/Olympus"), emit, Metrics()).tz == DEFAULT_TZ
    assert "unknown time zone 'Mars/Olympus'" in caplog.text
