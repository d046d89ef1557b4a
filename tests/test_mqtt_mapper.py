import base64
import json
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.points import Priority
from common.wire import point_json
from edge.mqtt.mapper import MapError, device_id_of, map_message, match_topic
from edge.mqtt.profile import load_mqtt_profile
from edge.privacy import Privacy

PROFILES = Path(__file__).resolve().parent.parent / "device_profiles"
HIK = load_mqtt_profile(PROFILES / "hikvision-isapi.yaml")
DAHUA = load_mqtt_profile(PROFILES / "dahua-vto2mqtt.yaml")
GEN = load_mqtt_profile(PROFILES / "generic-facegate.yaml")
ELEV = load_mqtt_profile(PROFILES / "gbt24476-elevator.yaml")
PRIV = Privacy(b"s" * 32)
NOW = 1_709_300_000 * 10**9  # 2024-03-01T13:33:20Z


def ns(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp()) * 10**9


def hik(major: int, minor: int, **extra) -> bytes:
    ev = {"deviceName": "Gate-3-East", "majorEventType": major, "subEventType": minor, "serialNo": 4412,
          "currentEvent": True, **extra}
    return json.dumps({"dateTime": "2024-03-01T08:15:02+08:00", "eventType": "AccessControllerEvent",
                       "eventState": "active", "AccessControllerEvent": ev}).encode()


def run(profile, topic, payload, **kw):
    return map_message(profile, topic, payload, privacy=kw.pop("privacy", PRIV), now_ns=kw.pop("now_ns", NOW), **kw)


# --- Hikvision -----------------------------------------------------------------------------------

def test_hikvision_face_pass_reference_example():
    m = run(HIK, "hikvision/gate-3/event", hik(
        5, 75, name="张三", employeeNoString="1203", cardReaderKind=1, doorNo=1, mask="yes",
        currTemperature=36.4, userType="normal", pictureURL="http://192.168.1.64/pic/1.jpg"))
    assert (m.device_id, m.kind, m.message) == ("gate-3", "event", "access")
    (p,) = m.points
    assert p.measurement == "gate_event" and p.tags == {"event": "access"}
    assert p.time_ns == ns("2024-03-01T00:15:02+00:00")
    assert p.priority == Priority.EVENT
    f = p.fields
    assert (f["method"], f["result"], f["direction"], f["door"]) == ("face", "granted", "in", 1)
    assert f["mask"] is True and f["temperature"] == 36.4 and f["user_type"] == "resident"
    assert (f["major"], f["minor"]) == (5, 75)
    assert f["person"] == PRIV.pseudonym("1203")
    assert "张三" not in repr(m) and "pic/1.jpg" not in repr(m) and "1203" not in json.dumps(f)


@pytest.mark.parametrize("major, minor, alarm, state", [
    (5, 27, "forced_open", "active"), (5, 28, "held_open", "active"), (1, 1028, "tamper", "active"),
    (1, 1029, "tamper", "cleared"), (1, 1034, "duress", "active"), (5, 113, "blocklist", "active"),
])
def test_hikvision_alarms_key_on_major_and_minor(major, minor, alarm, state):
    m = run(HIK, "hikvision/g/event", hik(major, minor))
    (p,) = m.points
    assert m.kind == "alarm" and p.measurement == "gate_alarm" and p.priority == Priority.ALARM
    assert p.tags == {"alarm": alarm} and p.fields["state"] == state
    assert (p.fields["major"], p.fields["minor"]) == (major, minor)


def test_hikvision_minor_1024_differs_by_major():
    remote = run(HIK, "hikvision/g/event", hik(3, 1024)).points[0]
    zone = run(HIK, "hikvision/g/event", hik(1, 1024)).points[0]
    assert remote.measurement == "gate_event" and remote.fields["action"] == "open"
    assert remote.fields["method"] == "remote"
    assert zone.measurement == "gate_alarm" and zone.tags == {"alarm": "other"}


