"""The analytics service inside the edge agent: faces on gate snapshots, meter-day anomaly scores,
care watch. Wiring (edge/agent.py, edge/mqtt/source.py):

  svc = AnalyticsService(cfg, agent.emit, agent.metrics)   # cheap: loads no model
  task = create_task(svc.run())       # worker thread + hands its results to emit(); cancel to stop
  svc.reconcile(devices)              # on every registry change (care-watch consent lives there)
  svc.observe(points)                 # after every outbox commit; never blocks, never raises
  await svc.enrich_gate_event(points, snapshot)   # MQTT source, before it emits a gate event

Why a worker thread: ingest and polling must never wait on a model. observe() only filters the
meter points and puts a compact tuple list on a bounded queue (full: counted and skipped); the
worker assembles quarter-hour days, feeds the care watches and scores finished days; its output
points go back to the event loop, which commits them with emit(). Face detection runs on its own
single-thread pool (OpenCV and onnxruntime release the GIL), with a bound on pending snapshots.

No OpenCV or onnxruntime is imported here: the face module is imported on the faces thread, the
anomaly model loaded on the worker thread, and only when their analytic is switched on.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import json
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError
from typing import Any, Awaitable, Callable, Iterable

from common.points import LOCATION_TAGS, REQUIRED_TAGS, Point, Priority
from edge.analytics.carewatch import DEFAULT_TZ, CareAlert, CareWatch, CareWatchConfig
from edge.metrics import Metrics

log = logging.getLogger(__name__)

QUARTERS = 96
_QUARTER_NS = 15 * 60 * 1_000_000_000
_COPY_TAGS = REQUIRED_TAGS + LOCATION_TAGS

Emit = Callable[[list[Point]], Awaitable[None]]
#: One meter sample as the worker sees it: device, time (ns), active power (W), tags to copy.
Sample = tuple[str, int, float, dict[str, str]]


@dataclass
class _DayBuf:
    """One meter's samples of one local day, summed per quarter hour."""

    sums: list[float] = field(default_factory=lambda: [0.0] * QUARTERS)
    counts: list[int] = field(default_factory=lambda: [0] * QUARTERS)
    tags: dict[str, str] = field(default_factory=dict)


def assemble_day(sums: list[float], counts: list[int], max_fill: int) -> tuple[list[float] | None, int]:
    """96 quarter-hour means from per-quarter sums and counts. Missing quarters (no sample) are
    filled by straight lines between their neighbours when there are at most `max_fill` of them
    (a few lost polls); with more the day is not judged: (None, missing). Returns (day, filled)."""
    missing = [q for q in range(QUARTERS) if counts[q] == 0]
    if len(missing) > max_fill or len(missing) == QUARTERS:
        return None, len(missing)
    day = [sums[q] / counts[q] if counts[q] else float("nan") for q in range(QUARTERS)]
    present = [q for q in range(QUARTERS) if counts[q]]
    for q in missing:
        lo = max((p for p in present if p < q), default=None)
        hi = min((p for p in present if p > q), default=None)
        if lo is None:
            day[q] = day[hi]          # type: ignore[index]
        elif hi is None:
            day[q] = day[lo]
        else:
            day[q] = day[lo] + (day[hi] - day[lo]) * (q - lo) / (hi - lo)
    return day, len(missing)


def _zone(name: str | None) -> tzinfo:
    if not name:
        return DEFAULT_TZ
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        log.error("analytics: unknown time zone %r; using Asia/Shanghai for meter days and care watch", name)
        return DEFAULT_TZ


def _count_faces(snapshot: bytes, min_score: float) -> int:
    # Runs on the faces thread: cv2/onnxruntime are imported here, on first use.
    from edge.analytics.faces import detect_faces
    return len(detect_faces(snapshot, min_score=min_score))


def _warm_faces() -> None:
    from edge.analytics.faces import get_detector
    get_detector()


