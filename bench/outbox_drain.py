#!/usr/bin/env python3
"""Outbox drain: fill the edge's outbox with a backlog while the uplink is down, then start the
edge agent (a real `poplar-edge run` process, with simulated meters still polled every second)
and measure how fast the backlog reaches InfluxDB through the real central Mosquitto and the real
collector, and how long live points wait meanwhile.

Run: python bench/outbox_drain.py [--points 1000000] [--meters 20] [--batch 5000] [--inflight 8]

Figures: fill rate into SQLite, drain rate (points/s from the agent's start until InfluxDB holds
the whole backlog), the live lane's ack latency during the drain (sampled from the agent's
status file), and where the collector spends its time (sink_ms_total over the drain), which says
whether the drain is limited by the collector/InfluxDB side or by the edge.

Last line, always the same form:
BENCH outbox_drain points=... fill_s=... fill_pps=... drain_s=... drain_pps=... live_p50_ms=... live_max_ms=... collector_sink_share=... edge_cpu_s=...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.points import Point, Priority
from edge.outbox import Outbox
from tests.servers import InfluxDB1, Mosquitto, free_port

BIN = Path(sys.executable).parent
SITE, GW = "bench-site", "gw-bench"


def cli(*args: str) -> None:
    subprocess.run([str(BIN / args[0]), *args[1:]], check=True, capture_output=True, cwd=ROOT)


def spawn(tmp: Path, name: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / args[0]), *args[1:]], stdout=open(tmp / f"{name}.log", "ab"),
                            stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)


async def fill(path: Path, n: int) -> float:
    ob = Outbox(path, max_bytes=8 * 1024**3, commit_interval_s=0.05, max_commit_points=50_000)
    await ob.open()
    t0_ns = time.time_ns() - 6 * 3600 * 10**9  # a six-hour backlog
    t = time.perf_counter()
    chunk = 20_000
    for lo in range(0, n, chunk):
        # 20 meters' worth of readings, like a day of a small compound
        await ob.put([Point("meter", {"site": SITE, "gateway": GW, "device": f"backlog-{i % 20}"},
                            {"voltage": 220.0 + (i % 97) / 10, "current": 1.5, "energy_import": float(i), "seq": i},
                            t0_ns + i * 1000, Priority.TELEMETRY) for i in range(lo, min(n, lo + chunk))])
    took = time.perf_counter() - t
    await ob.close()
    return took


def count(influx: InfluxDB1, db: str) -> int:
    return influx.count("meter", db, "seq")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--meters", type=int, default=20, help="simulated meters polled every second during the drain")
    ap.add_argument("--batch", type=int, default=5000, help="uplink batch_max_points")
    ap.add_argument("--inflight", type=int, default=8, help="uplink max_inflight")
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, outbox)")
    a = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="poplar-bench-drain-"))
    central = Mosquitto(tmp / "central", name="central").start()
    influx = InfluxDB1(tmp / "influx").start()
    procs: list[subprocess.Popen] = []
    try:
        db = "bench"
        influx.create_db(db)
        edge_cfg, coll_cfg = tmp / "edge.yaml", tmp / "collector.yaml"
        cli("poplar-edge", "init", "--config", str(edge_cfg), "--site", SITE, "--gateway", GW,
            "--state-dir", str(tmp / "edge-state"), "--uplink", central.url)
        doc = yaml.safe_load(edge_cfg.read_text())
        doc["uplink"].update({"batch_max_points": a.batch, "max_inflight": a.inflight, "ack_timeout_s": 30})
        doc["outbox"] = {"max_bytes": 8 * 1024**3}
        doc["health_interval_s"] = 5
        edge_cfg.write_text(yaml.safe_dump(doc))
        cli("poplar-collector", "init", "--config", str(coll_cfg), "--broker", central.url,
            "--influx-url", influx.url, "--database", db)
        cdoc = yaml.safe_load(coll_cfg.read_text())
        cdoc["health_interval_s"] = 1
        coll_cfg.write_text(yaml.safe_dump(cdoc))
        cli("poplar-collector", "gateways", "add", GW, "--site", SITE, "--config", str(coll_cfg))
        if a.meters:
            port = free_port()
            procs.append(spawn(tmp, "sim", "poplar-sim", "meter", "--profile", "eastron-sdm120", "--port", str(port),
                               "--units", f"1-{a.meters}"))
            for u in range(1, a.meters + 1):
                cli("poplar-edge", "devices", "add", f"live-{u}", "--profile", "eastron-sdm120", "--tcp",
                    f"127.0.0.1:{port}", "--unit", str(u), "--interval", "1", "--config", str(edge_cfg))

        outbox_db = tmp / "edge-state" / "outbox.db"
        print(f"filling the outbox with {a.points} points (uplink down) ...", flush=True)
        fill_s = asyncio.run(fill(outbox_db, a.points))
        size_mb = os.path.getsize(outbox_db) / 1e6
        print(f"fill: {fill_s:.1f} s, {a.points / fill_s:,.0f} points/s, outbox file {size_mb:.0f} MB")

        coll = spawn(tmp, "collector", "poplar-collector", "run", "--config", str(coll_cfg))
        procs.append(coll)
        deadline = time.time() + 20
        while "subscribed to" not in (tmp / "collector.log").read_text() and time.time() < deadline:
            time.sleep(0.1)
        t0 = time.perf_counter()
        edge = spawn(tmp, "edge", "poplar-edge", "run", "--config", str(edge_cfg))
        procs.append(edge)
        live: list[int] = []
        status = tmp / "edge-state" / "status.json"
        last_print = 0.0
        done_at = None
        while time.perf_counter() - t0 < a.timeout:
            time.sleep(0.5)
            try:
                st = json.loads(status.read_text())
                g = st["metrics"]["gauges"]
                if "uplink_live_ack_latency_ms" in g and st["outbox"]["rows"] > a.batch:
                    live.append(int(g["uplink_live_ack_latency_ms"]))
            except (OSError, ValueError, KeyError):
                pass
            n = count(influx, db)
            el = time.perf_counter() - t0
            if el - last_print >= 5:
                print(f"  {el:5.1f} s: {n:,} of {a.points:,} in InfluxDB", flush=True)
                last_print = el
            if n >= a.points:
                done_at = el
                break
        if done_at is None:
            raise SystemExit(f"the backlog did not drain within {a.timeout} s; logs in {tmp}")
        drain_pps = a.points / done_at
        edge_cpu = 0.0
        try:
            import psutil
            edge_cpu = sum(psutil.Process(edge.pid).cpu_times()[:2])
            coll_cpu = sum(psutil.Process(coll.pid).cpu_times()[:2])
        except Exception:
            coll_cpu = 0.0
        ch = influx.rows("SELECT last(sink_ms_total) AS ms, last(sink_writes) AS w, last(points_written) AS p "
                         "FROM collector_health WHERE gateway = '_collector'", db)
        sink_s = (ch[0]["ms"] or 0) / 1000 if ch else 0.0
        share = sink_s / done_at if done_at else 0.0
        live_in_influx = influx.count("meter", db, "voltage", "WHERE device =~ /^live-/")
        print(f"drain: {done_at:.1f} s for {a.points:,} points = {drain_pps:,.0f} points/s "
              f"(batches of {a.batch}, {a.inflight} in flight)")
        if live:
            print(f"live lane ack latency during the drain: p50 {statistics.median(live):.0f} ms, "
                  f"max {max(live)} ms ({len(live)} samples); {live_in_influx} live meter rows written meanwhile")
        print(f"CPU during the drain: edge agent {edge_cpu:.1f} s, collector {coll_cpu:.1f} s; "
              f"collector waited on InfluxDB writes {sink_s:.1f} s ({share:.0%} of the drain)")
        if coll_cpu > 0.7 * done_at:
            print("the collector process was busy most of the drain (one core): the drain is collector-bound")
        print(f"BENCH outbox_drain points={a.points} fill_s={fill_s:.1f} fill_pps={a.points / fill_s:.0f} "
              f"drain_s={done_at:.1f} drain_pps={drain_pps:.0f} "
              f"live_p50_ms={statistics.median(live) if live else -1:.0f} live_max_ms={max(live) if live else -1} "
              f"collector_sink_share={share:.2f} edge_cpu_s={edge_cpu:.1f} collector_cpu_s={coll_cpu:.1f}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        central.stop()
        influx.stop()
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
