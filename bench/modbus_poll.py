"""Benchmark: polling many simulated meters of several profiles over Modbus TCP.

Starts the meter simulator (simulators/meter.py, real TCP sockets) with N units per profile on one
endpoint each, then reads every meter as fast as the per-endpoint limit allows, twice:
  planned   - the profile's plan (edge/modbus/plan.py): the fewest requests the register map allows
  per-field - one request per field, as peers (ThingsBoard's gateway) do
and prints polls per second, requests per poll and p50/p99 poll latency for both.

    .venv/bin/python bench/modbus_poll.py [--units 20] [--seconds 8] [--parallel 4]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge.modbus.plan import ReadRequest, plan_reads  # noqa: E402
from edge.modbus.reader import read_meter  # noqa: E402
from edge.modbus.transport import Bus  # noqa: E402
from edge.profiles import ProfileLibrary  # noqa: E402
from edge.registry import Transport  # noqa: E402
from simulators.meter import MeterServer, SimMeter  # noqa: E402

PROFILES = ("eastron-sdm120", "eastron-sdm630", "chint-dtsu666", "chint-ddsu666", "hiking-dds238-2", "acrel-adw300")


def per_field_plan(plan: list[ReadRequest]) -> list[ReadRequest]:
    """One request per field (what a one-value-per-request poller sends); quirk alignment kept."""
    out = []
    for req in plan:
        for spec in req.registers:
            address, count = spec.address, spec.width
            if req.function in (3, 4) and address < req.address + req.count and req.count % 2 == 0 and address % 2:
                address -= 1  # keep an even-address meter happy
            if req.count % 2 == 0 and count % 2 and req.function in (3, 4):
                count += 1
            out.append(ReadRequest(req.function, address, count, (spec,)))
    return out


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


async def run_mode(targets, seconds: float, parallel: int, mode: str) -> dict:
    """targets: (bus, unit, plan). Each endpoint gets `parallel` workers polling its meters round-robin."""
    lat: list[float] = []
    requests = polls = failures = 0
    stop_at = time.monotonic() + seconds

    async def worker(items):
        nonlocal requests, polls, failures
        i = 0
        while time.monotonic() < stop_at:
            bus, unit, plan = items[i % len(items)]
            i += 1
            t0 = time.perf_counter()
            r = await read_meter(bus, unit, plan, retries=0)
            lat.append((time.perf_counter() - t0) * 1000)
            requests += r.requests
            polls += 1
            failures += 0 if r.complete else 1

    by_bus: dict[int, list] = {}
    for t in targets:
        by_bus.setdefault(id(t[0]), []).append(t)
    workers = []
    for items in by_bus.values():
        for k in range(parallel):
            workers.append(worker(items[k::parallel] or items))
    t0 = time.monotonic()
    await asyncio.gather(*workers)
    took = time.monotonic() - t0
    return {"mode": mode, "polls": polls, "pps": polls / took, "req_per_poll": requests / max(polls, 1),
            "p50": pct(lat, 0.5), "p99": pct(lat, 0.99), "failures": failures}


async def main(args) -> None:
    lib = ProfileLibrary()
    servers, targets_planned, targets_field = [], [], []
    for pid in PROFILES:
        prof = lib.get(pid)
        srv = MeterServer({u: SimMeter(prof, u) for u in range(1, args.units + 1)})
        port = await srv.start("127.0.0.1", 0)
        servers.append(srv)
        bus = Bus(Transport("tcp", host="127.0.0.1", port=port), 2.0, parallel=args.parallel)
        plan = plan_reads(prof)
        fplan = per_field_plan(plan)
        for u in range(1, args.units + 1):
            targets_planned.append((bus, u, plan))
            targets_field.append((bus, u, fplan))
    meters = len(targets_planned)
    print(f"{meters} simulated meters ({args.units} each of {', '.join(PROFILES)}), one TCP endpoint per profile, "
          f"{args.parallel} connection(s) per endpoint, {args.seconds:g} s per mode")
    results = []
    for mode, targets in (("planned", targets_planned), ("per-field", targets_field)):
        r = await run_mode(targets, args.seconds, args.parallel, mode)
        results.append(r)
        print(f"  {mode:<9}  {r['pps']:8.1f} polls/s  {r['req_per_poll']:5.2f} requests/poll  "
              f"p50 {r['p50']:6.2f} ms  p99 {r['p99']:6.2f} ms  ({r['polls']} polls, {r['failures']} incomplete)")
    for t in {id(b): b for b, _, _ in targets_planned}.values():
        t.close()
    for srv in servers:
        await srv.stop()
    p, f = results
    print(f"  planned reads are {p['pps'] / f['pps']:.1f}x the polls/s with {f['req_per_poll'] / p['req_per_poll']:.1f}x "
          "fewer requests per poll")
    print(f"BENCH modbus_poll meters={meters} parallel={args.parallel} polls_per_s={p['pps']:.1f} "
          f"requests_per_poll={p['req_per_poll']:.2f} p50_ms={p['p50']:.2f} p99_ms={p['p99']:.2f} "
          f"field_polls_per_s={f['pps']:.1f} field_requests_per_poll={f['req_per_poll']:.2f} "
          f"field_p50_ms={f['p50']:.2f} field_p99_ms={f['p99']:.2f} speedup={p['pps'] / f['pps']:.2f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--units", type=int, default=20, help="simulated meters per profile (1-247)")
    ap.add_argument("--seconds", type=float, default=8.0, help="duration of each mode")
    ap.add_argument("--parallel", type=int, default=4, help="connections per endpoint")
    a = ap.parse_args()
    if not 1 <= a.units <= 247:
        ap.error("--units: 1 to 247")
    asyncio.run(main(a))
