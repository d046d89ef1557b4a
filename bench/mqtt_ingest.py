#!/usr/bin/env python3
"""MQTT ingest: events per second from the box broker into the outbox, and CPU per event.

A real Mosquitto is started in a temp folder; the simulator (`poplar-sim facegate --count`)
publishes N events at QoS 1 while the source is away, so the broker holds them in the source's
persistent session; then the source (edge/mqtt/source.py, the same code the agent runs) starts and
we time how long it takes until every event is committed to the real SQLite outbox and
acknowledged. CPU is this process's CPU time (all threads: paho, asyncio, the SQLite writer),
so it is the edge's cost per event, not the simulator's.

Run: python bench/mqtt_ingest.py [--events N] [--gates N] [--dialect D]
     [--inflight N] [--commit-interval S] [--switch-interval S]   (what-ifs: broker window,
     outbox group-commit interval, GIL hand-over; the defaults are what the box runs)
Mapping alone, without broker or outbox: bench/mqtt_map.py.
Last line, always the same form:
BENCH mqtt_ingest dialect=... events=... events_per_s=... cpu_ms_per_event=... emits=... outbox_commits=... points=...
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.points import UniqueTimestamps  # noqa: E402
from edge.config import BrokerConfig, EdgeConfig, UplinkConfig  # noqa: E402
from edge.metrics import Metrics  # noqa: E402
from edge.mqtt.source import MqttSource  # noqa: E402
from edge.outbox import Outbox  # noqa: E402
from edge.profiles import ProfileLibrary  # noqa: E402
from edge.registry import Device, Registry, Transport  # noqa: E402
from tests.servers import Mosquitto  # noqa: E402

BIN = Path(sys.executable).parent


class Edge:
    """The agent's ingest path without its uplink: source -> stamp -> outbox (as Agent.emit)."""

    def __init__(self, cfg: EdgeConfig, registry: Registry) -> None:
        self.cfg = cfg
        self.metrics = Metrics()
        self.outbox = Outbox(cfg.outbox_db, cfg.outbox.max_bytes, cfg.outbox.commit_interval_s)
        self.unique = UniqueTimestamps()
        self.registry = registry
        self.commits = 0
        self.source = MqttSource(cfg, ProfileLibrary(), registry, self.emit, self.metrics)

    async def emit(self, points, *, stamped: bool = False) -> None:
        # what edge.agent.Agent.emit does, without the uplink
        if not stamped:
            for p in points:
                self.unique.stamp(p)
        await self.outbox.put(points)
        self.commits += 1


async def run_source(edge: Edge, until_committed: int | None, timeout: float) -> float:
    await edge.outbox.open()
    edge.source.reconcile(edge.registry.all())
    task = asyncio.create_task(edge.source.run())
    t0 = time.perf_counter()
    try:
        deadline = t0 + timeout
        while time.perf_counter() < deadline:
            await asyncio.sleep(0.02)
            done = edge.metrics.counters["mqtt_messages_committed"] + edge.metrics.counters["mqtt_dropped"]
            if until_committed is None:
                if edge.source.mqtt is not None and edge.source.mqtt.connected.is_set():
                    await asyncio.sleep(0.5)
                    break
            elif done >= until_committed:
                break
        return time.perf_counter() - t0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await edge.outbox.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=60_000)
    ap.add_argument("--gates", type=int, default=200)
    ap.add_argument("--dialect", default="hikvision-isapi")
    ap.add_argument("--publishers", type=int, default=2, help="simulator processes filling the broker")
    ap.add_argument("--inflight", type=int, default=None,
                    help="broker max_inflight_messages (default: as configs/mosquitto/box-broker.conf)")
    ap.add_argument("--commit-interval", type=float, default=None, help="outbox commit_interval_s")
    ap.add_argument("--switch-interval", type=float, default=None,
                    help="sys.setswitchinterval for the edge process (GIL hand-over between paho and asyncio)")
    a = ap.parse_args()
    if a.switch_interval is not None:
        sys.setswitchinterval(a.switch_interval)
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="bench-mqtt-") as tmp:
        tmp_path = Path(tmp)
        extra = f"max_inflight_messages {a.inflight}\n" if a.inflight is not None else ""
        broker = Mosquitto(tmp_path / "mosquitto", extra_conf=extra).start()
        try:
            cfg = EdgeConfig(site="bench", gateway="gw-01", state_dir=str(tmp_path / "state"),
                             local_broker=BrokerConfig(url=broker.url), uplink=UplinkConfig(url=broker.url))
            if a.commit_interval is not None:
                cfg.outbox.commit_interval_s = a.commit_interval
            cfg.state_path.mkdir(parents=True)
            reg = Registry(cfg.registry_db)
            for n in range(1, a.gates + 1):
                reg.add(Device(id=f"gate {n}", profile=a.dialect, transport=Transport("mqtt", mqtt_id=f"gate-{n}"),
                               tags={"building": str(n % 20 + 1)}))
            # 1. make the persistent session (subscriptions), then go away
            asyncio.run(run_source(Edge(cfg, reg), None, 15))
            # 2. fill the broker while the edge is away
            t = time.perf_counter()
            per = a.events // a.publishers
            counts = [per + (a.events - per * a.publishers if i == 0 else 0) for i in range(a.publishers)]
            procs = [subprocess.Popen([str(BIN / "poplar-sim"), "facegate", "--broker", broker.url, "--dialect",
                                       a.dialect, "--gates", str(a.gates), "--rate", "1000000", "--count", str(c),
                                       "--traffic", "flat", "--heartbeat-s", "86400", "--seed", str(i)],
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                     for i, c in enumerate(counts)]
            for p in procs:
                out, _ = p.communicate(timeout=300)
                if p.returncode != 0:
                    sys.exit(f"simulator failed: {out}")
            print(f"broker filled with {a.events} {a.dialect} events in {time.perf_counter() - t:.1f} s "
                  f"by {a.publishers} simulators")
            # 3. the measured run: drain the session into the outbox
            edge = Edge(cfg, reg)
            cpu0 = time.process_time()
            wall = asyncio.run(run_source(edge, a.events, 300))
            cpu = time.process_time() - cpu0
            c = edge.metrics.counters
            committed = c["mqtt_messages_committed"]
            rows = edge.outbox.rows
            print(f"committed {committed} events ({c['mqtt_dropped']} dropped) as {rows} outbox rows "
                  f"in {wall:.2f} s with {edge.commits} emits")
            rate = committed / wall if wall else 0.0
            cpu_ms = cpu * 1000 / max(committed, 1)
            print(f"{rate:,.0f} events/s, {cpu_ms:.3f} ms CPU per event (edge process, all threads; "
                  f"{os.cpu_count()} cores)")
            if committed < a.events:
                print(f"WARNING: only {committed} of {a.events} events arrived before the time limit")
            print(f"BENCH mqtt_ingest dialect={a.dialect} events={committed} events_per_s={rate:.0f} "
                  f"cpu_ms_per_event={cpu_ms:.4f} emits={edge.commits} outbox_commits={edge.outbox.commits} "
                  f"points={rows}")
            reg.close()
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
