#!/usr/bin/env python3
"""MQTT mapping cost without a broker: simulator payloads -> MqttSource._handle -> points -> wire JSON.

Isolates the CPU the edge spends per message on mapping (profile interpretation, JSON parsing,
privacy, tags, stable times) and on serialising the points for the outbox, so it can be
profiled (py-spy, cProfile) without paho, Mosquitto or SQLite in the picture.

Run: python bench/mqtt_map.py [--dialect D] [--messages N] [--cprofile] [--reference]
(D: hikvision-isapi, dahua-vto2mqtt, generic-facegate, gbt24476-elevator)
Last line: BENCH mqtt_map dialect=... mapper=... messages=... us_per_message=... us_map=... us_wire=...
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as paho  # noqa: E402

from common.wire import point_json  # noqa: E402
from edge.config import BrokerConfig, EdgeConfig, UplinkConfig  # noqa: E402
from edge.metrics import Metrics  # noqa: E402
from edge.mqtt.source import MqttSource  # noqa: E402
from edge.profiles import ProfileLibrary  # noqa: E402
from edge.registry import Device, Registry, Transport  # noqa: E402
from simulators import payloads as pl  # noqa: E402


def messages(dialect: str, n: int, gates: int, seed: int = 0) -> list[paho.MQTTMessage]:
    """N simulator messages of DIALECT from GATES devices (gate-1...), 37 ms apart. Elevators:
    mostly status, some faults and keep-alives, each car moving between messages."""
    rng = random.Random(seed)
    t = datetime(2026, 3, 2, 8, 0, tzinfo=timezone.utc)
    cars = {f"gate-{g}": pl.ElevatorModel(seed=g) for g in range(1, gates + 1)} \
        if dialect == pl.ELEVATOR_DIALECT else {}
    out = []
    for i in range(n):
        dev, when = f"gate-{rng.randint(1, gates)}", t + timedelta(milliseconds=37 * i)
        if dialect == pl.ELEVATOR_DIALECT:
            car, kind = cars[dev], rng.random()
            car.step(rng.uniform(0.5, 5))
            topic, payload = pl.elevator_status(dev, car, when) if kind < 0.9 else \
                pl.elevator_fault(dev, rng, when, car) if kind < 0.95 else pl.elevator_heartbeat(dev, rng, when, i)
        else:
            topic, payload = pl.facegate_message(dialect, dev, rng, when)
        m = paho.MQTTMessage(mid=i % 65535 + 1, topic=topic.encode())
        m.payload, m.qos = payload, 1
        out.append(m)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dialect", default="hikvision-isapi",
                    choices=[*pl.FACEGATE_DIALECTS, pl.ELEVATOR_DIALECT])
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--gates", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cprofile", action="store_true", help="print the top functions by own time")
    ap.add_argument("--reference", action="store_true",
                    help="map with the frozen mapper before code generation (tests/mqtt_reference_mapper.py)")
    a = ap.parse_args()
    if a.reference:
        from edge.mqtt import source
        from tests import mqtt_reference_mapper as ref
        source.map_message, source.device_id_of, source.match_topic = ref.map_message, ref.device_id_of, ref.match_topic
        source.MapError = ref.MapError  # type: ignore[misc]  # what the source catches
    with tempfile.TemporaryDirectory(prefix="bench-map-") as tmp:
        cfg = EdgeConfig(site="bench", gateway="gw-01", state_dir=str(Path(tmp) / "state"),
                         local_broker=BrokerConfig(url="mqtt://127.0.0.1:1"),
                         uplink=UplinkConfig(url="mqtt://127.0.0.1:1"))
        cfg.state_path.mkdir(parents=True)
        reg = Registry(cfg.registry_db)
        for n in range(1, a.gates + 1):
            reg.add(Device(id=f"gate {n}", profile=a.dialect, transport=Transport("mqtt", mqtt_id=f"gate-{n}"),
                           tags={"building": str(n % 20 + 1)}))
        src = MqttSource(cfg, ProfileLibrary(), reg, None, Metrics(), flood_rate=1e12, flood_burst=1e12)  # type: ignore[arg-type]
        src.reconcile(reg.all())
        msgs = messages(a.dialect, a.messages, a.gates)
        now = time.time_ns()

        def run() -> tuple[float, float, int]:
            t0 = time.perf_counter()
            results = [src._handle(m, now) for m in msgs]
            t1 = time.perf_counter()
            n = 0
            for r in results:
                if r is not None:
                    for p in r[0]:
                        point_json(p)
                        n += 1
            return t1 - t0, time.perf_counter() - t1, n

        if a.cprofile:
            import cProfile
            import pstats
            pr = cProfile.Profile()
            pr.enable()
            run()
            pr.disable()
            pstats.Stats(pr).sort_stats("tottime").print_stats(25)
        best_map = best_wire = float("inf")
        points = 0
        for _ in range(a.rounds):
            tm, tw, points = run()
            best_map, best_wire = min(best_map, tm), min(best_wire, tw)
        reg.close()
    us_map = best_map * 1e6 / a.messages
    us_wire = best_wire * 1e6 / a.messages
    dropped = src.metrics.counters["mqtt_dropped"]
    print(f"{a.messages} {a.dialect} messages -> {points} points ({dropped} dropped over all rounds): "
          f"map {us_map:.1f} us, wire JSON {us_wire:.1f} us per message (best of {a.rounds})")
    print(f"BENCH mqtt_map dialect={a.dialect} mapper={'reference' if a.reference else 'compiled'} messages={a.messages} us_per_message={us_map + us_wire:.1f} "
          f"us_map={us_map:.1f} us_wire={us_wire:.1f}")


if __name__ == "__main__":
    main()
