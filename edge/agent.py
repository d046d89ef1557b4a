"""The edge agent: wires sources -> outbox -> uplink, and reports its own health.

Sources (Modbus poller, MQTT ingest) hand points to `Agent.emit`, which returns once the points
are committed to the outbox; only then may a source acknowledge its input.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time

from common.points import Point, Priority, UniqueTimestamps
from edge.clock import Clock
from edge.config import EdgeConfig
from edge.metrics import Metrics, ProcessUsage
from edge.modbus.poller import ModbusPoller
from edge.outbox import Outbox
from edge.profiles import ProfileLibrary
from edge.registry import Registry
from edge.uplink import Uplink

log = logging.getLogger(__name__)


class Agent:
    def __init__(self, cfg: EdgeConfig) -> None:
        self.cfg = cfg
        self.metrics = Metrics()
        self.profiles = ProfileLibrary(cfg.profiles_dirs)
        self.clock = Clock()  # corrects timestamps when this box's clock is clearly wrong
        self.outbox = Outbox(cfg.outbox_db, cfg.outbox.max_bytes, cfg.outbox.commit_interval_s, clock=self.clock)
        self.uplink = Uplink(cfg, self.outbox, self.metrics, self.clock)
        self.usage = ProcessUsage()
        self.registry = Registry(cfg.registry_db)
        self.unique = UniqueTimestamps()
        self.modbus = ModbusPoller(cfg, self.profiles, self.emit, self.metrics)
        # Analytics and the MQTT source are imported only when configured, so a meter-only box
        # never loads OpenCV, onnxruntime or the MQTT dialect machinery.
        self.analytics = None
        if cfg.analytics.faces or cfg.analytics.meter_anomaly or cfg.analytics.care_watch:
            from edge.analytics.service import AnalyticsService
            self.analytics = AnalyticsService(cfg, self.emit, self.metrics)
        self.mqtt_source = None
        if cfg.local_broker:
            from edge.mqtt.source import MqttSource
            self.mqtt_source = MqttSource(cfg, self.profiles, self.registry, self.emit, self.metrics,
                                          analytics=self.analytics)
        self._registry_version = -1
        self._tasks: list[asyncio.Task] = []

    async def emit(self, points: list[Point], *, stamped: bool = False) -> None:
        """Commit points to the outbox; returns when they are durable.

        stamped=True: the source already made its timestamps unique in a way that survives a
        replay (the MQTT source derives them from the message), so they must not be moved here."""
        if not points:
            return
        if not stamped:
            for p in points:
                self.unique.stamp(p)
        await self.outbox.put(points)
        self.metrics.count("points_accepted", len(points))
        self.uplink.notify()
        if self.analytics is not None:
            self.analytics.observe(points)  # never blocks: queues work for its own thread

    async def run(self, stop: asyncio.Event) -> None:
        self.cfg.state_path.mkdir(parents=True, exist_ok=True)
        await self.outbox.open()
        log.info("edge agent %s/%s started; state in %s; outbox holds %d points",
                 self.cfg.site, self.cfg.gateway, self.cfg.state_dir, self.outbox.rows)
        self._tasks = [
            asyncio.create_task(self.uplink.run(), name="uplink"),
            asyncio.create_task(self._watch_registry(), name="registry"),
            asyncio.create_task(self._health_loop(), name="health"),
            asyncio.create_task(self._status_loop(), name="status"),
        ]
        if self.analytics is not None:
            self._tasks.append(asyncio.create_task(self.analytics.run(), name="analytics"))
        if self.mqtt_source is not None:
            self._tasks.append(asyncio.create_task(self.mqtt_source.run(), name="mqtt-source"))
        if self.outbox.damage:
            await self.emit([self._gateway_health(alarm=f"outbox damaged and replaced: {self.outbox.damage}")])
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([stopper, *self._tasks], return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            if t is not stopper and t.exception():
                log.error("agent task %s failed: %r", t.get_name(), t.exception())
        await self.shutdown()

    async def shutdown(self) -> None:
        log.info("edge agent stopping")
        await self.modbus.stop()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.outbox.close()  # flushes what sources queued before they were cancelled
        self._write_status()  # after the close, so its figures are final
        self.registry.close()
        log.info("edge agent stopped; %d points wait in the outbox", self.outbox.rows)

    async def _watch_registry(self) -> None:
        while True:
            version = self.registry.data_version()
            if version != self._registry_version:
                self._registry_version = version
                devices = self.registry.all()
                self.modbus.reconcile(devices)
                if self.mqtt_source is not None:
                    self.mqtt_source.reconcile(devices)
                if self.analytics is not None:
                    self.analytics.reconcile(devices)
                log.info("registry loaded: %d devices (%d enabled)", len(devices), sum(d.enabled for d in devices))
            await asyncio.sleep(self.cfg.registry_reload_s)

    def _gateway_health(self, alarm: str | None = None, oldest_ns: int | None = None) -> Point:
        c = self.metrics.counters
        g = self.metrics.gauges
        now = self.clock.now_ns() + self.clock.correction_ns  # the clock stored points are stamped by
        fields: dict = {
            "outbox_rows": self.outbox.rows, "outbox_bytes": self.outbox.bytes,
            "uplink_connected": self.uplink.connected, "in_flight_batches": self.uplink.in_flight,
            "in_flight_points": self.outbox.in_flight,
            "points_accepted": c["points_accepted"], "points_acked": c["uplink_points_acked"],
            "points_refused": c["uplink_points_refused"], "resends": c["uplink_resends"],
        }
        # The oldest point's age, from the (possibly wrong) local clock the point was stamped with.
        fields["oldest_point_age_s"] = round(max(0, now - oldest_ns) / 1e9, 3) if oldest_ns else 0.0
        for cls, n in self.outbox.dropped.items():
            fields[f"dropped_{cls}"] = n
        fields["dropped_total"] = sum(self.outbox.dropped.values())
        if "uplink_ack_latency_ms" in g:
            fields["ack_latency_ms"] = g["uplink_ack_latency_ms"]
        if "uplink_live_ack_latency_ms" in g:
            fields["live_ack_latency_ms"] = g["uplink_live_ack_latency_ms"]
        fields.update(self.clock.as_fields())
        fields.update(self.usage.fields())
        if alarm:
            fields["alarm"] = alarm
        tags = {"site": self.cfg.site, "gateway": self.cfg.gateway, "device": self.cfg.gateway}
        return Point("gateway_health", tags, fields, time.time_ns(), Priority.ALARM if alarm else Priority.HEALTH)

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.health_interval_s)
            try:
                oldest = await self.outbox.oldest_ns()
                await self.emit([self._gateway_health(oldest_ns=oldest)])
            except Exception as exc:  # e.g. disk full: report next time, never stop reporting
                log.warning("could not record gateway health: %s", exc)

    def _write_status(self) -> None:
        doc = {
            "site": self.cfg.site, "gateway": self.cfg.gateway, "pid": os.getpid(), "updated_ns": time.time_ns(),
            "uplink": {"url": str(self.uplink.mqtt.url), "connected": self.uplink.connected,
                       "in_flight_batches": self.uplink.in_flight, "last_error": self.uplink.mqtt.last_error,
                       "last_rejection": self.uplink.last_rejection},
            "outbox": {"rows": self.outbox.rows, "bytes": self.outbox.bytes, "dropped": self.outbox.dropped,
                       "in_flight_points": self.outbox.in_flight, "damage": self.outbox.damage,
                       # points committed by this run, including those whose source was cancelled
                       # at shutdown just after the commit (and so never counted as accepted)
                       "committed": self.outbox.committed_total},
            "clock": {"offset_ns": self.clock.offset_ns, "correction_ns": self.clock.correction_ns,
                      "corrected_points": self.clock.corrected_points},
            "devices": {**self.modbus.state, **(self.mqtt_source.state if self.mqtt_source else {})},
            "metrics": self.metrics.snapshot(),
        }
        tmp = self.cfg.status_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, ensure_ascii=False, default=str))
        tmp.replace(self.cfg.status_file)

    async def _status_loop(self) -> None:
        while True:
            try:
                self._write_status()
            except OSError as exc:
                log.debug("cannot write status file: %s", exc)
            await asyncio.sleep(2)
