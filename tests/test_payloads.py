import json
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from edge.mqtt.mapper import MapError, map_message
from edge.mqtt.profile import load_mqtt_profile
from edge.privacy import Privacy
from simulators import payloads as P

PROFILES = Path(__file__).resolve().parent.parent / "device_profiles"
PRIV = Privacy(b"k" * 32)
T0 = datetime(2024, 3, 1, 8, 0, tzinfo=timezone.utc)
NOW = int(T0.timestamp()) * 10**9 + 3600 * 10**9


def profile(name):
    return load_mqtt_profile(PROFILES / f"{name}.yaml")


@pytest.mark.parametrize("dialect", P.FACEGATE_DIALECTS)
def test_every_facegate_message_maps(dialect):
    prof, rng = profile(dialect), random.Random(7)
    seen: dict[str, int] = {}
    for i in range(600):
        t = T0 + timedelta(seconds=i * 5)
        topic, body = P.facegate_message(dialect, "gate-1", rng, t)
        m = map_message(prof, topic, body, privacy=PRIV, now_ns=NOW)
        assert m.device_id == "gate-1" and not m.warnings
        for p in m.points:
            assert "time_corrected" not in p.fields
            key = f"{p.measurement}:{p.fields.get('method') or p.tags.get('alarm')}:{p.fields.get('result')}"
            seen[key] = seen.get(key, 0) + 1
    events = sum(v for k, v in seen.items() if k.startswith("gate_event"))
    faces = sum(v for k, v in seen.items() if k.startswith("gate_event:face:granted"))
    assert faces > events * 0.6  # mostly face passes
    assert any(":denied" in k for k in seen)  # rare denials happen
    assert any(k.startswith("gate_alarm") for k in seen)  # and rare alarms


def test_facegate_is_seedable_and_in_out():
    a = [P.facegate_message("hikvision-isapi", "g", random.Random(3), T0) for _ in range(3)]
    b = [P.facegate_message("hikvision-isapi", "g", random.Random(3), T0) for _ in range(3)]
    assert a == b
    prof, rng = profile("generic-facegate"), random.Random(5)
    dirs = set()
    for _ in range(100):
        m = map_message(prof, *P.facegate_message("generic-facegate", "g", rng, T0), privacy=PRIV, now_ns=NOW)
        dirs |= {p.fields.get("direction") for p in m.points}
    assert {"in", "out"} <= dirs


def test_generated_payloads_carry_personal_data_that_does_not_leak():
    prof, rng = profile("hikvision-isapi"), random.Random(11)
    for _ in range(200):
        topic, body = P.facegate_message("hikvision-isapi", "g", rng, T0)
        ev = json.loads(body)["AccessControllerEvent"]
        m = map_message(prof, topic, body, privacy=PRIV, now_ns=NOW)
        blob = json.dumps([[p.tags, p.fields] for p in m.points], ensure_ascii=False)
        for key in ("name", "employeeNoString", "cardNo", "pictureURL"):
            if key in ev:
                assert ev[key] not in blob


@pytest.mark.parametrize("dialect", P.HEARTBEAT_DIALECTS)
def test_heartbeats_map(dialect):
    prof, rng = profile(dialect), random.Random(1)
    for _ in range(50):
        m = map_message(prof, *P.facegate_heartbeat(dialect, "g", rng, T0), privacy=PRIV, now_ns=NOW)
        assert m.kind == "heartbeat"
    with pytest.raises(ValueError):
        P.facegate_heartbeat("dahua-vto2mqtt", "g", rng, T0)
    with pytest.raises(ValueError):
        P.facegate_message("acme", "g", rng, T0)


