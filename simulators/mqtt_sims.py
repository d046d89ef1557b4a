"""`poplar-sim facegate` and `poplar-sim elevator`: simulated devices on an MQTT broker.

Payloads come from simulators/payloads.py (pure generators in the dialects of device_profiles/).
Traffic is realistic by default: gate passes follow the day (morning and evening peaks, quiet
nights), alarms are rare, keep-alives come on their own clock, and elevator cars travel floor
by floor. `--traffic flat` publishes at a steady rate (tests, benchmarks).

With `--count N` a simulator publishes exactly N events at QoS 1, waits until the broker
acknowledged every one, prints `sent N events ...` on stdout and exits 0. Keep-alives and
malformed messages are extra and reported separately.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import time
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from common.cli import fail
from common.logs import setup_logging
from common.mqtt import AsyncMqtt, MqttUrl
from simulators import payloads as pl


class Traffic(str, Enum):
    day = "day"
    flat = "flat"


BrokerOpt = Annotated[str, typer.Option(help="the box broker, mqtt://HOST:PORT")]
RateOpt = Annotated[Optional[float], typer.Option(help="mean events per second, all devices together")]
CountOpt = Annotated[Optional[int], typer.Option(help="publish exactly N events, wait for every PUBACK, exit")]
TrafficOpt = Annotated[Traffic, typer.Option(help="day: peaks and quiet hours by local time; flat: steady")]
SeedOpt = Annotated[int, typer.Option(help="random seed (same seed, same traffic)")]
MsOpt = Annotated[bool, typer.Option("--ms-time", help="device times with milliseconds (default whole seconds)")]
ConnectOpt = Annotated[float, typer.Option(help="seconds to wait for the broker at start")]


def register(app: typer.Typer) -> None:
    app.command("facegate")(facegate)
    app.command("elevator")(elevator)


def _check(broker: str, n: int, what: str, rate: float | None, count: int | None, malformed: float) -> MqttUrl:
    try:
        url = MqttUrl.parse(broker)
    except ValueError as exc:
        fail(f"--broker {broker!r}: {exc}", 2)
    if not 1 <= n <= 100_000:
        fail(f"--{what} {n}: give 1 to 100000", 2)
    if rate is not None and not 0 < rate <= 1_000_000:
        fail(f"--rate {rate}: give a rate above 0 (events per second)", 2)
    if count is not None and count < 0:
        fail(f"--count {count}: give 0 or more", 2)
    if not 0 <= malformed <= 1:
        fail(f"--malformed-rate {malformed}: give a share from 0 to 1", 2)
    return url


class _Publisher:
    """Paces events, interleaves keep-alives and malformed messages, tracks PUBACKs."""

    def __init__(self, url: MqttUrl, kind: str, rate: float, traffic: Traffic, count: int | None,
                 malformed_rate: float, seed: int, connect_timeout: float = 10.0) -> None:
        self.connect_timeout = connect_timeout
        self.url, self.kind, self.rate, self.traffic, self.count = url, kind, rate, traffic, count
        self.malformed_rate = malformed_rate
        self.rng = random.Random(seed)
        self.client = AsyncMqtt(url, f"poplar-sim-{kind}-{os.getpid()}-{self.rng.getrandbits(24):06x}",
                                max_inflight=1000)
        self.sent = self.malformed = self.keepalives = 0
        self._futs: list[asyncio.Future] = []
        self._reap_at = 20_000
        self.failed = 0

    def publish(self, topic: str, payload: bytes) -> None:
        self._futs.append(self.client.publish_nowait(topic, payload, qos=1))
        if len(self._futs) > self._reap_at:  # keep memory flat on long runs
            self._reap()
            self._reap_at = max(20_000, 2 * len(self._futs))

    def _reap(self) -> None:
        keep = []
        for f in self._futs:
            if not f.done():
                keep.append(f)
            elif f.cancelled() or f.exception() is not None:
                self.failed += 1
        self._futs = keep

    async def run(self, event: Callable[[datetime], tuple[str, bytes]], bad_topic: Callable[[], str],
                  ticks: list[tuple[float, Callable[[datetime], None]]]) -> int:
        if not await self.client.start(wait=self.connect_timeout):
            fail(f"cannot connect to the broker {self.url}: {self.client.last_error or 'no answer'}; "
                 "check the address and that the broker runs", 1)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        start = loop.time()
        next_event = start
        next_tick = [start + period * self.rng.random() for period, _ in ticks]
        while not stop.is_set() and (self.count is None or self.sent < self.count):
            now = loop.time()
            wake = min([next_event, *next_tick])
            if wake > now + 0.002:
                try:
                    async with asyncio.timeout(min(wake - now, 1.0)):
                        await stop.wait()
                except TimeoutError:
                    pass
                continue
            t = datetime.now(timezone.utc)
            for i, (period, fn) in enumerate(ticks):
                if next_tick[i] <= now:
                    fn(t)
                    next_tick[i] += period
            if next_event <= now:
                self.publish(*event(t))
                self.sent += 1
                if self.malformed_rate and self.rng.random() < self.malformed_rate:
                    self.publish(bad_topic(), pl.malformed_payload(self.rng))
                    self.malformed += 1
                r = self.rate * (pl.traffic_factor(t) if self.traffic is Traffic.day else 1.0)
                next_event += self.rng.expovariate(r) if self.traffic is Traffic.day else 1.0 / r
                if (self.sent & 255) == 0:
                    await asyncio.sleep(0)  # let paho's acks reach the loop
        # Every message must be acknowledged by the broker before we claim it was sent.
        pending = [f for f in self._futs if not f.done()]
        if pending:
            try:
                async with asyncio.timeout(120):
                    await asyncio.gather(*pending, return_exceptions=True)
            except TimeoutError:
                pass
        self._reap()
        unacked = len(self._futs)
        await self.client.stop()
        elapsed = loop.time() - start
        print(f"sent {self.sent} events ({self.malformed} malformed, {self.keepalives} keep-alives) "
              f"to {self.url} in {elapsed:.1f} s; {unacked + self.failed} not acknowledged", flush=True)
        return 1 if unacked + self.failed else 0


def facegate(
    broker: BrokerOpt = ...,
    dialect: Annotated[str, typer.Option(help=f"one of {', '.join(pl.FACEGATE_DIALECTS)}")] = "generic-facegate",
    gates: Annotated[int, typer.Option(help="number of gates, named {prefix}1..{prefix}N")] = 10,
    rate: RateOpt = None,
    count: CountOpt = None,
    malformed_rate: Annotated[float, typer.Option(help="share of events followed by a malformed message (0-1)")] = 0.0,
    id_prefix: Annotated[str, typer.Option(help="device id prefix")] = "gate-",
    heartbeat_s: Annotated[float, typer.Option(help="keep-alive period per gate, seconds")] = 30.0,
    traffic: TrafficOpt = Traffic.day,
    snapshot: Annotated[Optional[Path], typer.Option(help="JPEG sent as the face snapshot (generic dialect)")] = None,
    ms_time: MsOpt = False,
    seed: SeedOpt = 0,
    connect_timeout: ConnectOpt = 10.0,
) -> None:
    """Simulate face-recognition gates publishing events, alarms and keep-alives."""
    setup_logging("warning")
    if dialect not in pl.FACEGATE_DIALECTS:
        fail(f"--dialect {dialect!r}: expected one of {', '.join(pl.FACEGATE_DIALECTS)}", 2)
    url = _check(broker, gates, "gates", rate, count, malformed_rate)
    if heartbeat_s <= 0:
        fail("--heartbeat-s must be above 0", 2)
    pic = None
    if snapshot is not None:
        try:
            pic = snapshot.read_bytes()
        except OSError as exc:
            fail(f"--snapshot {snapshot}: {exc}", 2)
    # A gate of a busy compound sees a few thousand passes a day: ~0.05 per second on average.
    pub = _Publisher(url, "facegate", rate or gates * 0.05, traffic, count, malformed_rate, seed,
                     connect_timeout)
    ids = [f"{id_prefix}{n}" for n in range(1, gates + 1)]
    rng = pub.rng

    def event(t: datetime) -> tuple[str, bytes]:
        return pl.facegate_message(dialect, rng.choice(ids), rng, t, pic, entry_prob=pl.entry_share(t),
                                   ms_time=ms_time)

    def keepalive(t: datetime) -> None:
        for gid in ids:
            pub.publish(*pl.facegate_heartbeat(dialect, gid, rng, t))
            pub.keepalives += 1

    def bad_topic() -> str:
        gid = rng.choice(ids)
        return {"hikvision-isapi": f"hikvision/{gid}/event", "dahua-vto2mqtt": "DahuaVTO/AccessControl/Event",
                "generic-facegate": f"facegate/{gid}/record"}[dialect]

    ticks = [(heartbeat_s, keepalive)] if dialect in pl.HEARTBEAT_DIALECTS else []
    typer.echo(f"{gates} simulated {dialect} gates ({ids[0]}..{ids[-1]}) on {url}; Ctrl-C stops", err=True)
    sys.exit(asyncio.run(pub.run(event, bad_topic, ticks)))


def elevator(
    broker: BrokerOpt = ...,
    elevators: Annotated[int, typer.Option(help="number of cars, named {prefix}1..{prefix}N")] = 4,
    rate: RateOpt = None,
    count: CountOpt = None,
    malformed_rate: Annotated[float, typer.Option(help="share of events followed by a malformed message (0-1)")] = 0.0,
    id_prefix: Annotated[str, typer.Option(help="device id prefix")] = "lift-",
    heartbeat_s: Annotated[float, typer.Option(help="keep-alive period per car, seconds")] = 30.0,
    fault_rate: Annotated[float, typer.Option(help="share of events that are faults (GB/T 24476 codes)")] = 0.002,
    traffic: TrafficOpt = Traffic.day,
    floors: Annotated[str, typer.Option(help="lowest..highest floor, e.g. -2..18")] = "-2..18",
    ms_time: MsOpt = False,
    seed: SeedOpt = 0,
    connect_timeout: ConnectOpt = 10.0,
) -> None:
    """Simulate elevator IoT terminals: status as cars travel floor by floor, rare faults, keep-alives."""
    setup_logging("warning")
    url = _check(broker, elevators, "elevators", rate, count, malformed_rate)
    try:
        lo, hi = (int(x) for x in floors.split(".."))
        if not lo <= 1 < hi:
            raise ValueError
    except ValueError:
        fail(f"--floors {floors!r}: expected LOWEST..HIGHEST, e.g. -2..18 (floor 1, the lobby, included)", 2)
    if not 0 <= fault_rate <= 1:
        fail(f"--fault-rate {fault_rate}: give a share from 0 to 1", 2)
    # Terminals report status about once a second while a car moves.
    pub = _Publisher(url, "elevator", rate or elevators * 1.0, traffic, count, malformed_rate, seed,
                     connect_timeout)
    ids = [f"{id_prefix}{n}" for n in range(1, elevators + 1)]
    rng = pub.rng
    cars = {e: pl.ElevatorModel(lowest=lo, highest=hi, seed=seed * 1000 + i) for i, e in enumerate(ids)}
    clock = {e: time.monotonic() for e in ids}
    started = time.monotonic()

    def event(t: datetime) -> tuple[str, bytes]:
        eid = rng.choice(ids)
        car = cars[eid]
        now = time.monotonic()
        car.step(now - clock[eid])  # the car moved on since its last report: floor by floor
        clock[eid] = now
        if rng.random() < fault_rate:
            return pl.elevator_fault(eid, rng, t, car, ms_time=ms_time)
        return pl.elevator_status(eid, car, t, ms_time=ms_time)

    def keepalive(t: datetime) -> None:
        for eid in ids:
            pub.publish(*pl.elevator_heartbeat(eid, rng, t, int(time.monotonic() - started)))
            pub.keepalives += 1

    def bad_topic() -> str:
        return f"elevator/{rng.choice(ids)}/{rng.choice(['status', 'fault'])}"

    typer.echo(f"{elevators} simulated elevators ({ids[0]}..{ids[-1]}) on {url}; Ctrl-C stops", err=True)
    sys.exit(asyncio.run(pub.run(event, bad_topic, [(heartbeat_s, keepalive)])))
