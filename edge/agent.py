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
from edge.config import EdgeConfig
from edge.metrics import Metrics
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
        self.outbox = Outbox(cfg.outbox_db, cfg.outbox.max_bytes, cfg.outbox.commit_interval_s)
        self.uplink = Uplink(cfg, self.outbox, self.metrics)
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
            try:  # TEMPORARY guard while edge/mqtt/source.py is being written (issue 4)
                from edge.mqtt.source import MqttSource
            except ModuleNotFoundError:
                MqttSource = None
            if MqttSource is not None:
                self.mqtt_source = MqttSource(cfg, self.profiles, self.registry, self.emit, self.metrics,
                                              analytics=self.analytics)
        self._registry_version = -1
        self._tasks: list[asyncio.Task] = []

    async def emit(self, points: list[Point]) -> None:
        """Commit points to the outbox; returns when they are durable."""
        if not points:
            return
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
        self._write_status()
        await self.outbox.close()
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

    def _gateway_health(self, alarm: str | None = None) -> Point:
        c = self.metrics.counters
        fields: dict = {
            "outbox_rows": self.outbox.rows, "outbox_bytes": self.outbox.bytes,
            "uplink_connected": self.uplink.connected, "in_flight_batches": self.uplink.in_flight,
            "points_accepted": c["points_accepted"], "points_acked": c["uplink_points_acked"],
        }
        for cls, n in self.outbox.dropped.items():
            fields[f"dropped_{cls}"] = n
        if "uplink_ack_latency_ms" in self.metrics.gauges:
            fields["ack_latency_ms"] = self.metrics.gauges["uplink_ack_latency_ms"]
        if alarm:
            fields["alarm"] = alarm
        tags = {"site": self.cfg.site, "gateway": self.cfg.gateway, "device": self.cfg.gateway}
        return Point("gateway_health", tags, fields, time.time_ns(), Priority.ALARM if alarm else Priority.HEALTH)

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.health_interval_s)
            await self.emit([self._gateway_health()])

    def _write_status(self) -> None:
        doc = {
            "site": self.cfg.site, "gateway": self.cfg.gateway, "pid": os.getpid(), "updated_ns": time.time_ns(),
            "uplink": {"url": str(self.uplink.mqtt.url), "connected": self.uplink.connected,
                       "in_flight_batches": self.uplink.in_flight, "last_error": self.uplink.mqtt.last_error,
                       "last_rejection": self.uplink.last_rejection},
            "outbox": {"rows": self.outbox.rows, "bytes": self.outbox.bytes, "dropped": self.outbox.dropped},
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
