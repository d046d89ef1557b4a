"""The collector: takes uplink batches from the central broker, checks them, writes them to
InfluxDB and only then acks to the edge (DESIGN.md, "Delivery").

Pipeline (one asyncio loop; the CPU work overlaps the HTTP writes):
  MQTT messages -> _queue -> checker (decode, authorise, validate, line protocol, HTTP body)
                -> _groups (at most one group waiting) -> writers (write.max_in_flight of them,
                   one HTTP write per group, retries with backoff) -> "ok" ack per batch, MQTT ack
                   per message.
Several queued batches go into one HTTP write: this is what makes the collector fast. The writers
hand their groups to the sink, which sends them one after another from its own thread
(collector/sinks/__init__.py): with two in flight, the next body is ready the moment InfluxDB
answers the one before, and InfluxDB never waits for the collector. A writer with nothing to do
takes the checker's group early, so a burst reaches InfluxDB after its first batches rather than
after the first write.max_points of checking; while InfluxDB is busy, groups grow to full size.

MQTT messages are acknowledged to the broker (manual ack) only after they were handled, so a
collector killed mid-batch loses nothing: the broker redelivers, or the edge resends. While the
sink fails, the writers back off and nothing is acked "ok": the checker stalls, paho's in-flight
window fills, and the broker and the edges keep the data (backpressure).

Several collectors share the uplink through an MQTT shared subscription ($share/GROUP/...). On
SIGTERM a collector unsubscribes first, finishes and acks what it holds, then disconnects, so
stopping one mid-stream loses nothing and delays nothing.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import json
import logging
import os
import re
import sys
import time
import zlib
from dataclasses import dataclass, field

from common import wire
from common.lineprotocol import to_lines
from common.mqtt import AsyncMqtt, Message
from common.points import Point, Priority
from collector.config import CollectorConfig
from collector.gateways import Gateways
from collector.sinks import BodyTooLarge, Sink, SinkUnavailable, WriteResult, make_sink
from collector.validate import LineMaker, authorise

log = logging.getLogger(__name__)

STATUS_PREFIX = "status-"
#: A writer with nothing to do takes a group of at least write.max_points / EARLY_PART points.
EARLY_PART = 8
#: Seconds a thread waiting for the GIL waits before the checker must let it run (Python's
#: default is 5 ms): the sink's sender thread needs it a few times per write to read the answer
#: and start the next write, and InfluxDB waits meanwhile.
SWITCH_INTERVAL_S = 0.001
_BATCH_ID = re.compile(rb'"batch":"([^"\\]{1,200})"')


def tune_gc() -> None:
    """Every batch decodes into thousands of short-lived lists and strings: with the default
    threshold (700) the cyclic GC runs several times per batch and rescans the batch still in
    use. Collecting less often costs no memory worth noting here and saves 5-10 % of the CPU per
    point (bench/collector_write.py); freeze() leaves the start-up objects out of it."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def _peek_batch_id(payload: bytes) -> str | None:
    """The batch id from the head of a compressed batch (the encoder writes it before the points)."""
    try:
        head = zlib.decompressobj().decompress(payload, 1024)
    except zlib.error:
        return None
    m = _BATCH_ID.search(head)
    return m.group(1).decode("utf-8", "replace") if m else None


@dataclass(slots=True)
class Checked:
    """One uplink batch that passed authorisation, waiting for its write."""
    msg: Message
    site: str
    gateway: str
    batch_id: str
    lines: list[bytes]
    refused: collections.Counter
    newest_ns: int
    sent_ns: int


@dataclass
class Group:
    items: list[Checked] = field(default_factory=list)
    points: int = 0
    #: The HTTP body of all the items' lines, made by the checker when it hands the group over,
    #: so that the writer has nothing to do but send it.
    body: bytes = b""

    def seal(self) -> "Group":
        self.body = body_of([ln for it in self.items for ln in it.lines])
        return self


def body_of(lines: list[bytes]) -> bytes:
    return b"\n".join(lines) + b"\n"