def test_hikvision_qr_and_card_and_denial():
    qr = run(HIK, "hikvision/g/event", hik(5, 1, cardReaderKind=3, cardNo="12345678", doorNo=2)).points[0]
    assert qr.fields["method"] == "qr" and qr.fields["direction"] == "out"
    assert qr.fields["person"] == PRIV.pseudonym("12345678")
    card = run(HIK, "hikvision/g/event", hik(5, 1, cardReaderKind=1, cardNo="1")).points[0]
    assert card.fields["method"] == "card"
    bad = run(HIK, "hikvision/g/event", hik(5, 76)).points[0]
    assert bad.fields["result"] == "denied" and "person" not in bad.fields


def test_hikvision_elevator_control_door_is_floor():
    m = run(HIK, "hikvision/lift/event", hik(5, 75, doorNo=7, employeeNoString="9"),
            options={"door_is_floor": True})
    f = m.points[0].fields
    assert f["floor_no"] == 7 and "door" not in f and "direction" not in f
    mode = run(HIK, "hikvision/lift/event", hik(3, 1026, doorNo=7), options={"door_is_floor": True})
    assert mode.points[0].fields["floor_mode"] == "free"


def test_hikvision_keepalive_is_heartbeat_without_points():
    body = json.dumps({"eventType": "videoloss", "eventState": "inactive",
                       "dateTime": "2024-03-01T08:15:02+08:00"}).encode()
    m = run(HIK, "hikvision/g/event", body)
    assert m.kind == "heartbeat" and m.points == []


# --- Dahua ---------------------------------------------------------------------------------------

DAHUA_DOC = (b'{"Action":"Pulse","Data":{"CardNo":"","CardType":null,"LocaleTime":"2020-03-02 20:24:08",'
             b'"Method":4,"Name":"OpenDoor","Password":"","ReaderID":"1","RecNo":691,"SnapURL":"",'
             b'"Status":1,"Type":"Entry","UTC":1583173448,"UserID":""},'
             b'"deviceType":"Device Model","serialNumber":"Device Serial Number"}')


def test_dahua_doc_example_device_id_from_payload():
    with pytest.raises(MapError) as e:  # the doc's placeholder serial has spaces: not an id
        run(DAHUA, "DahuaVTO/AccessControl/Event", DAHUA_DOC)
    assert e.value.reason == "wrong_type"
    body = DAHUA_DOC.replace(b"Device Serial Number", b"7H0123PAZ")
    m = run(DAHUA, "DahuaVTO/AccessControl/Event", body, now_ns=ns("2020-03-03T00:00:00+00:00"))
    (p,) = m.points
    assert m.device_id == "7H0123PAZ" and p.time_ns == 1583173448 * 10**9
    assert p.fields["method"] == "remote" and p.fields["result"] == "granted"
    assert p.fields["direction"] == "in" and p.fields["door"] == 1 and "person" not in p.fields
    assert device_id_of(DAHUA, "DahuaVTO/AccessControl/Event", body) == "7H0123PAZ"


def test_dahua_local_time_fallback_uses_site_zone():
    d = json.loads(DAHUA_DOC.replace(b"Device Serial Number", b"SN1"))
    del d["Data"]["UTC"]
    m = run(DAHUA, "DahuaVTO/AccessControl/Event", json.dumps(d).encode(),
            now_ns=ns("2020-03-03T00:00:00+00:00"))
    assert m.points[0].time_ns == ns("2020-03-02T12:24:08+00:00")  # 20:24:08 at +08:00


def test_dahua_unknown_code_and_wrong_dialect():
    with pytest.raises(MapError) as e:
        run(DAHUA, "DahuaVTO/VideoMotion/Event", b'{"Action":"Start","Data":{},"serialNumber":"a"}')
    assert e.value.reason == "unknown_message"
    with pytest.raises(MapError) as e:
        run(DAHUA, "DahuaVTO/AccessControl/Event", b'{"eventType":"AccessControllerEvent"}')
    assert e.value.reason == "wrong_dialect"


# --- generic face gate ---------------------------------------------------------------------------

