"""The uplink: forwards outbox batches to the central broker and deletes them only on the
collector's ack (DESIGN.md, "Delivery"). Wire format: common/wire.py.

Several batches may be in flight; one that is not acked within ack_timeout_s is resent with the
same batch id and the same points, so a late or duplicate ack is harmless and a replay
overwrites itself in InfluxDB. The agent's online state is a retained message with a last will.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from dataclasses import dataclass

from common import wire
from common.aio import wait_event
from common.mqtt import AsyncMqtt, Message
from edge.clock import Clock
from edge.config import EdgeConfig
from edge.metrics import Metrics
from edge.outbox import Claim, Outbox

log = logging.getLogger(__name__)


@dataclass
class InFlight:
    batch_id: str
    claim: Claim
    payload: bytes
    first_sent: float
    last_sent: float
    sends: int = 1
    live: bool = False  # claimed by the live lane (newest rows) rather than the backlog lane


class Uplink:
    #: In-flight slots kept for the live lane, so a backlog drain never delays fresh points by more
    #: than about one collector round trip.
    LIVE_SLOTS = 1

    def __init__(self, cfg: EdgeConfig, outbox: Outbox, metrics: Metrics, clock: Clock | None = None) -> None:
        self.cfg = cfg
        self.clock = clock or outbox.clock or Clock()
        self._probes: dict[str, float] = {}  # clock probes (empty batches) sent, by id
        self._probe_n = 0
        self.ucfg = cfg.uplink
        self.outbox = outbox
        self.metrics = metrics
        self._boot = secrets.token_hex(4)  # batch ids of an earlier run never match ours
        self._inflight: dict[str, InFlight] = {}
        self._wake = asyncio.Event()
        self.up_topic = wire.up_topic(cfg.site, cfg.gateway)
        self.ack_topic = wire.ack_topic(cfg.site, cfg.gateway)
        self.state_topic = wire.state_topic(cfg.site, cfg.gateway)
        self.mqtt = AsyncMqtt(
            self.ucfg.parsed(), self.ucfg.client_id or f"poplar-edge-{cfg.site}-{cfg.gateway}",
            persistent=True, username=self.ucfg.username, password=self.ucfg.password,
            tls=self.ucfg.tls_files(),
            will=(self.state_topic, self._state_payload(False), True),
            max_inflight=max(20, self.ucfg.max_inflight * 2),
        )
        self.mqtt.on_messages(self._on_acks)
        self.mqtt.on_connection_change = self._on_connection_change
        self.last_rejection: str = ""

    @property
    def clock_offset_ns(self) -> int | None:
        """Collector clock minus ours, from acks (None until the first ack)."""
        return self.clock.offset_ns

    def _state_payload(self, online: bool) -> bytes:
        return json.dumps({"state": "online" if online else "offline", "site": self.cfg.site,
                           "gateway": self.cfg.gateway, "ts_ns": time.time_ns()}).encode()

    def _on_connection_change(self, up: bool) -> None:
        self.metrics.gauges["uplink_connected"] = int(up)
        if up:
            log.info("uplink connected to %s", self.mqtt.url)
            asyncio.ensure_future(self._announce())
            self._resend_all()
        else:
            log.warning("uplink to %s lost (%s); points stay in the outbox and go out when it returns",
                        self.mqtt.url, self.mqtt.last_error or "disconnected")
        self._wake.set()

    async def _announce(self) -> None:
        try:
            self.mqtt.publish_nowait(self.state_topic, self._state_payload(True), qos=1, retain=True)
        except Exception as exc:  # reported by the next health cycle
            log.debug("could not publish online state: %s", exc)

    def notify(self) -> None:
        """New points are in the outbox."""
        self._wake.set()

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    @property
    def connected(self) -> bool:
        return self.mqtt.connected.is_set()

    async def run(self) -> None:
        await self.mqtt.subscribe(self.ack_topic, qos=1)
        ok = await self.mqtt.start(wait=5)
        if not ok:
            log.warning("uplink broker %s not reachable yet (%s); buffering in the outbox and retrying",
                        self.mqtt.url, self.mqtt.last_error or "no answer")
        try:
            while True:
                await wait_event(self._wake, min(1.0, self.ucfg.ack_timeout_s / 4))
                self._wake.clear()
                try:
                    self._resend_overdue()
                    if self.connected:
                        await self._fill()
                except Exception as exc:  # outbox trouble (disk full, I/O): keep the agent up, retry
                    self.metrics.count("uplink_errors")
                    self.metrics.once(log, logging.ERROR, ("uplink_error", type(exc).__name__),
                                      "uplink cannot read the outbox (%s); retrying every second", exc)
                    await asyncio.sleep(1.0)
        finally:
            if self.connected:
                try:
                    await self.mqtt.publish(self.state_topic, self._state_payload(False), retain=True, timeout=2)
                except Exception:
                    pass
            await self.mqtt.stop()

    async def _fill(self) -> None:
        if not self.clock.known:
            self._probe_clock()
            if self.clock.certainly_wrong:
                # Points stamped by a clock that reads 1970 would be refused as too old; hold
                # them until the probe's ack tells us the offset (the outbox then corrects them).
                return
        cap = self.ucfg.max_inflight
        backlog_cap = max(1, cap - self.LIVE_SLOTS)
        if sum(f.live for f in self._inflight.values()) < self.LIVE_SLOTS and len(self._inflight) < cap:
            await self._claim_and_send(live=True)
        while sum(not f.live for f in self._inflight.values()) < backlog_cap and len(self._inflight) < cap:
            if not await self._claim_and_send(live=False):
                return

    async def _claim_and_send(self, live: bool) -> bool:
        claim = await self.outbox.claim(self.ucfg.batch_max_points, newest=live)
        if claim is None:
            return False
        batch_id = f"{self._boot}:{claim.lo}-{claim.hi}"
        payload = wire.encode_batch_raw(self.cfg.site, self.cfg.gateway, batch_id, self.clock.now_ns(), claim.bodies,
                                        version=self.ucfg.wire_version)
        now = time.monotonic()
        f = self._inflight[batch_id] = InFlight(batch_id, claim, payload, now, now, live=live)
        self._send(f)
        self.metrics.count("uplink_batches_sent")
        self.metrics.count("uplink_points_sent", claim.count)
        return True

    def _probe_clock(self) -> None:
        """An empty batch: the collector acks it with its clock, which is all we want from it."""
        now = time.monotonic()
        if any(now - t < self.ucfg.ack_timeout_s for t in self._probes.values()):
            return
        self._probe_n += 1
        pid = f"{self._boot}:probe-{self._probe_n}"
        self._probes = {pid: now}
        payload = wire.encode_batch_raw(self.cfg.site, self.cfg.gateway, pid, self.clock.now_ns(), [],
                                        version=self.ucfg.wire_version)
        try:
            self.mqtt.publish_nowait(self.up_topic, payload, qos=1)
        except Exception as exc:
            log.debug("clock probe not sent: %s", exc)

    def _send(self, f: InFlight) -> None:
        try:
            self.mqtt.publish_nowait(self.up_topic, f.payload, qos=1)
        except Exception as exc:
            log.warning("uplink publish failed (%s); will resend", exc)

    def _resend_overdue(self) -> None:
        now = time.monotonic()
        for f in self._inflight.values():
            if now - f.last_sent >= self.ucfg.ack_timeout_s and self.connected:
                f.last_sent = now
                f.sends += 1
                self.metrics.count("uplink_resends")
                log.info("batch %s not acked after %.0f s; resending (%d points)", f.batch_id,
                         self.ucfg.ack_timeout_s, f.claim.count)
                self._send(f)

    def _resend_all(self) -> None:
        now = time.monotonic()
        for f in self._inflight.values():
            if now - f.last_sent > 1.0:
                f.last_sent = now
                f.sends += 1
                self._send(f)

    def _on_acks(self, msgs: list[Message]) -> None:
        for msg in msgs:
            try:
                ack = wire.decode_ack(msg.payload)
            except wire.WireError as exc:
                self.metrics.count("uplink_bad_acks")
                log.warning("ignored a malformed ack on %s: %s", msg.topic, exc)
                continue
            asyncio.ensure_future(self._handle_ack(ack))

    async def _handle_ack(self, ack: wire.Ack) -> None:
        probe_sent = self._probes.pop(ack.batch_id, None)
        if probe_sent is not None:
            if ack.collector_ns:
                rtt = time.monotonic() - probe_sent
                self.clock.observe(ack.collector_ns, self.clock.now_ns() - int(rtt * 1e9 / 2))
            self._wake.set()
            return
        f = self._inflight.get(ack.batch_id)
        if f is None:
            self.metrics.count("uplink_stale_acks")  # duplicate or from an earlier run: harmless
            return
        if ack.collector_ns and f.sends == 1:
            # Only unambiguous round trips: after a resend we cannot tell which send was acked.
            rtt = time.monotonic() - f.last_sent
            self.clock.observe(ack.collector_ns, self.clock.now_ns() - int(rtt * 1e9 / 2))
        elif ack.collector_ns and not self.clock.known:
            self.clock.observe(ack.collector_ns, self.clock.now_ns())
        if ack.status == "ok":
            if self.outbox.closing:
                # An ack that arrived as the agent stops: the batch stays and is resent on start;
                # the collector's write of it overwrites itself.
                log.debug("ack for %s arrived during shutdown; the batch is resent on start", ack.batch_id)
                return
            try:
                await self.outbox.complete(f.claim)
            except Exception as exc:  # disk trouble: keep the batch in flight; it is resent and acked again
                log.error("could not delete acked batch %s from the outbox: %s", ack.batch_id, exc)
                return
            if self._inflight.pop(ack.batch_id, None) is None:
                self.metrics.count("uplink_stale_acks")  # a duplicate that arrived while we were deleting
                return
            self.metrics.count("uplink_batches_acked")
            self.metrics.count("uplink_points_acked", ack.written)
            if ack.refused:
                self.metrics.count("uplink_points_refused", ack.refused)
                log.warning("collector refused %d points of batch %s: %s", ack.refused, ack.batch_id,
                            ack.reason or "see collector log")
            self.metrics.gauges["uplink_ack_latency_ms"] = int((time.monotonic() - f.first_sent) * 1000)
            if f.live:
                self.metrics.gauges["uplink_live_ack_latency_ms"] = int((time.monotonic() - f.first_sent) * 1000)
            self._wake.set()
        elif ack.status == "retry":
            self.metrics.count("uplink_retry_acks")
            log.info("collector cannot write now (%s); batch %s stays in the outbox", ack.reason, ack.batch_id)
            # Try again in a few seconds rather than a whole ack timeout: InfluxDB restarts are short.
            f.last_sent = time.monotonic() - self.ucfg.ack_timeout_s + min(self.ucfg.ack_timeout_s, 5.0)
        else:
            self.metrics.count("uplink_rejected_batches")
            if ack.reason != self.last_rejection:
                log.error("the collector rejected our batches: %s. The data stays in the outbox; ask central "
                          "IT to authorise gateway %r for site %r (poplar-collector gateways add).",
                          ack.reason, self.cfg.gateway, self.cfg.site)
            self.last_rejection = ack.reason
