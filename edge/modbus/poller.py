"""Polls registered Modbus meters on their interval and emits `meter` and `device_health` points.

Transports: Modbus TCP, RTU over TCP (serial device servers) and RTU on a serial port; the meters
that share an endpoint or a serial line share one `Bus` (edge/modbus/transport.py), which enforces
one transaction at a time and the inter-frame gap on RS-485, and a per-endpoint limit on TCP.

Scheduling, per device:
- Each poll runs the profile's plan (edge/modbus/plan.py: the fewest requests its map allows).
- Timestamps are the interval's slot (k * interval), so readings of many meters line up; a poll that
  overruns its slot skips the missed slots (counted as modbus_missed_slots) instead of bunching up.
- A timeout is retried `modbus.retries` times with a short pause, releasing the bus in between.
- A meter that stops answering goes offline (logged once) and is then probed with a single
  request, without retries, at growing intervals (interval x 2, x 4, ... up to OFFLINE_MAX_BACKOFF_S,
  but never less often than its own interval), at a lower priority than live polls on its bus.
  So a dead meter costs its bus at most one timeout per backoff period and never drops a reading
  of the others.

device_health points go out when a device's state changes (online/offline, first poll) and
otherwise at most every `health_interval_s` per device: hundreds of meters polled every few
seconds would otherwise double the points sent for no information.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Awaitable, Callable

from common.points import Point, Priority
from common.yamlconf import ConfigError
from edge.config import EdgeConfig
from edge.metrics import Metrics
from edge.modbus.plan import plan_reads
from edge.modbus.reader import Reading, read_meter
from edge.modbus.transport import LIVE, PROBE, Bus, serial_line
from edge.profiles import ProfileLibrary
from edge.registry import Device

log = logging.getLogger(__name__)

Emit = Callable[[list[Point]], Awaitable[None]]

MODBUS_TRANSPORTS = ("tcp", "rtu_over_tcp", "serial")
#: Longest pause between probes of an offline meter (unless its own interval is longer).
OFFLINE_MAX_BACKOFF_S = 300.0
#: Backoff grows to at most this many intervals.
OFFLINE_MAX_FACTOR = 16


def next_slot(after: float, interval: float) -> float:
    """The first multiple of INTERVAL strictly after AFTER."""
    return (math.floor(after / interval + 1e-9) + 1) * interval


def offline_backoff(interval: float, failures: int) -> float:
    """Seconds to wait before probing a meter that failed FAILURES polls in a row."""
    if failures <= 1:
        return interval
    cap = max(interval, min(interval * OFFLINE_MAX_FACTOR, OFFLINE_MAX_BACKOFF_S))
    return min(interval * 2 ** (failures - 1), cap)


class BusConflict(Exception):
    """Two devices name one serial port with different line settings."""


class ModbusPoller:
    def __init__(self, cfg: EdgeConfig, profiles: ProfileLibrary, emit: Emit, metrics: Metrics) -> None:
        self.cfg = cfg
        self.profiles = profiles
        self.emit = emit
        self.metrics = metrics
        self._tasks: dict[str, tuple[asyncio.Task, Device]] = {}
        self._buses: dict[str, Bus] = {}
        self.state: dict[str, dict] = {}

    # -- registry --------------------------------------------------------------------------
    def reconcile(self, devices: list[Device]) -> None:
        """Start, restart or stop device loops so they match the registry."""
        wanted: dict[str, Device] = {}
        for d in devices:
            if not d.enabled or d.transport.kind not in MODBUS_TRANSPORTS:
                continue
            if self.profiles.kind(d.profile) != "modbus":
                self._fail_device(d, f"profile {d.profile!r} is not a Modbus profile (or is missing); "
                                     "`poplar-edge profiles list` shows them")
                continue
            wanted[d.id] = d
        for dev_id, (task, old) in list(self._tasks.items()):
            if dev_id not in wanted or wanted[dev_id].to_doc() != old.to_doc():
                task.cancel()
                del self._tasks[dev_id]
                if dev_id not in wanted:
                    self.state.pop(dev_id, None)
        for dev_id in [k for k in self.state if k not in wanted and k not in self._tasks]:
            if not self.state[dev_id].get("error"):
                self.state.pop(dev_id)
        for dev_id, dev in wanted.items():
            if dev_id not in self._tasks:
                self._tasks[dev_id] = (asyncio.create_task(self._loop(dev), name=f"poll:{dev_id}"), dev)
        in_use = {d.transport.endpoint() for d in wanted.values()}
        for key in [k for k in self._buses if k not in in_use]:
            self._buses.pop(key).close()

    async def stop(self) -> None:
        for task, _ in self._tasks.values():
            task.cancel()
        await asyncio.gather(*(t for t, _ in self._tasks.values()), return_exceptions=True)
        self._tasks.clear()
        for bus in self._buses.values():
            bus.close()
        self._buses.clear()

    def _fail_device(self, dev: Device, message: str) -> None:
        st = self.state.setdefault(dev.id, {"online": None, "consecutive_failures": 0, "errors": 0})
        if st.get("error") != message:
            log.error("meter %s is not polled: %s", dev.id, message)
            self.metrics.count("modbus_device_config_errors")
        st["error"] = message
        st["last_error"] = message

    def _bus(self, dev: Device, profile) -> Bus:
        t = dev.transport
        key = t.endpoint()
        line = serial_line(t, profile.serial) if t.kind in ("serial", "rtu_over_tcp") else None
        bus = self._buses.get(key)
        if bus is None:
            bus = Bus(t, self.cfg.modbus.timeout_s, self.cfg.modbus.max_parallel_per_endpoint, line)
            self._buses[key] = bus
        elif t.kind == "serial" and bus.line != line:
            raise BusConflict(f"serial port {t.device} is already read at {bus.line.describe()} by other meters, "
                              f"this one is registered at {line.describe()}; one RS-485 line has one speed and "
                              "parity: set the meter (or its registration) to match")
        return bus

    # -- polling ---------------------------------------------------------------------------
    def _tags(self, dev: Device) -> dict[str, str]:
        return {"site": self.cfg.site, "gateway": self.cfg.gateway, "device": dev.id, **dev.tags}

    async def _loop(self, dev: Device) -> None:
        try:
            profile = self.profiles.get(dev.profile)
            plan = plan_reads(profile, self.cfg.modbus.max_gap)
            bus = self._bus(dev, profile)
        except (ConfigError, BusConflict, ValueError) as exc:
            self._fail_device(dev, str(exc))
            return
        interval = dev.interval_s or profile.defaults.interval_s
        unit = dev.unit if dev.unit is not None else profile.defaults.unit_id
        st = self.state.setdefault(dev.id, {})
        st.clear()
        st.update(online=None, consecutive_failures=0, errors=0, polls=0, address=f"{bus.describe()} unit {unit}")
        last_health = -math.inf
        slot = next_slot(time.time(), interval)
        while True:
            await asyncio.sleep(max(0.0, slot - time.time()))
            offline = st["online"] is False
            t0 = time.monotonic()
            reading = await read_meter(bus, unit, plan, retries=0 if offline else self.cfg.modbus.retries,
                                       priority=PROBE if offline else LIVE)
            ms = (time.monotonic() - t0) * 1000
            changed = self._account(dev, st, reading, ms, slot)
            points: list[Point] = []
            ts_ns = int(round(slot * 1e9))
            if reading.values:
                points.append(Point(profile.measurement, self._tags(dev), reading.values, ts_ns, Priority.TELEMETRY))
            now = time.time()
            if changed or now - last_health >= self.cfg.health_interval_s:
                points.append(self._health(dev, ts_ns, st))
                last_health = now
            if points:
                await self.emit(points)
            # Next slot: the next one for a live meter, later and later for a silent one.
            wait = offline_backoff(interval, st["consecutive_failures"]) if not reading.answered else interval
            nxt = next_slot(max(slot + wait - interval, time.time()), interval)
            missed = round((nxt - slot) / interval) - 1
            if reading.answered and missed > 0:
                self.metrics.count("modbus_missed_slots", missed)
            slot = nxt

    def _account(self, dev: Device, st: dict, reading: Reading, ms: float, slot: float) -> bool:
        """Update state and counters after a poll; log problems once. True if online/offline changed."""
        m = self.metrics
        m.count("modbus_polls")
        m.count("modbus_requests", reading.requests)
        for p in reading.problems:
            m.count(f"modbus_{p.kind}_errors")  # timeout, connect, bad_frame, wrong_unit, exception
        st["polls"] += 1
        was = st["online"]
        if reading.problems:
            st["errors"] += len(reading.problems)
            st["last_error"] = str(reading.problems[-1])
            m.count("modbus_poll_errors")
        if reading.values:
            st["consecutive_failures"] = 0 if not reading.problems else st["consecutive_failures"] + 1
            st["last_ok_ns"] = int(round(slot * 1e9))
            st["response_ms"] = round(ms, 2)
        else:
            st["consecutive_failures"] += 1
        online = reading.answered
        st["online"] = online
        if online and was is not True:
            log.info("meter %s (%s) is online%s", dev.id, st["address"], "" if was is None else " again")
        elif not online and was is not False:
            log.warning("meter %s is offline: %s", dev.id, reading.problems[-1] if reading.problems else "no answer")
        if online:
            for p in reading.problems:  # e.g. a block this firmware refuses: once per device and message
                m.once(log, logging.WARNING, ("modbus", f"{dev.id}:{p}"), "meter %s: %s", dev.id, p)
        return online != was

    def _health(self, dev: Device, ts_ns: int, st: dict) -> Point:
        fields: dict = {"online": bool(st["online"]), "errors": st["errors"],
                        "consecutive_failures": st["consecutive_failures"], "polls": st["polls"]}
        if st["online"] and "response_ms" in st:
            fields["response_ms"] = st["response_ms"]
        return Point("device_health", self._tags(dev), fields, ts_ns, Priority.HEALTH)
