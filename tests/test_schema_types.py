"""InfluxDB keeps one type per field of a measurement (per shard): a field that is an integer
from one vendor and a string from another makes InfluxDB refuse the later points (a "field type
conflict"), and data is lost. Every profile must therefore give each field one type, across all
dialects and meter models. Checked here on what the simulators make and the mappers produce."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import datetime, timedelta

from edge.modbus.decode import decode_value
from edge.mqtt.mapper import MapError, map_message
from edge.privacy import Privacy
from edge.profiles import ProfileLibrary
from simulators import payloads
from simulators.meter import SimMeter

LIB = ProfileLibrary()


def _influx_type(v) -> str:
    return {bool: "boolean", int: "integer", float: "float", str: "string"}[type(v)]


def _record(types, measurement, fields, source):
    for k, v in fields.items():
        types[(measurement, k)].setdefault(_influx_type(v), source)


def test_every_mqtt_field_has_one_type_across_dialects():
    types: dict[tuple, dict[str, str]] = defaultdict(dict)
    rng = random.Random(7)
    privacy = Privacy(b"k" * 32)
    t0 = datetime(2026, 3, 2, 7, 0)
    messages = []
    for dialect in ("hikvision-isapi", "dahua-vto2mqtt", "generic-facegate"):
        for i in range(600):
            t = t0 + timedelta(minutes=7 * i)
            messages.append((dialect, *payloads.facegate_message(dialect, f"g{i % 5}", rng, t)))
            if dialect != "dahua-vto2mqtt" and i % 20 == 0:
                messages.append((dialect, *payloads.facegate_heartbeat(dialect, f"g{i % 5}", rng, t)))
    model = payloads.ElevatorModel(-2, 18, seed=3)
    for i in range(600):
        t = t0 + timedelta(seconds=30 * i)
        model.step(30)
        messages.append(("gbt24476-elevator", *payloads.elevator_status("lift-1", model, t)))
        messages.append(("gbt24476-elevator", *payloads.elevator_fault("lift-1", rng, t, model)))
        if i % 10 == 0:
            messages.append(("gbt24476-elevator", *payloads.elevator_heartbeat("lift-1", rng, t, 100 * i)))
    now = int(t0.timestamp() * 1e9)
    mapped = 0
    for dialect, topic, payload in messages:
        try:
            m = map_message(LIB.get(dialect), topic, payload, privacy=privacy, now_ns=now)
        except MapError:
            continue
        for p in m.points:
            _record(types, p.measurement, p.fields, dialect)
            mapped += 1
    assert mapped > 2000
    conflicts = {k: v for k, v in types.items() if len(v) > 1}
    assert not conflicts, f"fields with more than one type (measurement, field): {conflicts}"


def test_every_meter_field_has_one_type_across_models():
    types: dict[tuple, dict[str, str]] = defaultdict(dict)
    for pid in LIB.ids():
        if LIB.kind(pid) != "modbus":
            continue
        prof = LIB.get(pid)
        meter = SimMeter(prof, 1, seed=1)
        meter.refresh(datetime(2026, 3, 2, 19, 0).timestamp())
        for spec in prof.polled_registers():
            regs = [meter._image.get((spec.function, spec.address + i), 0) for i in range(spec.width)]
            value = decode_value(spec, regs)
            _record(types, prof.measurement, {spec.field: value}, pid)
    conflicts = {k: v for k, v in types.items() if len(v) > 1}
    assert not conflicts, f"meter fields with more than one type: {conflicts}"
