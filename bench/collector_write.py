"""Collector throughput: points/s from the uplink broker into InfluxDB, for one and for two
collector processes, beside a plain HTTP write of the same line protocol straight to InfluxDB
(the ceiling). Real Mosquitto and InfluxDB 1.6.7 in a temp folder.

    .venv/bin/python bench/collector_write.py [--points 300000] [--batch 2000] [--rounds 2]
                                              [--write-points 50000] [--gzip] [--wire 1|2]
                                              [--in-flight N]

Method (what is timed, and why the figures are comparable):
- The uplink batches (meters of 6 float fields, 500 devices per gateway, 4 gateways) are encoded
  as the edge encodes them (outbox bodies, then `encode_batch_raw`; wire v2 unless --wire 1)
  before anything is timed; the edge's CPU for that is printed. Each round creates a fresh
  database per run, so every run writes the same points into an empty database.
- The in-process hot path (decode; checks and line protocol) runs once, before the rounds, with
  the collector's GC settings; it is printed split in two.
- ceiling: the line protocol the collector itself produces, cut into bodies of --write-points
  points (the collector's `write.max_points`), compressed or not as the collector sends them
  (--gzip), POSTed one after another over one kept-alive HTTP connection. Only the POSTs are
  timed: this is InfluxDB's own ingest rate, the most any collector could reach.
- one / two: the collectors start, subscribe (shared subscription) and sit idle; then a
  publisher sends every batch at once (QoS 1, 1000 in flight) while the collectors take them.
  Timed from the first publish to the last "ok" ack back at the publisher: broker hop, decode,
  validation, line protocol, HTTP write, ack. The publisher's own work is small (pre-encoded
  payloads; its CPU time is printed).
- Rounds alternate ceiling, one, two, so a burst of load from other users of the machine hits
  all three alike; the BENCH line gives medians, and min-max ranges are printed per run.
- CPU seconds per point of every process (InfluxDB, Mosquitto, collectors, the publisher) are read
  from /proc and printed: on a shared 2-core machine those are the stable figures. InfluxDB,
  Mosquitto, the publisher and the collectors share the same cores, so in the one/two runs the
  collectors compete with InfluxDB for CPU, while the ceiling run gives InfluxDB the machine
  (it uses more than one core there): a ratio below 1 is largely that competition, and one
  collector (one process, one core) leaves InfluxDB one core. With the CPU figures, the rate on
  separate hosts is about 1e6 / (collector µs per point) per collector core.
- The collectors' own wait counters (status file) are printed: time waiting for batches (the
  broker side is short of work) and for the InfluxDB writers (the sink is the limit), and the
  time the HTTP writes took (summed over the collectors, so with two it can exceed the run).
- With 300,000 points and 50,000-point writes, the last write does not overlap anything (the
  first does not wait for 50,000 points of checking: an idle writer takes a smaller group);
  --points 1000000 shows the steady state. --in-flight sets the collectors' write.max_in_flight.
- Every run checks that all points arrived (count in InfluxDB) before its figure is printed.

Ends with: BENCH collector_write points=... batch=... write_points=... gzip=... rounds=... ceiling_pps=...
one_pps=... two_pps=... one_ratio=... two_ratio=... wire=... (wire= was added with wire v2; the
keys before it are as they were)
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gzip
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from common import wire  # noqa: E402
from common.mqtt import AsyncMqtt, MqttUrl  # noqa: E402
from common.points import Point  # noqa: E402
from tests.servers import InfluxDB1, Mosquitto  # noqa: E402

BIN = Path(sys.executable).parent
SITE, GATEWAYS = "bench-site", ["gw1", "gw2", "gw3", "gw4"]
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (all its threads, not its children)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            parts = f.read().rsplit(")", 1)[1].split()
        return (int(parts[11]) + int(parts[12])) / _TICK  # utime stime
    except (OSError, IndexError, ValueError):
        return 0.0


def make_batches(total: int, per_batch: int, t0: int, version: int) -> list[tuple[str, str, bytes, int]]:
    """(gateway, batch id, payload, points): meters of 6 fields, 500 devices per gateway, encoded
    as the edge does (points stored as `point_json` bodies, then `encode_batch_raw`)."""
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
        bodies = [wire.point_json(p) for p in pts]
        out.append((gw, bid, wire.encode_batch_raw(SITE, gw, bid, time.time_ns(), bodies, version=version), len(pts)))
        n += len(pts)
        i += 1
    return out


def lines_of(batches, limits) -> tuple[list[bytes], float, float]:
    """The collector's line protocol for the batches, and the CPU seconds of decoding (zlib and
    JSON) and of checking and formatting them."""
    from collector.service import tune_gc
    from collector.validate import LineMaker
    tune_gc()  # as the collector runs
    maker = LineMaker(limits)
    out = []
    decode = check = 0.0
    for _, _, payload, _ in batches:
        t = time.process_time()
        b = wire.decode_batch_items(payload)
        t1 = time.process_time()
        out.extend(maker.check_batch(b, time.time_ns()).lines)
        decode, check = decode + t1 - t, check + time.process_time() - t1
    return out, decode, check


def bodies_of(lines: list[bytes], chunk: int, use_gzip: bool) -> list[bytes]:
    """The HTTP bodies the collector would send for these lines (built before the timing)."""
    from collector.service import body_of
    bodies = [body_of(lines[i:i + chunk]) for i in range(0, len(lines), chunk)]
    return [gzip.compress(b, 1) for b in bodies] if use_gzip else bodies


def ceiling(influx: InfluxDB1, db: str, bodies: list[bytes], points: int, use_gzip: bool) -> float:
    """Plain HTTP writes of the same line protocol, as the collector sends it, over one connection."""
    headers = {"Content-Type": "text/plain; charset=utf-8"}
    if use_gzip:
        headers["Content-Encoding"] = "gzip"
    u = urlsplit(influx.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    t = time.perf_counter()
    for b in bodies:
        conn.request("POST", f"/write?db={db}&precision=ns", body=b, headers=headers)
        r = conn.getresponse()
        r.read()
        assert r.status == 204, r.status
    el = time.perf_counter() - t
    conn.close()
    return points / el


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


def write_configs(tmp: Path, broker: Mosquitto, influx: InfluxDB1, db: str, n: int, tag: str, args) -> list[Path]:
    cfgs = []
    for k in range(n):
        cfg = tmp / f"c{tag}-{k}.yaml"
        subprocess.run([str(BIN / "poplar-collector"), "init", "--config", str(cfg), "--broker", broker.url,
                        "--influx-url", influx.url, "--database", db, "--state-dir", str(tmp / f"state-{tag}"),
                        "--force"], check=True, capture_output=True)
        doc = yaml.safe_load(cfg.read_text())
        write = {"max_points": args.write_points}
        if args.in_flight:
            write["max_in_flight"] = args.in_flight
        doc.update(name=f"bench-{tag}-{k}", log_level="warning", write=write)
        doc["sink"]["gzip"] = args.gzip
        cfg.write_text(yaml.safe_dump(doc, allow_unicode=True))
        cfgs.append(cfg)
    for gw in GATEWAYS:
        subprocess.run([str(BIN / "poplar-collector"), "gateways", "add", gw, "--site", SITE, "--config",
                        str(cfgs[0])], check=True, capture_output=True)
    return cfgs


def wait_subscribed(state: Path, names: list[str], procs, timeout: float = 60) -> None:
    """Until every collector says it is connected (it subscribes on connecting). Publishing before
    that would lose the batches: a shared subscription nobody holds yet drops them, and the
    publisher would wait for acks forever."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise SystemExit(f"a collector exited with {p.returncode}; see its log in {state.parent}")
        try:
            if all(json.loads((state / f"status-{n}.json").read_text())["broker"]["connected"] for n in names):
                time.sleep(0.5)  # the SUBSCRIBE leaves right after CONNACK; give the broker a moment
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.1)
    raise SystemExit(f"collectors not connected to the broker after {timeout:.0f} s")