class AnalyticsService:
    """See the module docstring. Every keyword argument has a default fit for the box; tests
    inject `clock` (seconds since the epoch) and `tz` to replay simulated days quickly."""

    def __init__(self, cfg: Any, emit: Emit, metrics: Metrics, *,
                 tz: tzinfo | None = None,
                 clock: Callable[[], float] = time.time,
                 score_delay_s: float = 300.0,
                 max_fill_quarters: int = 4,
                 tick_s: float = 30.0,
                 care_save_s: float = 3600.0,
                 queue_max: int = 2000,
                 faces_min_score: float = 0.9,
                 faces_max_pending: int = 8,
                 faces_timeout_s: float = 5.0,
                 care_config: CareWatchConfig | None = None,
                 anomaly_model: Any = None,
                 anomaly_threshold: float | None = None) -> None:
        a = cfg.analytics
        self.faces_on = bool(a.faces)
        self.anomaly_on = bool(a.meter_anomaly)
        self.care_on = bool(a.care_watch)
        self._emit = emit
        self.metrics = metrics
        self.tz = tz or _zone(a.time_zone)
        if anomaly_threshold is None:
            anomaly_threshold = a.anomaly_threshold
        self.clock = clock
        self.score_delay_s = score_delay_s
        self.max_fill = max_fill_quarters
        self.tick_s = tick_s
        self.faces_min_score = faces_min_score
        self.faces_max_pending = faces_max_pending
        self.faces_timeout_s = faces_timeout_s
        self.care_config = care_config or CareWatchConfig()
        # The learnt routines survive a restart (else a reboot would blind the watch for a week).
        self.care_file: Path | None = Path(cfg.state_dir) / "carewatch.json" if getattr(cfg, "state_dir", None) else None
        self.care_save_s = care_save_s
        self._saved: dict[str, Any] | None = None      # the file's content, read once
        self._next_save = 0.0
        self._model = anomaly_model
        self._threshold = anomaly_threshold
        # worker thread state (touched only by the worker, except where a lock says otherwise)
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=queue_max)
        self._days: dict[str, dict[date, _DayBuf]] = {}
        self._closed_until: dict[str, date] = {}   # last day judged per meter: later samples only
        self._watches: dict[str, CareWatch] = {}
        self._registry_lock = threading.Lock()
        self._pending_registry: tuple[set[str], set[str]] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # event-loop side
        self._out: collections.deque[list[Point]] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._emit_lock = asyncio.Lock()
        self._faces_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._faces_pending = 0

    # -- event loop API ---------------------------------------------------------------------

    async def run(self) -> None:
        """Start the worker and commit its results until cancelled; then stop the threads."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._stop.clear()
        self._thread = threading.Thread(target=self._worker, name="analytics", daemon=True)
        self._thread.start()
        if self.faces_on:
            # Load the face models now rather than on the first gate event.
            self._faces_executor().submit(self._safe_warm_faces)
        log.info("analytics on: %s", ", ".join(n for n, on in (("faces", self.faces_on),
                 ("meter anomaly", self.anomaly_on), ("care watch", self.care_on)) if on))
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                await self._emit_pending()
        finally:
            self._stop.set()
            try:
                self._queue.put_nowait(("stop", None))
            except queue.Full:
                pass              # the worker sees _stop within one item anyway
            # The worker does milliseconds of work per item; joining briefly keeps shutdown clean.
            self._thread.join(timeout=5)
            if self._faces_pool is not None:
                self._faces_pool.shutdown(wait=False, cancel_futures=True)
                self._faces_pool = None
            try:
                # Care alerts are alarms: commit what the worker produced before the outbox closes.
                async with asyncio.timeout(2):
                    await self._emit_pending()
            except (Exception, asyncio.CancelledError) as exc:
                log.warning("analytics: %d result batches not committed at shutdown (%r)", len(self._out), exc)
            self._loop = None

    def observe(self, points: Iterable[Point]) -> None:
        """Called after every outbox commit. Never blocks, never raises."""
        if not (self.anomaly_on or self.care_on):
            return
        try:
            samples: list[Sample] = []
            for p in points:
                if p.measurement != "meter":
                    continue
                w = p.fields.get("active_power")
                dev = p.tags.get("device")
                if dev is None or isinstance(w, bool) or not isinstance(w, (int, float)):
                    continue
                samples.append((dev, p.time_ns, float(w), p.tags))
            if not samples:
                return
            self._queue.put_nowait(("samples", samples))
        except queue.Full:
            self.metrics.count("analytics_skipped_queue_full", len(samples))
            self.metrics.once(log, logging.WARNING, ("analytics", "queue_full"),
                              "analytics cannot keep up; meter samples are skipped for analytics "
                              "(they are still forwarded). See analytics_skipped_queue_full in status")
        except Exception as exc:   # a bug here must never cost the ingest path
            self.metrics.count("analytics_errors")
            self.metrics.once(log, logging.ERROR, ("analytics", "observe"), "analytics observe failed: %r", exc)

    def reconcile(self, devices: Iterable[Any]) -> None:
        """Registry changed: care watch only for consented households (options care_watch=True)."""
        devs = list(devices)
        known = {d.id for d in devs}
        care = {d.id for d in devs if d.enabled and bool((d.options or {}).get("care_watch"))}
        with self._registry_lock:
            self._pending_registry = (known, care)
        self.tick()

    def tick(self) -> None:
        """Ask the worker to look at the clock now (closes finished days). Never blocks."""
        try:
            self._queue.put_nowait(("tick", None))
        except queue.Full:
            pass                   # the worker is busy and will look at the clock anyway

    async def flush(self) -> None:
        """Wait until the worker has handled everything queued so far (and looked at the clock),
        then commit its results. For tests and an orderly shutdown; run() must be running."""
        if not self._stop.is_set():        # set only once run() has ended: nobody would answer
            done: concurrent.futures.Future[None] = concurrent.futures.Future()
            await asyncio.to_thread(self._queue.put, ("flush", done))
            await asyncio.wrap_future(done)
        await self._emit_pending()

    async def enrich_gate_event(self, points: list[Point], snapshot: bytes | None) -> None:
        """Set face_count (and tailgating, for a granted or denied access) on the gate_event points
        of one message. The snapshot is only analysed, never kept. Never raises; on any problem
        the points stay as they are and a counter says why."""
        try:
            gates = [p for p in points if p.measurement == "gate_event"]
            if not self.faces_on or not snapshot or not gates:
                return
            if self._faces_pending >= self.faces_max_pending:
                self.metrics.count("analytics_faces_skipped_busy")
                self.metrics.once(log, logging.WARNING, ("analytics", "faces_busy"),
                                  "face counting cannot keep up with the gates; snapshots are skipped "
                                  "(events are still forwarded, without face_count)")
                return
            loop = asyncio.get_running_loop()
            self._faces_pending += 1
            cf = self._faces_executor().submit(_count_faces, bytes(snapshot), self.faces_min_score)
            cf.add_done_callback(lambda _f: self._call_in_loop(loop, self._faces_done))
            try:
                async with asyncio.timeout(self.faces_timeout_s):
                    n = await asyncio.wrap_future(cf)
            except TimeoutError:
                self.metrics.count("analytics_faces_timeout")
                return
            except ValueError as exc:          # not a decodable image
                self.metrics.count("analytics_faces_bad_image")
                self.metrics.once(log, logging.WARNING, ("analytics_bad_image", gates[0].tags.get("device", "")),
                                  "gate %s sent a snapshot that cannot be analysed (%s); its events are "
                                  "forwarded without face_count", gates[0].tags.get("device", "?"), exc)
                return
            self.metrics.count("analytics_faces_analysed")
            for p in gates:
                p.fields["face_count"] = n
                result = p.fields.get("result")
                if result in ("granted", "denied"):
                    tg = result == "granted" and n >= 2   # one pass per granted event (faces.tailgating)
                    p.fields["tailgating"] = tg
                    if tg:
                        self.metrics.count("analytics_tailgating")
                        log.info("tailgating at gate %s: access granted for one, %d faces in the snapshot",
                                 p.tags.get("device", "?"), n)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.metrics.count("analytics_errors")
            self.metrics.once(log, logging.ERROR, ("analytics", "faces"),
                              "face counting failed: %r; gate events are forwarded without face_count", exc)

    # -- event loop internals ---------------------------------------------------------------

    def _faces_executor(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._faces_pool is None:
            self._faces_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="analytics-faces")
        return self._faces_pool

    def _faces_done(self) -> None:
        self._faces_pending -= 1

    def _safe_warm_faces(self) -> None:
        try:
            _warm_faces()
        except Exception as exc:
            log.error("cannot load the face detector (%s); gate events will carry no face_count. "
                      "Check that the mtcnn-runtime, opencv-python and onnxruntime packages are installed", exc)

    @staticmethod
    def _call_in_loop(loop: asyncio.AbstractEventLoop, fn: Callable[[], None]) -> None:
        try:
            loop.call_soon_threadsafe(fn)
        except RuntimeError:
            pass                   # loop closed: the agent is gone

    async def _emit_pending(self) -> None:
        # One committer at a time, so flush() returns only after run()'s batch in flight is done.
        async with self._emit_lock:
            while self._out:
                batch = self._out.popleft()
                try:
                    # Not put back on cancellation: emit() queues the points before its first
                    # await, so a retry would commit them twice (with a bumped timestamp).
                    await self._emit(batch)
                except Exception as exc:
                    self.metrics.count("analytics_emit_errors", len(batch))
                    log.error("analytics: cannot commit %d result points: %r", len(batch), exc)

    def _publish(self, points: list[Point]) -> None:
        """Worker -> loop hand-off of result points."""
        if not points:
            return
        self._out.append(points)
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            self._call_in_loop(loop, wake.set)

    # -- worker thread ----------------------------------------------------------------------

    def _worker(self) -> None:
        if self.anomaly_on and self._model is None:
            self._load_model()
        next_tick = 0.0
        while not self._stop.is_set():
            try:
                kind, arg = self._queue.get(timeout=min(self.tick_s, 1.0))
            except queue.Empty:
                kind, arg = "idle", None
            if kind == "stop":
                break
            if self.care_on and time.monotonic() >= self._next_save:
                self._next_save = time.monotonic() + self.care_save_s
                self._save_care()
            try:
                self._apply_registry()
                if kind == "samples":
                    self._handle_samples(arg)
                if kind in ("tick", "flush") or time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + self.tick_s
                    self._close_days(self.clock())
            except Exception as exc:
                self.metrics.count("analytics_errors")
                self.metrics.once(log, logging.ERROR, ("analytics", "worker"), "analytics worker error: %r", exc)
                log.debug("analytics worker error", exc_info=True)
            finally:
                if kind == "flush":
                    arg.set_result(None)
        if self.care_on:
            self._save_care()

    def _load_model(self) -> None:
        try:
            from edge.analytics.anomaly import LoadAnomalyModel
            self._model = LoadAnomalyModel.load(threshold=self._threshold)
            log.info("meter anomaly model loaded (threshold %.3f)", self._model.threshold)
        except Exception as exc:
            self.anomaly_on = False
            log.error("cannot load the meter anomaly model (%s); meter anomalies are switched off. "
                      "Reinstall poplar (edge/analytics/models/load_anomaly.onnx) or regenerate it with "
                      "`python scripts/train_anomaly.py`", exc)

    def _apply_registry(self) -> None:
        with self._registry_lock:
            pending, self._pending_registry = self._pending_registry, None
        if pending is None:
            return
        known, care = pending
        for dev in list(self._days):
            if dev not in known:
                del self._days[dev]
                self._closed_until.pop(dev, None)
        if not self.care_on:
            return
        withdrawn = [dev for dev in self._watches if dev not in care]
        for dev in withdrawn:
            # Consent withdrawn, or the meter removed: the learnt routine is deleted with it.
            del self._watches[dev]
            log.info("care watch stopped for %s; its learnt profile is deleted", dev)
        saved = self._load_care()
        for dev in sorted(care - set(self._watches)):
            w = self._watches[dev] = CareWatch(self.care_config, tz=self.tz)
            n = w.import_days(saved.pop(dev, {}).get("days", []))
            if n:
                log.info("care watch for %s resumed with %d learnt days", dev, n)
            else:
                log.info("care watch enrolled for %s (consent recorded); learning its routine for %d days",
                         dev, self.care_config.learn_days)
        if withdrawn or any(dev not in care for dev in saved):
            self._save_care()

    def _load_care(self) -> dict[str, Any]:
        """Saved routines not yet handed to a watch (read once; stale ones are dropped)."""
        if self._saved is None:
            self._saved = {}
            if self.care_file is not None and self.care_file.exists():
                try:
                    doc = json.loads(self.care_file.read_text(encoding="utf-8"))
                    oldest = time.time() - self.care_config.window_days * 86400
                    self._saved = {dev: w for dev, w in doc.get("watches", {}).items()
                                   if isinstance(w, dict) and w.get("saved", 0) >= oldest}
                except (OSError, ValueError, AttributeError) as exc:
                    log.warning("care watch: cannot read %s (%s); households learn their routine again",
                                self.care_file, exc)
        return self._saved

    def _save_care(self) -> None:
        """Write the learnt routines of the enrolled households (and nothing of anyone else)."""
        if self.care_file is None or self._saved is None:
            return                 # registry not seen yet: the file is not ours to rewrite
        now = time.time()
        doc = {"version": 1, "watches": {dev: {"saved": now, "days": w.export_days()}
                                         for dev, w in self._watches.items() if w.export_days()}}
        try:
            if not doc["watches"]:
                self.care_file.unlink(missing_ok=True)
                return
            tmp = self.care_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(doc), encoding="utf-8")
            os.chmod(tmp, 0o600)
            tmp.replace(self.care_file)
        except OSError as exc:
            self.metrics.once(log, logging.WARNING, ("analytics", "care_save"),
                              "care watch: cannot save learnt routines to %s (%s)", self.care_file, exc)

    def _handle_samples(self, samples: list[Sample]) -> None:
        alerts: list[Point] = []
        self.metrics.count("analytics_meter_samples", len(samples))
        for dev, ts_ns, w, tags in samples:
            if w != w or w in (float("inf"), float("-inf")):
                self.metrics.count("analytics_bad_samples")
                continue
            if self.anomaly_on:
                self._add_to_day(dev, ts_ns, w, tags)
            watch = self._watches.get(dev) if self.care_on else None
            if watch is not None:
                alert = watch.update(ts_ns / 1e9, w)
                if alert is not None:
                    alerts.append(self._care_point(dev, ts_ns, tags, alert))
        self._publish(alerts)

    def _add_to_day(self, dev: str, ts_ns: int, w: float, tags: dict[str, str]) -> None:
        t = datetime.fromtimestamp(ts_ns / 1e9, timezone.utc).astimezone(self.tz)
        d = t.date()
        closed = self._closed_until.get(dev)
        if closed is not None and d <= closed:
            # The day was judged already (a late point, a backlog replay): it cannot change now.
            self.metrics.count("analytics_late_samples")
            return
        bufs = self._days.setdefault(dev, {})
        buf = bufs.get(d)
        if buf is None:
            if len(bufs) >= 3:
                # A clock far off (or jumping) must not grow memory without end.
                self.metrics.count("analytics_late_samples")
                return
            buf = bufs[d] = _DayBuf()
        q = t.hour * 4 + t.minute // 15
        buf.sums[q] += w
        buf.counts[q] += 1
        buf.tags = tags

    def _day_start(self, d: date) -> datetime:
        return datetime(d.year, d.month, d.day, tzinfo=self.tz)

    def _close_days(self, now: float) -> None:
        """Judge every meter-day that ended at least score_delay_s before `now`."""
        if not self.anomaly_on or self._model is None:
            return
        todo: list[tuple[str, date, list[float], int, dict[str, str]]] = []
        for dev, bufs in self._days.items():
            for d in sorted(bufs):
                end = self._day_start(d + timedelta(days=1)).timestamp()
                if now < end + self.score_delay_s:
                    continue
                buf = bufs.pop(d)
                prev = self._closed_until.get(dev)
                self._closed_until[dev] = d if prev is None else max(prev, d)
                day, n_missing = assemble_day(buf.sums, buf.counts, self.max_fill)
                if day is None:
                    self.metrics.count("analytics_days_skipped_gaps")
                    log.debug("meter %s: %s not scored, %d of 96 quarter hours have no sample", dev, d, n_missing)
                    continue
                todo.append((dev, d, day, n_missing, buf.tags))
        if not todo:
            return
        import numpy as np   # numpy only comes with the model: a care-only box never imports it
        scores = self._model.score_many(np.asarray([t[2] for t in todo], dtype=np.float32))
        thr = float(self._model.threshold)
        out = []
        for (dev, d, day, filled, tags), s in zip(todo, scores):
            s = float(s)
            flag = bool(s > thr)
            fields: dict[str, Any] = {"score": round(s, 4), "flag": flag, "threshold": round(thr, 4),
                                      "filled_quarters": filled, "energy_kwh": round(sum(day) / 4000, 3)}
            ts = int(self._day_start(d).timestamp()) * 1_000_000_000
            out.append(Point("meter_anomaly", self._copy_tags(dev, tags), fields, ts, Priority.TELEMETRY))
            self.metrics.count("analytics_days_scored")
            if flag:
                self.metrics.count("analytics_days_flagged")
                log.info("meter %s: %s looks unusual (anomaly score %.2f > %.2f)", dev, d, s, thr)
        self._publish(out)

    @staticmethod
    def _copy_tags(dev: str, tags: dict[str, str]) -> dict[str, str]:
        out = {k: tags[k] for k in _COPY_TAGS if k in tags}
        out["device"] = dev
        return out

    def _care_point(self, dev: str, ts_ns: int, tags: dict[str, str], a: CareAlert) -> Point:
        self.metrics.count("analytics_care_alerts")
        since = a.since.strftime("%Y-%m-%d %H:%M")
        # One log line for the community's staff; the point carries the same facts.
        log.warning("care watch: %s has been quiet since %s (%d normally active hours; %.0f W observed, "
                    "%.0f W usual); please check on the resident (phone first)",
                    dev, since, a.hours_quiet, a.observed_w, a.expected_w)
        fields: dict[str, Any] = {"reason": a.reason, "hours_quiet": a.hours_quiet,
                                  "expected_w": a.expected_w, "observed_w": a.observed_w,
                                  "since": a.since.isoformat()}
        return Point("care_alert", self._copy_tags(dev, tags), fields, ts_ns, Priority.ALARM)
