"""The collector: takes uplink batches from the central broker, checks them, writes them to
InfluxDB and only then acks to the edge (DESIGN.md, "Delivery").

MQTT messages are acknowledged to the broker (manual ack) only after they were handled, so a
collector killed mid-batch loses nothing: the broker redelivers, or the edge resends.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time

from common import wire
from common.lineprotocol import to_lines
from common.mqtt import AsyncMqtt, Message
from common.points import Point, Priority
from collector.config import CollectorConfig
from collector.gateways import Gateways
from collector.sinks import Sink, SinkUnavailable, make_sink
from collector.validate import authorise, check_points

log = logging.getLogger(__name__)


class Collector:
    def __init__(self, cfg: CollectorConfig, sink: Sink | None = None) -> None:
        self.cfg = cfg
        self.sink = sink or make_sink(cfg.sink)
        self.gateways = Gateways(cfg.gateways_db)
        self.counters: collections.Counter[str] = collections.Counter()
        self.last_seen: dict[tuple[str, str], dict] = {}
        self._queue: asyncio.Queue[Message] = asyncio.Queue()
        self._logged: set[str] = set()
        b = cfg.broker
        self.mqtt = AsyncMqtt(b.parsed(), b.client_id or f"poplar-collector-{cfg.name}", persistent=True,
                              manual_ack=True, username=b.username, password=b.password,
                              tls=b.tls.files() if b.tls else None, max_inflight=200)
        self.mqtt.on_messages(self._enqueue)
        self.sink_ok = True

    @property
    def subscription(self) -> str:
        g = self.cfg.broker.shared_group
        return f"$share/{g}/{wire.UP_SUBSCRIPTION}" if g else wire.UP_SUBSCRIPTION

    def _enqueue(self, msgs: list[Message]) -> None:
        for m in msgs:
            self._queue.put_nowait(m)

    def _log_once(self, key: str, level: int, msg: str, *args) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.log(level, msg, *args)

    async def run(self, stop: asyncio.Event) -> None:
        await self.mqtt.subscribe(self.subscription, qos=1)
        if not await self.mqtt.start(wait=10):
            log.warning("central broker %s not reachable yet (%s); retrying", self.mqtt.url,
                        self.mqtt.last_error or "no answer")
        if not await self.sink.ping():
            log.warning("InfluxDB at %s does not answer yet; batches will wait (edges keep them)",
                        self.cfg.sink.url)
        log.info("collector %s: subscribed to %s on %s, writing to %s", self.cfg.name, self.subscription,
                 self.mqtt.url, self.cfg.sink.url)
        workers = [asyncio.create_task(self._worker(), name="collector-worker"),
                   asyncio.create_task(self._health_loop(), name="collector-health")]
        await stop.wait()
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        await self.mqtt.stop()
        await self.sink.close()
        self.gateways.close()
        log.info("collector stopped")

    async def _worker(self) -> None:
        while True:
            msg = await self._queue.get()
            try:
                await self.handle(msg.topic, msg.payload)
            except Exception:  # a bug must not stop the collector; the edge will resend
                log.exception("unexpected error handling a batch on %s", msg.topic)
                self.counters["internal_errors"] += 1
            self.mqtt.ack(msg)

    async def _reply(self, site: str, gateway: str, ack: wire.Ack) -> None:
        ack.collector_ns = time.time_ns()
        self.mqtt.publish_nowait(wire.ack_topic(site, gateway), wire.encode_ack(ack), qos=1)

    async def handle(self, topic: str, payload: bytes) -> None:
        """Handle one uplink message; always ends in a counter, and an ack when one is due."""
        self.counters["batches_in"] += 1
        try:
            site, gateway = wire.parse_up_topic(topic)
        except wire.WireError:
            self.counters["rejected_bad_topic"] += 1
            return
        if len(payload) > self.cfg.limits.max_batch_bytes:
            self.counters["rejected_too_large"] += 1
            self._log_once(f"big:{gateway}", logging.WARNING, "batch from %s/%s is %d bytes, over the %d limit",
                           site, gateway, len(payload), self.cfg.limits.max_batch_bytes)
            return
        try:
            batch = wire.decode_batch(payload)
        except wire.WireError as exc:
            self.counters["rejected_malformed"] += 1
            self._log_once(f"malformed:{gateway}", logging.WARNING, "malformed batch from %s/%s: %s",
                           site, gateway, exc)
            return
        reason = authorise(batch, site, gateway, self.gateways.site_of(gateway))
        if reason:
            self.counters["rejected_unauthorised"] += 1
            self._log_once(f"auth:{site}/{gateway}", logging.WARNING, "refused batches from %s/%s: %s",
                           site, gateway, reason)
            await self._reply(site, gateway, wire.Ack(batch.batch_id, "rejected", reason=reason))
            return
        if len(batch.points) > self.cfg.limits.max_points_per_batch:
            self.counters["rejected_too_many_points"] += 1
            await self._reply(site, gateway, wire.Ack(batch.batch_id, "rejected",
                                                      reason=f"more than {self.cfg.limits.max_points_per_batch} points"))
            return
        self.counters["points_in"] += len(batch.points) + batch.bad_items
        verdict = check_points(batch, self.cfg.limits, time.time_ns())
        for r, n in verdict.refused.items():
            self.counters[f"refused_{r}"] += n
            self._log_once(f"refused:{gateway}:{r}", logging.WARNING,
                           "refused %d points from %s/%s: %s (logged once per gateway and reason)", n, site,
                           gateway, r)
        written, refused_by_sink = 0, 0
        if verdict.good:
            t0 = time.monotonic()
            try:
                result = await self.sink.write(to_lines(verdict.good), len(verdict.good))
            except SinkUnavailable as exc:
                self.counters["sink_errors"] += 1
                if self.sink_ok:
                    log.error("cannot write to InfluxDB: %s. Not acking; edges keep their data.", exc)
                self.sink_ok = False
                await self._reply(site, gateway, wire.Ack(batch.batch_id, "retry", reason=str(exc)[:200]))
                return
            if not self.sink_ok:
                log.info("InfluxDB accepts writes again")
            self.sink_ok = True
            self.counters["sink_writes"] += 1
            self.counters["sink_ms_total"] += int((time.monotonic() - t0) * 1000)
            written, refused_by_sink = result.written, result.refused
            if result.refused:
                self.counters["refused_by_influxdb"] += result.refused
                self._log_once(f"sink-refused:{gateway}", logging.WARNING, "InfluxDB refused %d points from %s/%s: %s",
                               result.refused, site, gateway, result.detail)
        self.counters["points_written"] += written
        self.counters["batches_written"] += 1
        newest = max((p.time_ns for p in batch.points), default=0)
        self.last_seen[(site, gateway)] = {"ns": time.time_ns(), "lag_s": (time.time_ns() - newest) / 1e9 if newest else None}
        refused = verdict.refused_total + refused_by_sink
        reasons = ", ".join(f"{k}={v}" for k, v in verdict.refused.items())
        await self._reply(site, gateway, wire.Ack(batch.batch_id, "ok", written=written, refused=refused,
                                                  reason=reasons))

    def health_points(self) -> list[Point]:
        now = time.time_ns()
        tags = {"site": "_central", "gateway": "_collector", "device": self.cfg.name, "collector": self.cfg.name}
        fields = {k: int(v) for k, v in self.counters.items()}
        fields["sink_ok"] = self.sink_ok
        fields["queue"] = self._queue.qsize()
        pts = [Point("collector_health", tags, fields, now, Priority.HEALTH)]
        for (site, gw), seen in self.last_seen.items():
            f = {"last_seen_s_ago": (now - seen["ns"]) / 1e9}
            if seen["lag_s"] is not None:
                f["lag_s"] = float(seen["lag_s"])
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