def run_collectors(tmp: Path, broker: Mosquitto, influx: InfluxDB1, db: str, n: int, tag: str, batches,
                   total: int, args, cpu: dict) -> float:
    procs = []
    for k, cfg in enumerate(write_configs(tmp, broker, influx, db, n, tag, args)):
        cmd = [str(BIN / "poplar-collector")]
        if os.environ.get("BENCH_PROFILE"):  # e.g. a cProfile wrapper script around collector.cli.main
            cmd = [sys.executable, os.environ["BENCH_PROFILE"]]
        procs.append(subprocess.Popen(cmd + ["run", "--config", str(cfg)],
                                      stdout=open(tmp / f"c{tag}-{k}.log", "wb"), stderr=subprocess.STDOUT))
    try:
        wait_subscribed(tmp / f"state-{tag}", [f"bench-{tag}-{k}" for k in range(n)], procs)
        before = {p.pid: cpu_s(p.pid) for p in procs}
        t = time.process_time()
        el = asyncio.run(publish_and_wait(broker.url, batches))
        cpu["publisher"] = time.process_time() - t
        cpu["collectors"] = sum(cpu_s(p.pid) - before[p.pid] for p in procs)
    finally:
        for p in procs:
            p.terminate()
            p.wait(30)
    waits = collections.Counter()
    for k in range(n):
        try:
            c = json.loads((tmp / f"state-{tag}" / f"status-bench-{tag}-{k}.json").read_text())["counters"]
        except (OSError, ValueError, KeyError):
            continue
        for key in ("checker_idle_ms", "checker_blocked_ms", "sink_ms_total", "sink_writes"):
            waits[key] += c.get(key, 0)
    cpu["waits"] = dict(waits)
    return total / el