def test_generic_record_with_snapshot_and_temperature():
    jpeg = b"\xff\xd8\xff\xe0fakejpeg\xff\xd9"
    rec = {"SN": "FC-8200H12345678", "RecordID": 120, "RecordType": 3, "RecordDate": 1709251200,
           "UserID": "77", "Name": "李四", "CardNum": "0", "IsEntry": 0, "BodyTemp": 365,
           "Photo": base64.b64encode(jpeg).decode()}
    m = run(GEN, "facegate/fc1/record", json.dumps(rec).encode())
    (p,) = m.points
    assert m.snapshot == jpeg
    assert p.fields["temperature"] == pytest.approx(36.5) and p.fields["direction"] == "out"
    assert p.fields["person"] == PRIV.pseudonym("77") and p.time_ns == 1709251200 * 10**9
    assert "Photo" not in repr(p) and base64.b64encode(jpeg).decode() not in repr(p)


def test_generic_card_zero_means_no_card_and_body_temp_zero_is_not_measured():
    rec = {"SN": "x", "RecordType": 19, "RecordDate": 1709251200, "UserID": "", "CardNum": "0",
           "IsEntry": 1, "BodyTemp": 0}
    f = run(GEN, "facegate/fc1/record", json.dumps(rec).encode()).points[0].fields
    assert "person" not in f and "temperature" not in f
    assert (f["result"], f["deny_reason"], f["user_type"]) == ("denied", "unregistered", "stranger")


def test_generic_heartbeat_alarm_list():
    hb = {"SN": "x", "RelayStatus": 0, "KeepOpenStatus": 0, "DoorSensorStatus": 1, "LockDoorStatus": 0,
          "AlarmStatus": "anti,openTimeout,weird"}
    m = run(GEN, "facegate/fc1/heartbeat", json.dumps(hb).encode())
    assert m.kind == "heartbeat"
    health = [p for p in m.points if p.measurement == "device_health"]
    alarms = [p for p in m.points if p.measurement == "gate_alarm"]
    assert health[0].fields["door_sensor_open"] is True and health[0].time_ns == NOW
    assert [a.tags["alarm"] for a in alarms] == ["tamper", "held_open", "other"]
    assert alarms[2].fields["raw_alarm"] == "weird"
    quiet = run(GEN, "facegate/fc1/heartbeat", json.dumps({**hb, "AlarmStatus": ""}).encode())
    assert [p.measurement for p in quiet.points] == ["device_health"]


def test_gzip_payload_accepted_when_profile_says_so():
    import gzip
    rec = {"SN": "x", "RecordType": 1, "RecordDate": 1709251200, "CardNum": "555", "IsEntry": 1}
    m = run(GEN, "facegate/fc1/record", gzip.compress(json.dumps(rec).encode()))
    assert m.points[0].fields["method"] == "card"
    with pytest.raises(MapError) as e:
        run(HIK, "hikvision/g/event", gzip.compress(hik(5, 75)))
    assert e.value.reason == "not_utf8"


@pytest.mark.parametrize("profile, topic, payload", [
    (HIK, "hikvision/g/event", hik(5, 75, employeeNoString="1", currentVerifyMode="face\ud800")),
    (GEN, "facegate/fc1/record", json.dumps({"SN": "x", "RecordType": 1, "RecordDate": 1709251200,
                                              "CardNum": "5\udc00", "IsEntry": 1}).encode()),
])
def test_a_lone_surrogate_escape_is_not_text(profile, topic, payload):
    # "\ud800" alone is valid JSON but has no UTF-8 form: mapped, it could be neither committed to
    # the outbox (SQLite text) nor written to InfluxDB. Dropped like invalid UTF-8 bytes.
    assert b"\\ud800" in payload or b"\\udc00" in payload
    with pytest.raises(MapError) as e:
        run(profile, topic, payload)
    assert e.value.reason == "not_utf8"
    pair = payload.replace(b"\\ud800", b"\\ud83d\\ude00").replace(b"\\udc00", b"\\ud83d\\ude00")
    assert all(point_json(p).encode() for p in run(profile, topic, pair).points)  # an emoji is fine