class Collector:
    def __init__(self, cfg: CollectorConfig, sink: Sink | None = None) -> None:
        self.cfg = cfg
        self.sink = sink or make_sink(cfg.sink)
        self.gateways = Gateways(cfg.gateways_db)
        self.lines = LineMaker(cfg.limits, escape_newlines=getattr(cfg.sink, "string_newlines", "keep") == "escape")
        self.counters: collections.Counter[str] = collections.Counter()
        self.gauges: dict[str, float] = {}
        self.last_seen: dict[tuple[str, str], dict] = {}
        self._queue: asyncio.Queue[Message] = asyncio.Queue()
        self._groups: asyncio.Queue[Group] = asyncio.Queue(maxsize=1)
        self._busy = 0  # groups taken by the checker or the writer and not finished yet
        self._idle_writers = 0  # writers waiting for a group: the checker hands its group over early
        self._logged: set[str] = set()
        self.started_ns = time.time_ns()
        b = cfg.broker
        self.mqtt = AsyncMqtt(b.parsed(), b.client_id or f"poplar-collector-{cfg.name}", persistent=True,
                              manual_ack=True, username=b.username, password=b.password,
                              tls=b.tls_files(), max_inflight=1000)
        self.mqtt.on_messages(self._enqueue)
        self.sink_ok = True

    @property
    def subscription(self) -> str:
        g = self.cfg.broker.shared_group
        return f"$share/{g}/{wire.UP_SUBSCRIPTION}" if g else wire.UP_SUBSCRIPTION

    @property
    def status_path(self):
        return self.cfg.state_path / f"{STATUS_PREFIX}{self.cfg.name}.json"

    def _enqueue(self, msgs: list[Message]) -> None:
        for m in msgs:
            self._queue.put_nowait(m)

    def _log_once(self, key: str, level: int, msg: str, *args) -> None:
        if key not in self._logged:
            if len(self._logged) > 10_000:
                self._logged.clear()
            self._logged.add(key)
            log.log(level, msg, *args)

    # -- lifecycle ---------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        await self.mqtt.subscribe(self.subscription, qos=1)
        if not await self.mqtt.start(wait=10):
            log.warning("central broker %s not reachable yet (%s); retrying", self.mqtt.url,
                        self.mqtt.last_error or "no answer")
        if not await self.sink.ping():
            log.warning("InfluxDB at %s does not answer yet; batches will wait (edges keep them)",
                        self.cfg.sink.url)
        log.info("collector %s: subscribed to %s on %s, writing to %s", self.cfg.name, self.subscription,
                 self.mqtt.url, self.cfg.sink.url)
        pipeline = [asyncio.create_task(self._checker(), name="collector-checker")]
        pipeline += [asyncio.create_task(self._writer(), name=f"collector-writer-{i}")
                     for i in range(self.cfg.write.max_in_flight)]
        side = [asyncio.create_task(self._health_loop(), name="collector-health"),
                asyncio.create_task(self._status_loop(), name="collector-status")]
        await stop.wait()
        await self._drain()
        for t in pipeline + side:
            t.cancel()
        await asyncio.gather(*pipeline, *side, return_exceptions=True)
        self.write_status(running=False)
        await self.mqtt.stop()
        await self.sink.close()
        self.gateways.close()
        log.info("collector stopped")

    async def _drain(self, timeout: float = 15.0) -> None:
        """Stop taking new batches, then finish those we hold, so none waits for a resend."""
        try:
            await self.mqtt.unsubscribe(self.subscription)
        except Exception as exc:  # broker gone: the edges resend what we do not ack
            log.warning("could not unsubscribe before stopping: %s", exc)
        deadline = time.monotonic() + timeout
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            if self._queue.qsize() or self._busy or self._groups.qsize():
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > 0.5:  # messages already on their way have arrived
                return
            await asyncio.sleep(0.05)
        log.warning("stopping with %d batches unfinished; their edges will resend them", self._queue.qsize())

    # -- stage 1: check ----------------------------------------------------------------------
    async def _checker(self) -> None:
        limit_points, limit_batches = self.cfg.write.max_points, self.cfg.write.max_batches
        early = max(1, limit_points // EARLY_PART)
        mono = time.monotonic
        while True:
            t0 = mono()
            msg = await self._queue.get()
            # Where the pipeline waits (ms, in status and collector_health): a checker idle for
            # batches while edges have a backlog points at the broker side, one blocked on the
            # writer at InfluxDB.
            if self.counters["batches_in"]:  # not the wait for the very first batch
                self.counters["checker_idle_ms"] += int((mono() - t0) * 1000)
            self._busy += 1
            try:
                group = Group()
                while True:
                    try:
                        item = await self._check(msg.topic, msg.payload, msg)
                    except Exception:  # a bug must not stop the collector; the edge will resend
                        log.exception("unexpected error handling a batch on %s", msg.topic)
                        self.counters["internal_errors"] += 1
                        item = None
                        self.mqtt.ack(msg)
                    if item is not None:
                        group.items.append(item)
                        group.points += len(item.lines)
                    if (group.points >= limit_points or len(group.items) >= limit_batches
                            or self._queue.empty()
                            or (self._idle_writers > self._groups.qsize() and group.points >= early)):
                        break  # full, nothing more to add, or a writer waits for work (module doc)
                    # Let the writers run between batches: awaiting a non-empty queue never yields,
                    # and without this a writer whose write was answered would neither ack it nor
                    # take the next group until this group is done.
                    await asyncio.sleep(0)
                    msg = self._queue.get_nowait()
                if group.items:
                    group.seal()
                    t0 = mono()
                    await self._groups.put(group)
                    self.counters["checker_blocked_ms"] += int((mono() - t0) * 1000)
                await asyncio.sleep(0)  # same reason, between groups
            finally:
                self._busy -= 1

    async def _check(self, topic: str, payload: bytes, msg: Message | None) -> Checked | None:
        """Decode, authorise and validate one uplink message. Refused ones are answered and
        MQTT-acked here; the rest come back for the writer."""
        self.counters["batches_in"] += 1
        try:
            site, gateway = wire.parse_up_topic(topic)
        except wire.WireError:
            return self._refuse(msg, "bad_topic")
        lim = self.cfg.limits
        if len(payload) > lim.max_batch_bytes:
            self._log_once(f"big:{gateway}", logging.WARNING,
                           "refused a batch from %s/%s: %d bytes, over the %d limit (limits.max_batch_bytes)",
                           site, gateway, len(payload), lim.max_batch_bytes)
            batch_id = _peek_batch_id(payload)
            if batch_id:  # tell the edge, without decoding the whole oversized payload
                self._reply(site, gateway, wire.Ack(batch_id, "rejected", reason=(
                    f"batch of {len(payload)} bytes is over the collector's limit of {lim.max_batch_bytes}; "
                    "send smaller batches (edge uplink batch size) or raise limits.max_batch_bytes")))
            return self._refuse(msg, "too_large")
        try:
            batch = wire.decode_batch_items(payload, max_bytes=max(lim.max_batch_bytes * 8, 1 << 20))
        except wire.WireError as exc:
            self._log_once(f"malformed:{gateway}", logging.WARNING, "malformed batch from %s/%s: %s",
                           site, gateway, exc)
            return self._refuse(msg, "malformed")
        reason = authorise(batch, site, gateway, self.gateways.site_of(gateway))
        if reason:
            # Logged once per gateway, counted every time, answered "rejected": never "ok".
            self._log_once(f"auth:{site}/{gateway}", logging.WARNING, "refused batches from %s/%s: %s",
                           site, gateway, reason)
            self._reply(site, gateway, wire.Ack(batch.batch_id, "rejected", reason=reason))
            return self._refuse(msg, "unauthorised")
        n = batch.count
        if n > lim.max_points_per_batch:
            reason = f"{n} points in one batch, more than the collector's limit of {lim.max_points_per_batch}"
            self._log_once(f"many:{gateway}", logging.WARNING, "refused a batch from %s/%s: %s", site, gateway, reason)
            self._reply(site, gateway, wire.Ack(batch.batch_id, "rejected", reason=reason))
            return self._refuse(msg, "too_many_points")
        self.counters["points_in"] += n
        verdict = self.lines.check_batch(batch, time.time_ns())
        for r, k in verdict.refused.items():
            self.counters[f"refused_{r}"] += k
            self._log_once(f"refused:{gateway}:{r}", logging.WARNING,
                           "refused %d points from %s/%s: %s (logged once per gateway and reason)", k, site,
                           gateway, r)
        return Checked(msg, site, gateway, batch.batch_id, verdict.lines, verdict.refused, verdict.newest_ns,
                       batch.sent_ns)

    def _refuse(self, msg: Message | None, reason: str) -> None:
        self.counters["batches_rejected"] += 1
        self.counters[f"rejected_{reason}"] += 1
        if msg is not None:
            self.mqtt.ack(msg)
        return None

    # -- stage 2: write ----------------------------------------------------------------------
    async def _writer(self) -> None:
        while True:
            self._idle_writers += 1
            try:
                group = await self._groups.get()
            finally:
                self._idle_writers -= 1
            self._busy += 1
            try:
                await self._write_group(group)
            except Exception:
                log.exception("unexpected error writing a group of %d batches", len(group.items))
                self.counters["internal_errors"] += 1
                for it in group.items:  # not acked "ok": the edges resend
                    self.mqtt.ack(it.msg)
            finally:
                self._busy -= 1

    async def _write(self, body: bytes, count: int) -> WriteResult:
        """One write with retries and exponential backoff; SinkUnavailable after the last."""
        w = self.cfg.write
        delay = w.backoff_s
        for attempt in range(w.retries + 1):
            try:
                result = await self.sink.write(body, count)
            except SinkUnavailable as exc:
                self.counters["sink_errors"] += 1
                if self.sink_ok:
                    log.error("cannot write to InfluxDB: %s. Retrying; not acking, edges keep their data.", exc)
                self.sink_ok = False
                if attempt == w.retries:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, w.backoff_max_s)
                continue
            ms = result.seconds * 1000
            self.counters["sink_writes"] += 1
            self.counters["sink_ms_total"] += int(ms)
            self.gauges["sink_ms_last"] = round(ms, 1)
            self.gauges["sink_ms_max"] = max(self.gauges.get("sink_ms_max", 0.0), round(ms, 1))
            if not self.sink_ok:
                log.info("InfluxDB accepts writes again")
            self.sink_ok = True
            return result
        raise AssertionError("unreachable")

    async def _write_lines(self, lines: list[bytes]) -> WriteResult:
        """Write `lines`; a body InfluxDB finds too large (its max-body-size) goes in halves, and
        a single line that is still too large is refused (counted, never retried for ever)."""
        try:
            return await self._write(body_of(lines), len(lines))
        except BodyTooLarge as exc:
            if len(lines) == 1:
                return WriteResult(0, 1, f"one point is larger than InfluxDB takes: {exc}")
            self.counters["sink_splits"] += 1
            self._log_once("sink-split", logging.WARNING, "%s; writing in smaller parts (raise InfluxDB's "
                           "[http] max-body-size, or lower write.max_points)", exc)
            half = len(lines) // 2
            a, b = await self._write_lines(lines[:half]), await self._write_lines(lines[half:])
            return WriteResult(a.written + b.written, a.refused + b.refused, a.detail or b.detail,
                               a.seconds + b.seconds)

    async def _write_group(self, group: Group) -> None:
        items = [it for it in group.items if it.lines]
        results: dict[int, WriteResult] = {}
        if items:
            try:
                try:
                    res: WriteResult | None = await self._write(group.body, group.points)
                except BodyTooLarge:  # past InfluxDB's max-body-size: batch by batch, in halves
                    res = None
                if res is None or (res.refused and len(items) > 1):
                    # InfluxDB dropped some points (a field type conflict) and does not say whose:
                    # write batch by batch (same points, same identity: harmless) to attribute them.
                    for it in items:
                        results[id(it)] = await self._write_lines(it.lines)
                else:
                    for it in items:
                        results[id(it)] = res
            except SinkUnavailable as exc:
                # Answer "retry" so edges know; they keep the batches and resend. Back off before
                # the next group so a dead sink is not hammered.
                for it in group.items:
                    self._reply(it.site, it.gateway, wire.Ack(it.batch_id, "retry", reason=str(exc)[:200]))
                    self.mqtt.ack(it.msg)
                self.counters["batches_retry"] += len(group.items)
                await asyncio.sleep(self.cfg.write.backoff_max_s)
                return
        now = time.time_ns()
        self.counters["sink_points"] += group.points
        for it in group.items:
            res = results.get(id(it))
            written, by_sink = len(it.lines), 0
            if res is not None and res.refused:
                by_sink = min(res.refused, len(it.lines))  # per batch: see the rewrite above
                written = len(it.lines) - by_sink
                self.counters["refused_by_influxdb"] += by_sink
                self._log_once(f"sink-refused:{it.gateway}", logging.WARNING,
                               "InfluxDB refused %d points from %s/%s: %s", by_sink, it.site, it.gateway,
                               res.detail)
            self.counters["points_written"] += written
            self.counters["batches_written"] += 1
            self.last_seen[(it.site, it.gateway)] = {
                "ns": now, "lag_s": round((now - it.newest_ns) / 1e9, 3) if it.newest_ns else None,
                "send_lag_s": round((now - it.sent_ns) / 1e9, 3) if it.sent_ns else None,
                "batches": self.last_seen.get((it.site, it.gateway), {}).get("batches", 0) + 1}
            reasons = ", ".join(f"{k}={v}" for k, v in it.refused.items())
            self._reply(it.site, it.gateway, wire.Ack(it.batch_id, "ok", written=written,
                                                      refused=sum(it.refused.values()) + by_sink, reason=reasons))
            self.mqtt.ack(it.msg)

    def _reply(self, site: str, gateway: str, ack: wire.Ack) -> None:
        ack.collector_ns = time.time_ns()
        self.counters[f"acks_{ack.status}"] += 1
        try:
            self.mqtt.publish_nowait(wire.ack_topic(site, gateway), wire.encode_ack(ack), qos=1)
        except Exception as exc:  # broker gone: the edge resends and gets its ack then
            self._log_once("ack-failed", logging.WARNING, "could not send an ack: %s", exc)

    # -- compatibility: one message, start to end (tests and tools) ---------------------------
    async def handle(self, topic: str, payload: bytes) -> None:
        item = await self._check(topic, payload, None)
        if item is not None:
            await self._write_group(Group([item], len(item.lines)).seal())

    # -- self-observation --------------------------------------------------------------------
    def health_points(self) -> list[Point]:
        now = time.time_ns()
        tags = {"site": "_central", "gateway": "_collector", "device": self.cfg.name, "collector": self.cfg.name}
        fields: dict = {k: int(v) for k, v in self.counters.items()}
        fields.update(self.gauges)
        fields["sink_ok"] = self.sink_ok
        fields["queue"] = self._queue.qsize()
        fields["gateways_seen"] = len(self.last_seen)
        if self.counters["sink_writes"]:
            fields["sink_ms_avg"] = round(self.counters["sink_ms_total"] / self.counters["sink_writes"], 2)
        pts = [Point("collector_health", tags, fields, now, Priority.HEALTH)]
        for (site, gw), seen in self.last_seen.items():
            f: dict = {"last_seen_s_ago": round((now - seen["ns"]) / 1e9, 3), "batches": seen["batches"]}
            if seen["lag_s"] is not None:
                f["lag_s"] = float(seen["lag_s"])
            if seen["send_lag_s"] is not None:
                f["send_lag_s"] = float(seen["send_lag_s"])
            pts.append(Point("collector_health", {"site": site, "gateway": gw, "device": gw,
                                                  "collector": self.cfg.name}, f, now, Priority.HEALTH))
        return pts

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.health_interval_s)
            try:
                pts = self.health_points()
                await self.sink.write(to_lines(pts), len(pts))
            except SinkUnavailable:
                pass
            except Exception:
                log.exception("could not write collector_health")

    def status(self, running: bool = True) -> dict:
        now = time.time_ns()
        return {
            "collector": self.cfg.name, "pid": os.getpid(), "host": os.uname().nodename,
            "running": running, "started_ns": self.started_ns, "updated_ns": now,
            "status_interval_s": self.cfg.status_interval_s,
            "broker": {"url": str(self.mqtt.url), "connected": self.mqtt.connected.is_set(),
                       "subscription": self.subscription, "last_error": self.mqtt.last_error},
            "sink": {"type": self.cfg.sink.type, "url": self.cfg.sink.url, "ok": self.sink_ok},
            "queue": self._queue.qsize(),
            "counters": dict(sorted(self.counters.items())),
            "gauges": dict(self.gauges),
            "gateways": [{"site": s, "gateway": g, "last_seen_s_ago": round((now - v["ns"]) / 1e9, 1),
                          "lag_s": v["lag_s"], "send_lag_s": v["send_lag_s"], "batches": v["batches"]}
                         for (s, g), v in sorted(self.last_seen.items())],
        }

    def write_status(self, running: bool = True) -> None:
        tmp = self.status_path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(self.status(running), ensure_ascii=False, indent=1), encoding="utf-8")
            os.replace(tmp, self.status_path)
        except OSError as exc:
            self._log_once("status-file", logging.WARNING, "cannot write %s: %s", self.status_path, exc)

    async def _status_loop(self) -> None:
        while True:
            self.write_status()
            await asyncio.sleep(self.cfg.status_interval_s)
