#!/usr/bin/env python3
"""Analytics cost on this box: face detection per gate snapshot, anomaly score per meter-day,
care-watch update per sample. Run: python bench/analytics.py [--rounds N]

Last line, always the same form:
BENCH analytics faces_ms_per_image=... anomaly_ms_per_day=... anomaly_batch_ms_per_day=... carewatch_us_per_sample=...
"""

from __future__ import annotations

import argparse
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
from simulators.households import Household  # noqa: E402

IMAGES = ["astronaut.jpg", "grace_hopper.jpg", "coffee.jpg", "two_faces.jpg"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
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

    print(f"BENCH analytics faces_ms_per_image={faces_ms:.1f} anomaly_ms_per_day={single_ms:.3f} "
          f"anomaly_batch_ms_per_day={batch_ms:.4f} carewatch_us_per_sample={cw_us:.2f}")


if __name__ == "__main__":
    main()