# --- elevators -----------------------------------------------------------------------------------

STATUS = {"registration_code": "31103301002019010001", "ts": "2024-03-01T08:15:02+08:00",
          "service_mode": 1, "car_status": 1, "car_direction": 1, "door_zone": 2, "car_position": "7",
          "door_status": 1, "passenger_status": 1, "total_running_time_h": 5321, "running_count": 812345}


def test_elevator_status_reference_example():
    m = run(ELEV, "elevator/lift-1/status", json.dumps(STATUS).encode())
    (p,) = m.points
    assert m.kind == "status" and p.measurement == "elevator_status" and p.tags == {}
    assert p.fields == {"service_mode": "normal", "running": True, "direction": "up", "door_zone": False,
                        "car_floor": "7", "door": "closed", "occupied": True, "running_hours": 5321.0,
                        "running_count": 812345, "raw_service_mode": 1}


@pytest.mark.parametrize("code, fault", [
    ("04", "stop_outside_door_zone"), ("11", "entrapment"), ("09", "overrun_top"), ("10", "overrun_bottom"),
    (5, "ucm"), ("90", "alarm_button"), ("41", "power_loss"), ("43", "service_mode_change"), ("77", "other"),
])
def test_elevator_gb_faults(code, fault):
    body = {"fault_type": code, "fault_timestamp": "2024-03-01T08:20:11+08:00", "deal_status": "01"}
    (p,) = run(ELEV, "elevator/lift-1/fault", json.dumps(body).encode()).points
    assert p.measurement == "elevator_event" and p.tags == {"fault": fault}
    assert p.fields["code"] == str(code) and p.fields["dialect"] == "gbt24476"
    assert p.fields["state"] == "active" and p.priority == Priority.ALARM


@pytest.mark.parametrize("code, fault", [(1, "overrun_top"), (2, "overrun_bottom"), (3, "overspeed"),
                                         (4, "door_open_while_running"), (6, "stop_outside_door_zone"),
                                         (7, "entrapment")])
def test_elevator_terminal_faults(code, fault):
    body = {"terminal_fault": code, "ts": 1709251200000}
    (p,) = run(ELEV, "elevator/lift-1/fault", json.dumps(body).encode()).points
    assert p.tags == {"fault": fault} and p.fields["dialect"] == "gbt24476-terminal"
    assert p.time_ns == 1709251200 * 10**9  # epoch ms recognised


# --- time handling --------------------------------------------------------------------------------

@pytest.mark.parametrize("when", ["1999-12-31T23:59:59+08:00", "2024-03-03T08:15:02+08:00", 0, -5])
def test_absurd_time_is_corrected_to_receive_time(when):
    m = run(ELEV, "elevator/l/status", json.dumps({**STATUS, "ts": when}).encode())
    p = m.points[0]
    assert p.time_ns == NOW and p.fields["time_corrected"] is True and m.warnings


def test_garbage_time_is_corrected_or_rejected_per_profile():
    m = run(ELEV, "elevator/l/status", json.dumps({**STATUS, "ts": "yesterday"}).encode())
    assert m.points[0].time_ns == NOW and m.points[0].fields["time_corrected"] is True
    reject = ELEV.model_copy(update={"messages": [ELEV.messages[0].model_copy(update={"on_bad_time": "reject"})]})
    with pytest.raises(MapError) as e:
        run(reject, "elevator/l/status", json.dumps({**STATUS, "ts": "yesterday"}).encode())
    assert e.value.reason == "bad_time"


def test_missing_time_is_corrected_and_time_window_override():
    m = run(ELEV, "elevator/l/status", json.dumps({k: v for k, v in STATUS.items() if k != "ts"}).encode())
    assert m.points[0].fields["time_corrected"] is True
    good = ns("2024-03-01T00:15:02+00:00")
    m = run(ELEV, "elevator/l/status", json.dumps(STATUS).encode(), time_window=(good + 1, good + 10))
    assert m.points[0].time_ns == NOW
    m = run(ELEV, "elevator/l/status", json.dumps({**STATUS, "ts": "2024-03-01T00:15:02.123456789Z"}).encode())
    assert m.points[0].time_ns == good + 123456789 and "time_corrected" not in m.points[0].fields