def test_elevator_model_moves_floor_by_floor_and_maps():
    prof, model = profile("gbt24476-elevator"), P.ElevatorModel(seed=4, lowest=-2, highest=12)
    floors, trips, last = [], 0, None
    for i in range(2000):
        model.step(1.0)
        topic, body = P.elevator_status("lift-1", model, T0 + timedelta(seconds=i))
        (p,) = map_message(prof, topic, body, privacy=PRIV, now_ns=NOW).points
        f = p.fields
        floors.append(model.floor)
        assert model.floor != 0 and -2 <= model.floor <= 12
        if f["running"]:
            assert f["direction"] in ("up", "down") and f["door"] == "closed" and f["door_zone"] is False
        else:
            assert f["direction"] == "none" and f["door_zone"] is True
        if last is not None and model.floor != last:
            trips += 1
        last = model.floor
    steps = [abs(P.ElevatorModel(lowest=-2, highest=12).floors.index(b) -
                 P.ElevatorModel(lowest=-2, highest=12).floors.index(a)) for a, b in zip(floors, floors[1:])]
    assert max(steps) == 1  # one floor per step of 1 s < floor_time 2 s
    assert trips > 100 and len(set(floors)) > 8
    assert P.floor_label(-1) == "B1"


def test_elevator_faults_and_heartbeat_map():
    prof, rng, model = profile("gbt24476-elevator"), random.Random(2), P.ElevatorModel(seed=1)
    faults = set()
    for i in range(300):
        m = map_message(prof, *P.elevator_fault("lift-1", rng, T0, model), privacy=PRIV, now_ns=NOW)
        (p,) = m.points
        assert p.measurement == "elevator_event" and p.tags["fault"] != "other"
        faults.add(p.tags["fault"])
    assert {"entrapment", "stop_outside_door_zone", "overspeed", "door_open_while_running"} <= faults
    m = map_message(prof, *P.elevator_heartbeat("lift-1", rng, T0, 60), privacy=PRIV, now_ns=NOW)
    assert m.kind == "heartbeat" and m.points[0].fields["uptime_s"] == 60


@pytest.mark.parametrize("kind", P.MALFORMED_KINDS)
def test_malformed_payloads_give_map_errors(kind):
    rng = random.Random(0)
    for name, topic in [("generic-facegate", "facegate/g/record"), ("hikvision-isapi", "hikvision/g/event")]:
        body = P.malformed_payload(rng, kind)
        if kind == "nan" and name == "generic-facegate":
            m = map_message(profile(name), topic, body, privacy=PRIV, now_ns=NOW)
            assert m.points[0].fields["time_corrected"] is True and "temperature" not in m.points[0].fields
            continue
        with pytest.raises(MapError) as e:
            map_message(profile(name), topic, body, privacy=PRIV, now_ns=NOW)
        assert e.value.reason in {"malformed_json", "not_utf8", "wrong_dialect", "too_large", "wrong_type",
                                  "unknown_message"}


def test_traffic_has_morning_and_evening_peaks_and_quiet_nights():
    day = [P.traffic_factor(datetime(2025, 3, 3, h, 30, tzinfo=P.CST)) for h in range(24)]
    mean = sum(P.traffic_factor(datetime(2025, 3, 3, tzinfo=P.CST) + timedelta(minutes=m))
               for m in range(0, 1440, 5)) / 288
    assert abs(mean - 1) < 0.05
    assert max(day[6:10]) > 2.5 and max(day[16:21]) > 2.0 and max(day[0:5]) < 0.3
    assert P.entry_share(datetime(2025, 3, 3, 8, tzinfo=P.CST)) < 0.5 < \
        P.entry_share(datetime(2025, 3, 3, 18, tzinfo=P.CST))


@pytest.mark.parametrize("dialect", ["hikvision-isapi", "generic-facegate"])
def test_ms_time_and_entry_share_reach_the_points(dialect):
    rng, prof = random.Random(9), profile(dialect)
    t = T0 + timedelta(milliseconds=123)
    dirs = []
    for _ in range(300):
        m = map_message(prof, *P.facegate_message(dialect, "g1", rng, t, entry_prob=0.9, ms_time=True),
                        privacy=PRIV, now_ns=NOW)
        for p in m.points:
            if p.measurement == "gate_event":
                assert p.time_ns % 10**9 == 123_000_000
                if "direction" in p.fields:
                    dirs.append(p.fields["direction"])
    assert dirs and dirs.count("in") / len(dirs) > 0.75
