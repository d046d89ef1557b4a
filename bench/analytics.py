#!/usr/bin/env python3
"""Analytics cost on this box: face detection per gate snapshot, anomaly score per meter-day,
care-watch update per sample, and the service path inside the agent (observe() on the event loop,
the worker thread per meter sample). Run: python bench/analytics.py [--rounds N] [--meters N]

Last line, always the same form:
BENCH analytics faces_ms_per_image=... anomaly_ms_per_day=... anomaly_batch_ms_per_day=... carewatch_us_per_sample=... observe_us_per_point=... worker_us_per_sample=... service_ms_per_meter_day=...
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge.analytics.anomaly import LoadAnomalyModel  # noqa: E402
from edge.analytics.carewatch import DEFAULT_TZ, CareWatch  # noqa: E402
from edge.analytics.faces import detect_faces, get_detector  # noqa: E402
from edge.analytics.service import AnalyticsService  # noqa: E402
from common.points import Point  # noqa: E402
from edge.config import EdgeConfig  # noqa: E402
from edge.metrics import Metrics  # noqa: E402
from edge.registry import Device, Transport  # noqa: E402
from simulators.households import Household  # noqa: E402

IMAGES = ["astronaut.jpg", "grace_hopper.jpg", "coffee.jpg", "two_faces.jpg"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--meters", type=int, default=300, help="meters fed through the service for one day")
    a = ap.parse_args()

    t = time.perf_counter()
    get_detector()
    print(f"face models load: {(time.perf_counter() - t) * 1e3:.0f} ms (once, on first use)")
    per_image = []
    for name in IMAGES:
        data = (ROOT / "tests" / "data" / name).read_bytes()
        n = len(detect_faces(data))          # warm-up
        times = []
        for _ in range(a.rounds):
            t = time.perf_counter()
            detect_faces(data)
            times.append(time.perf_counter() - t)
        ms = statistics.median(times) * 1e3
        per_image.append(ms)
        print(f"faces {name:18s} {n} face(s)  {ms:7.1f} ms/snapshot (median of {a.rounds})")
    faces_ms = statistics.mean(per_image)

    model = LoadAnomalyModel.load()
    rng = random.Random(1)
    days = np.asarray([Household(s).day_profile(rng) for s in range(2000)])
    model.score(days[0])
    t = time.perf_counter()
    for d in days[:500]:
        model.score(d)
    single_ms = (time.perf_counter() - t) / 500 * 1e3
    t = time.perf_counter()
    model.score_many(days)
    batch_ms = (time.perf_counter() - t) / len(days) * 1e3
    print(f"anomaly: {single_ms:.3f} ms/meter-day one at a time, {batch_ms:.4f} ms/meter-day in a batch of {len(days)}")

    h, w = Household(3), CareWatch()
    start = datetime(2024, 3, 4, tzinfo=DEFAULT_TZ)
    samples = [(start + timedelta(minutes=15 * i), v)
               for i, v in enumerate(x for _ in range(30) for x in h.day_profile(rng))]
    t = time.perf_counter()
    for ts, v in samples:
        w.update(ts, v)
    cw_us = (time.perf_counter() - t) / len(samples) * 1e6
    print(f"carewatch: {cw_us:.2f} us/sample over {len(samples)} samples (30 days)")

    obs_us, worker_us, day_ms = asyncio.run(service_path(a.meters, rng))
    print(f"service: observe() {obs_us:.2f} us/point on the event loop; worker {worker_us:.1f} us/meter sample "
          f"(day assembly + care watch); {day_ms:.2f} ms/meter-day at 5-minute polls, all analytics on "
          f"({a.meters} meters, half of them care-watched)")

    print(f"BENCH analytics faces_ms_per_image={faces_ms:.1f} anomaly_ms_per_day={single_ms:.3f} "
          f"anomaly_batch_ms_per_day={batch_ms:.4f} carewatch_us_per_sample={cw_us:.2f} "
          f"observe_us_per_point={obs_us:.2f} worker_us_per_sample={worker_us:.1f} service_ms_per_meter_day={day_ms:.2f}")


async def service_path(meters: int, rng: random.Random) -> tuple[float, float, float]:
    """One simulated day of `meters` meters polled every 5 minutes, through AnalyticsService as
    the agent drives it: one observe() per poll round, then the day is closed after midnight."""
    import tempfile

    start = datetime(2024, 3, 4, tzinfo=DEFAULT_TZ)
    now = [start.timestamp()]
    out: list[Point] = []

    async def emit(points: list[Point]) -> None:
        out.extend(points)

    with tempfile.TemporaryDirectory() as tmp:
        cfg = EdgeConfig(site="bench", gateway="gw", state_dir=tmp, uplink={"url": "mqtt://127.0.0.1:1"},
                         analytics={"meter_anomaly": True, "care_watch": True})
        svc = AnalyticsService(cfg, emit, Metrics(), clock=lambda: now[0], queue_max=100_000)
        svc.reconcile([Device(f"m{i}", "chint-ddsu666", Transport("tcp", host="h", port=502),
                              options={"care_watch": i % 2 == 0}) for i in range(meters)])
        task = asyncio.create_task(svc.run())
        await svc.flush()                       # model loaded, registry applied
        profiles = [Household(i).day_profile(rng) for i in range(meters)]
        rounds = []
        for k in range(288):
            ts = int((start + timedelta(minutes=5 * k)).timestamp() * 1e9)
            rounds.append([Point("meter", {"site": "bench", "gateway": "gw", "device": f"m{i}"},
                                 {"active_power": profiles[i][k // 3], "energy_import": 1.0}, ts)
                           for i in range(meters)])
        t_obs = 0.0
        t0 = time.perf_counter()
        for batch in rounds:
            t = time.perf_counter()
            svc.observe(batch)
            t_obs += time.perf_counter() - t
        await svc.flush()
        t_samples = time.perf_counter() - t0
        now[0] = (start + timedelta(days=1, minutes=6)).timestamp()
        t = time.perf_counter()
        await svc.flush()
        t_close = time.perf_counter() - t
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    n = meters * 288
    assert sum(p.measurement == "meter_anomaly" for p in out) == meters, "every meter-day scored"
    return t_obs / n * 1e6, (t_samples - t_obs) / n * 1e6, (t_samples + t_close) / meters * 1e3


if __name__ == "__main__":
    main()