# --- bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("topic, payload, reason", [
    ("hikvision/g/event", b"{", "malformed_json"),
    ("hikvision/g/event", b'{"a":"\xff"}', "not_utf8"),
    ("hikvision/g/event", b"[1]", "wrong_type"),
    ("hikvision/g/event", b"x" * 300_000, "too_large"),
    ("hikvision/g/event", b"[" * 50_000, "malformed_json"),
    ("hikvision/g/event", b'{"eventType":"other"}', "unknown_message"),
    ("hikvision/g/other", hik(5, 75), "unknown_message"),
    ("hikvision/g/event", b'{"x":1}', "wrong_dialect"),
    ("elevator/l/status", b'{"service_mode":1,"ts":"2024-03-01T08:15:02+08:00","car_status":{"a":1}}', None),
])
def test_bad_input_reasons(topic, payload, reason):
    if reason is None:  # a wrong type in an optional field skips the field, keeps the point
        m = run(ELEV, topic, payload)
        assert "running" not in m.points[0].fields and m.warnings
        return
    with pytest.raises(MapError) as e:
        run(HIK, topic, payload)
    assert e.value.reason == reason


def test_missing_device_id():
    with pytest.raises(MapError) as e:
        run(DAHUA, "DahuaVTO/AccessControl/Event", b'{"Action":"Pulse","Data":{"Method":1}}')
    assert e.value.reason == "missing_field"
    assert device_id_of(DAHUA, "DahuaVTO/AccessControl/Event", b'{"Data":{}}') is None
    assert device_id_of(HIK, "hikvision/g7/event", b"\xff garbage") == "g7"  # from the topic, no parse
    assert device_id_of(HIK, "nope/g7/event", b"") is None


def test_match_topic():
    assert match_topic(ELEV, "elevator/l1/fault") == {"message": "fault", "kind": "event",
                                                      "captures": {"id": "l1"}}
    assert match_topic(ELEV, "elevator/l1/fault/extra") is None
    assert match_topic(ELEV, "elevator//fault") is None
    assert match_topic(HIK, "hikvision/x/event")["captures"] == {"id": "x"}


def test_drop_mode_has_no_person_field():
    m = run(HIK, "hikvision/g/event", hik(5, 75, employeeNoString="1203"), privacy=Privacy(b"", "drop"))
    assert "person" not in m.points[0].fields


# --- properties ----------------------------------------------------------------------------------