def wait_count(influx: InfluxDB1, db: str, total: int) -> int:
    """Count the points; InfluxDB 1.x can briefly under-count while it snapshots its cache."""
    deadline = time.monotonic() + 10
    while True:
        got = influx.count("meter", db, "voltage")
        if got == total or time.monotonic() > deadline:
            return got
        time.sleep(0.5)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=300_000)
    ap.add_argument("--batch", type=int, default=2000, help="points per uplink batch")
    ap.add_argument("--write-points", type=int, default=50_000, help="collector write.max_points (and ceiling body size)")
    ap.add_argument("--gzip", action=argparse.BooleanOptionalAction, default=False,
                    help="gzip the HTTP bodies (collector sink.gzip and the ceiling alike)")
    ap.add_argument("--rounds", type=int, default=2, help="ceiling/one/two rounds (figures: medians)")
    ap.add_argument("--in-flight", type=int, default=None, help="collector write.max_in_flight (default: its default)")
    ap.add_argument("--wire", type=int, choices=(1, 2), default=wire.WIRE_VERSION,
                    help="uplink batch version the publisher sends (the edge's uplink.wire_version)")
    args = ap.parse_args()
    from collector.config import Limits

    results: dict[str, list[float]] = {"ceiling": [], "one": [], "two": []}
    cpu_per_point: dict[str, list[dict]] = {k: [] for k in results}
    with tempfile.TemporaryDirectory(prefix="bench-collector-") as d:
        tmp = Path(d)
        influx = InfluxDB1(tmp / "influx").start()
        broker = Mosquitto(tmp / "broker").start()
        try:
            t0 = time.time_ns() - 3600 * 10**9
            t = time.process_time()
            batches = make_batches(args.points, args.batch, t0, args.wire)
            total = sum(b[3] for b in batches)
            edge_cpu = time.process_time() - t
            lines, decode, check = lines_of(batches, Limits())
            cpu = decode + check
            print(f"wire v{args.wire}: {sum(len(b[2]) for b in batches) / total:.1f} bytes per point compressed; "
                  f"the edge's encoding (point_json + encode_batch_raw) {edge_cpu / total * 1e6:.2f} µs CPU per point")
            print(f"hot path (decode + validate + line protocol), in-process, one core: {total / cpu:,.0f} points/s "
                  f"({cpu / total * 1e6:.2f} µs CPU per point: decode {decode / total * 1e6:.2f}, "
                  f"check and format {check / total * 1e6:.2f})")
            bodies = bodies_of(lines, args.write_points, args.gzip)
            print(f"bodies: gzip={'on' if args.gzip else 'off'}, {args.write_points} points per write, "
                  f"{args.batch} points per uplink batch")
            for rnd in range(args.rounds):
                for name in ("ceiling", "one", "two"):
                    db = f"bench_{name}_{rnd}"
                    influx.create_db(db)
                    pids = {"influxd": influx.proc.pid, "mosquitto": broker.proc.pid}
                    before = {k: cpu_s(p) for k, p in pids.items()}
                    spent: dict[str, float] = {}
                    if name == "ceiling":
                        pps = ceiling(influx, db, bodies, total, args.gzip)
                    else:
                        pps = run_collectors(tmp, broker, influx, db, 1 if name == "one" else 2, f"{name}{rnd}",
                                             batches, total, args, spent)
                    for k, p in pids.items():
                        spent[k] = cpu_s(p) - before[k]
                    waits = spent.pop("waits", None)
                    got = wait_count(influx, db, total)
                    assert got == total, f"{name}: {got} of {total} points in InfluxDB"
                    results[name].append(pps)
                    us = {k: v / total * 1e6 for k, v in spent.items()}
                    cpu_per_point[name].append(us)
                    print(f"round {rnd + 1} {name:8s} {pps:>10,.0f} points/s  (all {total} in InfluxDB)  CPU µs/point: "
                          + " ".join(f"{k}={v:.1f}" for k, v in sorted(us.items())))
                    if waits:  # summed over the collectors, whole run including their idle start
                        print(f"         collectors waited: for batches {waits['checker_idle_ms']} ms, for the writer "
                              f"{waits['checker_blocked_ms']} ms; {waits['sink_writes']} writes took "
                              f"{waits['sink_ms_total']} ms")
                    influx.query(f'DROP DATABASE "{db}"')
        finally:
            broker.stop()
            influx.stop()
    med = {k: statistics.median(v) for k, v in results.items()}
    for k, v in results.items():
        cpu_med = {c: statistics.median(d[c] for d in cpu_per_point[k]) for c in cpu_per_point[k][0]}
        print(f"{k:8s} median {med[k]:>10,.0f} points/s  range {min(v):,.0f} - {max(v):,.0f}   CPU µs/point (median): "
              + " ".join(f"{c}={x:.1f}" for c, x in sorted(cpu_med.items())))
    c = med["ceiling"]
    print(f"BENCH collector_write points={total} batch={args.batch} write_points={args.write_points} "
          f"gzip={int(args.gzip)} rounds={args.rounds} ceiling_pps={c:.0f} one_pps={med['one']:.0f} "
          f"two_pps={med['two']:.0f} one_ratio={med['one'] / c:.2f} two_ratio={med['two'] / c:.2f} wire={args.wire}")


if __name__ == "__main__":
    main()
