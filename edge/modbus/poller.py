"""Polls registered Modbus meters on their interval and emits `meter` and `device_health` points.

Each device reads its profile's plan (edge/modbus/plan.py: the fewest requests its register map
allows). Timestamps are aligned to the interval, so readings of many meters line up.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Awaitable, Callable

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from common.points import Point, Priority
from edge.config import EdgeConfig
from edge.metrics import Metrics
from edge.modbus.plan import decode_reads, plan_reads
from edge.profiles import ProfileLibrary
from edge.registry import Device

log = logging.getLogger(__name__)

Emit = Callable[[list[Point]], Awaitable[None]]


class PollError(Exception):
    """One failed poll; str() is for the installer."""


class Endpoint:
    """One TCP connection shared by the meters behind it, with a limit on parallel requests."""

    def __init__(self, host: str, port: int, timeout: float, parallel: int) -> None:
        self.client = AsyncModbusTcpClient(host, port=port, timeout=timeout, retries=0, reconnect_delay=0)
        self.limit = asyncio.Semaphore(parallel)
        self.host, self.port = host, port

    async def ensure(self) -> None:
        if not self.client.connected:
            await self.client.connect()
        if not self.client.connected:
            raise PollError(f"cannot connect to {self.host}:{self.port} (check the address, cable and that the "
                            "meter or serial server is powered)")

    def close(self) -> None:
        self.client.close()


async def read_plan(endpoint: Endpoint, unit: int, plan, timeout: float) -> tuple[dict, int]:
    """Run every request of a plan; return decoded fields and the number of requests made."""
    values: dict = {}
    async with endpoint.limit:
        await endpoint.ensure()
        for req in plan:
            fn = {1: endpoint.client.read_coils, 2: endpoint.client.read_discrete_inputs,
                  3: endpoint.client.read_holding_registers, 4: endpoint.client.read_input_registers}[req.function]
            try:
                async with asyncio.timeout(timeout * 2):
                    rr = await fn(req.address, count=req.count, device_id=unit)
            except (ModbusException, TimeoutError, ConnectionError) as exc:
                endpoint.close()
                raise PollError(f"no answer from unit {unit} at {endpoint.host}:{endpoint.port} "
                                f"(fc {req.function}, address {req.address:#06x}): {exc or 'timeout'}") from None
            if rr.isError():
                code = getattr(rr, "exception_code", "?")
                raise PollError(f"unit {unit} answered fc {req.function} address {req.address:#06x} x{req.count} "
                                f"with Modbus exception {code}")
            data = rr.bits[: req.count] if req.function in (1, 2) else rr.registers
            values.update(decode_reads(req, data))
    return values, len(plan)


class ModbusPoller:
    def __init__(self, cfg: EdgeConfig, profiles: ProfileLibrary, emit: Emit, metrics: Metrics) -> None:
        self.cfg = cfg
        self.profiles = profiles
        self.emit = emit
        self.metrics = metrics
        self._tasks: dict[str, tuple[asyncio.Task, Device]] = {}
        self._endpoints: dict[str, Endpoint] = {}
        self.state: dict[str, dict] = {}

    def reconcile(self, devices: list[Device]) -> None:
        """Start, restart or stop device loops so they match the registry."""
        wanted = {d.id: d for d in devices
                  if d.enabled and d.transport.kind == "tcp" and self.profiles.kind(d.profile) == "modbus"}
        for dev_id, (task, old) in list(self._tasks.items()):
            if dev_id not in wanted or wanted[dev_id].to_doc() != old.to_doc():
                task.cancel()
                del self._tasks[dev_id]
        for dev_id, dev in wanted.items():
            if dev_id not in self._tasks:
                self._tasks[dev_id] = (asyncio.create_task(self._loop(dev), name=f"poll:{dev_id}"), dev)

    async def stop(self) -> None:
        for task, _ in self._tasks.values():
            task.cancel()
        await asyncio.gather(*(t for t, _ in self._tasks.values()), return_exceptions=True)
        self._tasks.clear()
        for ep in self._endpoints.values():
            ep.close()

    def _endpoint(self, dev: Device) -> Endpoint:
        key = dev.transport.endpoint()
        if key not in self._endpoints:
            self._endpoints[key] = Endpoint(dev.transport.host, dev.transport.port, self.cfg.modbus.timeout_s,
                                            self.cfg.modbus.max_parallel_per_endpoint)
        return self._endpoints[key]

    def _tags(self, dev: Device) -> dict[str, str]:
        return {"site": self.cfg.site, "gateway": self.cfg.gateway, "device": dev.id, **dev.tags}

    async def _loop(self, dev: Device) -> None:
        profile = self.profiles.get(dev.profile)
        plan = plan_reads(profile, self.cfg.modbus.max_gap)
        interval = dev.interval_s or profile.defaults.interval_s
        unit = dev.unit if dev.unit is not None else profile.defaults.unit_id
        endpoint = self._endpoint(dev)
        st = self.state.setdefault(dev.id, {"online": None, "consecutive_failures": 0, "errors": 0})
        while True:
            # Align to the interval so meters polled at the same interval share timestamps.
            now = time.time()
            slot = math.floor(now / interval + 1) * interval
            await asyncio.sleep(max(0.0, slot - now))
            ts_ns = int(slot * 1e9)
            t0 = time.monotonic()
            try:
                values, nreq = await read_plan(endpoint, unit, plan, self.cfg.modbus.timeout_s)
            except PollError as exc:
                st["errors"] += 1
                st["consecutive_failures"] += 1
                self.metrics.count("modbus_poll_errors")
                if st["online"] is not False:
                    log.warning("meter %s (%s) is offline: %s", dev.id, dev.transport.describe(), exc)
                st["online"] = False
                await self._emit_health(dev, ts_ns, False, None, st)
                continue
            elapsed_ms = (time.monotonic() - t0) * 1000
            if st["online"] is not True:
                log.info("meter %s (%s) is online", dev.id, dev.transport.describe())
            st.update(online=True, consecutive_failures=0, last_ok_ns=ts_ns)
            self.metrics.count("modbus_polls")
            self.metrics.count("modbus_requests", nreq)
            fields = {k: v for k, v in values.items() if isinstance(v, (int, float, str, bool))
                      and not (isinstance(v, float) and not math.isfinite(v))}
            points = [Point(profile.measurement, self._tags(dev), fields, ts_ns, Priority.TELEMETRY)] if fields else []
            points.append(self._health(dev, ts_ns, True, elapsed_ms, st))
            await self.emit(points)

    def _health(self, dev: Device, ts_ns: int, online: bool, ms: float | None, st: dict) -> Point:
        fields: dict = {"online": online, "errors": st["errors"], "consecutive_failures": st["consecutive_failures"]}
        if ms is not None:
            fields["response_ms"] = round(ms, 2)
        return Point("device_health", self._tags(dev), fields, ts_ns, Priority.HEALTH)

    async def _emit_health(self, dev: Device, ts_ns: int, online: bool, ms: float | None, st: dict) -> None:
        await self.emit([self._health(dev, ts_ns, online, ms, st)])