ALL = [(HIK, "hikvision/g/event"), (DAHUA, "DahuaVTO/AccessControl/Event"), (GEN, "facegate/g/record"),
       (GEN, "facegate/g/heartbeat"), (ELEV, "elevator/g/status"), (ELEV, "elevator/g/fault")]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=12), kids, max_size=5),
    max_leaves=20)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(which=st.sampled_from(ALL), payload=st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_map_error(which, payload):
    profile, topic = which
    try:
        run(profile, topic, payload)
    except MapError as e:
        assert e.reason != "internal"


def _merge(base: object, extra: object) -> object:
    if isinstance(base, dict) and isinstance(extra, dict):
        out = dict(base)
        for k, v in extra.items():
            out[k] = _merge(base.get(k), v) if k in base else v
        return out
    return extra


BASES = [
    (HIK, "hikvision/g/event", json.loads(hik(5, 75, employeeNoString="1", doorNo=1))),
    (DAHUA, "DahuaVTO/AccessControl/Event", json.loads(DAHUA_DOC.replace(b"Device Serial Number", b"sn"))),
    (GEN, "facegate/g/record", {"SN": "x", "RecordType": 3, "RecordDate": 1709251200, "IsEntry": 1}),
    (ELEV, "elevator/g/status", STATUS),
    (ELEV, "elevator/g/fault", {"fault_type": "04", "deal_status": "01"}),
]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(which=st.sampled_from(BASES), extra=st.dictionaries(st.sampled_from(
    ["AccessControllerEvent", "Data", "RecordType", "IsEntry", "BodyTemp", "ts", "service_mode", "fault_type",
     "car_position", "dateTime", "RecordDate", "deal_status"]), json_values, max_size=4))
def test_json_variations_only_raise_map_error(which, extra):
    profile, topic, base = which
    payload = json.dumps(_merge(base, extra)).encode()
    try:
        m = run(profile, topic, payload)
    except MapError as e:
        assert e.reason != "internal", e
        return
    for p in m.points:
        assert all(isinstance(v, str) for v in p.tags.values())
        assert all(isinstance(v, (bool, int, float, str)) for v in p.fields.values())


secret_text = st.text(alphabet="abcdefXYZ0123456789张王李-_", min_size=4, max_size=16).map(lambda s: "PII" + s)


@settings(max_examples=300)
@given(pid=secret_text, name=secret_text, url=secret_text, card=secret_text, which=st.integers(0, 2))
def test_no_personal_value_reaches_tags_or_fields(pid, name, url, card, which):
    if which == 0:
        topic, profile = "hikvision/g/event", HIK
        payload = hik(5, 75, employeeNoString=pid, name=name, cardNo=card, pictureURL="http://" + url,
                      doorNo=1, QRCodeInfo=card)
    elif which == 1:
        topic, profile = "DahuaVTO/AccessControl/Event", DAHUA
        d = json.loads(DAHUA_DOC.replace(b"Device Serial Number", b"sn"))
        d["Data"].update(UserID=pid, CardNo=card, SnapURL=url, Password=name)
        payload = json.dumps(d).encode()
    else:
        topic, profile = "facegate/g/record", GEN
        payload = json.dumps({"SN": "x", "RecordType": 3, "RecordDate": 1709251200, "UserID": pid,
                              "Name": name, "CardNum": card, "IdentityCard": url, "QRCode": url,
                              "IsEntry": 1}).encode()
    m = run(profile, topic, payload)
    for p in m.points:
        blob = json.dumps([p.tags, p.fields], ensure_ascii=False)
        for secret in (pid, name, url, card):
            assert secret not in blob
        assert p.fields.get("person") == PRIV.pseudonym(pid)
        assert "person" not in p.tags


# --- integers beyond 64 bits; one parse for device id and mapping ---------------------------------

def test_integer_beyond_64_bits_stays_exact():
    # orjson would make this serial number a float (and the id a wrong type); json keeps it exact
    body = DAHUA_DOC.replace(b'"Device Serial Number"', b"123456789012345678901")
    m = run(DAHUA, "DahuaVTO/AccessControl/Event", body, now_ns=ns("2020-03-03T00:00:00+00:00"))
    assert m.device_id == "123456789012345678901"
    assert device_id_of(DAHUA, "DahuaVTO/AccessControl/Event", body) == "123456789012345678901"
    rec = {"SN": "x", "RecordType": 1, "RecordDate": 1709251200, "IsEntry": 1, "RecordID": 2**64 + 1}
    f = run(GEN, "facegate/fc1/record", json.dumps(rec).encode()).points[0].fields
    assert f["record_id"] == 2**64 + 1 and type(f["record_id"]) is int


def test_device_id_parse_is_not_reused_by_a_profile_that_reads_the_payload_otherwise():
    import gzip
    body = DAHUA_DOC.replace(b"Device Serial Number", b"SN1")
    packed = gzip.compress(body)
    dahua_gz = DAHUA.model_copy(update={"gzip": True})
    assert device_id_of(dahua_gz, "DahuaVTO/AccessControl/Event", packed) == "SN1"
    with pytest.raises(MapError) as e:  # the same bytes, a profile without gzip: not JSON
        run(DAHUA, "DahuaVTO/AccessControl/Event", packed)
    assert e.value.reason == "not_utf8"
    m = run(dahua_gz, "DahuaVTO/AccessControl/Event", packed, now_ns=ns("2020-03-03T00:00:00+00:00"))
    assert m.device_id == "SN1" and m.points[0].fields["method"] == "remote"
