"""Collector throughput: points/s from the uplink broker into InfluxDB, for one and for two
collector processes, beside a plain HTTP write of the same line protocol straight to InfluxDB
(the ceiling). Real Mosquitto and InfluxDB 1.6.7 in a temp folder.

    .venv/bin/python bench/collector_write.py [--points 300000] [--batch 2000]

Ends with: BENCH collector_write points=... ceiling_pps=... one_pps=... two_pps=... one_ratio=... two_ratio=...
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from common import wire  # noqa: E402
from common.mqtt import AsyncMqtt, MqttUrl  # noqa: E402
from common.points import Point  # noqa: E402
from tests.servers import InfluxDB1, Mosquitto  # noqa: E402

BIN = Path(sys.executable).parent
SITE, GATEWAYS = "bench-site", ["gw1", "gw2", "gw3", "gw4"]
WRITE_POINTS = 50_000


def make_batches(total: int, per_batch: int, t0: int) -> list[tuple[str, str, bytes, int]]:
    """(gateway, batch id, payload, points): meters of 6 fields, 500 devices per gateway."""
    out = []
    n = 0
    i = 0
    while n < total:
        gw = GATEWAYS[i % len(GATEWAYS)]
        pts = []
        for k in range(min(per_batch, total - n)):
            j = n + k
            pts.append(Point("meter", {"site": SITE, "gateway": gw, "device": f"{j % 500}号电表", "building": f"{j % 20}幢"},
                             {"voltage": 220.0 + (j % 100) / 10, "current": 5.0 + (j % 7), "active_power": 1100.5,
                              "power_factor": 0.98, "frequency": 50.01, "energy_import": 1000.0 + j / 1000},
                             t0 + j * 1000))
        bid = f"b{i}"
        out.append((gw, bid, wire.encode_batch(wire.Batch(SITE, gw, bid, pts, time.time_ns())), len(pts)))
        n += len(pts)
        i += 1
    return out


def lines_of(batches, limits) -> list[str]:
    from collector.validate import LineMaker
    maker = LineMaker(limits)
    out = []
    for _, _, payload, _ in batches:
        out.extend(maker.check(wire.decode_batch(payload), time.time_ns()).lines)
    return out


def ceiling(influx: InfluxDB1, db: str, lines: list[str], chunk: int) -> float:
    """Plain HTTP writes of the same line protocol, gzip level 1 as the collector sends, same chunk size."""
    bodies = [gzip.compress(("\n".join(lines[i:i + chunk]) + "\n").encode(), 1) for i in range(0, len(lines), chunk)]
    t = time.perf_counter()
    for b in bodies:
        req = urllib.request.Request(f"{influx.url}/write?db={db}&precision=ns", data=b, method="POST",
                                     headers={"Content-Encoding": "gzip"})
        with urllib.request.urlopen(req, timeout=120) as r:
            assert r.status == 204
    return len(lines) / (time.perf_counter() - t)


async def publish_and_wait(url: str, batches) -> float:
    acks: set[str] = set()
    mq = AsyncMqtt(MqttUrl.parse(url), f"bench-edge-{uuid.uuid4().hex[:6]}", max_inflight=1000)
    done = asyncio.Event()

    def on(msgs):
        for m in msgs:
            a = wire.decode_ack(m.payload)
            if a.status == "ok":
                acks.add(a.batch_id)
        if len(acks) >= len(batches):
            done.set()

    mq.on_messages(on)
    await mq.start()
    for gw in GATEWAYS:
        await mq.subscribe(wire.ack_topic(SITE, gw))
    t = time.perf_counter()
    futs = [mq.publish_nowait(wire.up_topic(SITE, gw), payload) for gw, _, payload, _ in batches]
    await asyncio.gather(*futs)
    async with asyncio.timeout(600):
        await done.wait()
    el = time.perf_counter() - t
    await mq.stop()
    return el


def run_collectors(tmp: Path, broker: Mosquitto, influx: InfluxDB1, db: str, n: int, batches, total: int) -> float:
    procs = []
    cfgs = []
    for k in range(n):
        cfg = tmp / f"c{n}-{k}.yaml"
        subprocess.run([str(BIN / "poplar-collector"), "init", "--config", str(cfg), "--broker", broker.url,
                        "--influx-url", influx.url, "--database", db, "--state-dir", str(tmp / f"state{n}"),
                        "--force"], check=True, capture_output=True)
        with open(cfg, "a") as f:
            f.write(f"name: bench-{n}-{k}\nlog_level: warning\nwrite: {{max_points: {WRITE_POINTS}}}\n")
        cfgs.append(cfg)
    for gw in GATEWAYS:
        subprocess.run([str(BIN / "poplar-collector"), "gateways", "add", gw, "--site", SITE, "--config",
                        str(cfgs[0])], check=True, capture_output=True)
    for k, cfg in enumerate(cfgs):
        cmd = [str(BIN / "poplar-collector")]
        if os.environ.get("BENCH_PROFILE"):  # cProfile each collector: /tmp/lp/runcoll.py style wrapper
            cmd = [sys.executable, os.environ["BENCH_PROFILE"]]
        procs.append(subprocess.Popen(cmd + ["run", "--config", str(cfg)],
                                      stdout=open(tmp / f"c{n}-{k}.log", "wb"), stderr=subprocess.STDOUT))
    try:
        time.sleep(2.5)
        el = asyncio.run(publish_and_wait(broker.url, batches))
    finally:
        for p in procs:
            p.terminate()
            p.wait(30)
    return total / el


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=300_000)
    ap.add_argument("--batch", type=int, default=2000, help="points per uplink batch")
    ap.add_argument("--write-points", type=int, default=50_000, help="collector write.max_points")
    args = ap.parse_args()
    global WRITE_POINTS
    WRITE_POINTS = args.write_points
    from collector.config import Limits

    with tempfile.TemporaryDirectory(prefix="bench-collector-") as d:
        tmp = Path(d)
        influx = InfluxDB1(tmp / "influx").start()
        broker = Mosquitto(tmp / "broker").start()
        try:
            t0 = time.time_ns() - 3600 * 10**9
            batches = make_batches(args.points, args.batch, t0)
            total = sum(b[3] for b in batches)
            chunk = args.write_points
            results = {}
            for name in ("ceiling", "one", "two"):
                db = f"bench_{name}"
                influx.create_db(db)
                if name == "ceiling":
                    t = time.perf_counter()
                    lines = lines_of(batches, Limits())
                    cpu = time.perf_counter() - t
                    print(f"hot path (decode + validate + line protocol), in-process: {total / cpu:,.0f} points/s")
                    results[name] = ceiling(influx, db, lines, chunk)
                else:
                    results[name] = run_collectors(tmp, broker, influx, db, 1 if name == "one" else 2, batches, total)
                got = influx.count("meter", db, "voltage")
                assert got == total, f"{name}: {got} of {total} points in InfluxDB"
                print(f"{name:8s} {results[name]:>12,.0f} points/s  ({total} points, all in InfluxDB)")
        finally:
            broker.stop()
            influx.stop()
    c = results["ceiling"]
    print(f"BENCH collector_write points={total} batch={args.batch} ceiling_pps={c:.0f} one_pps={results['one']:.0f} "
          f"two_pps={results['two']:.0f} one_ratio={results['one'] / c:.2f} two_ratio={results['two'] / c:.2f}")


if __name__ == "__main__":
    main()
