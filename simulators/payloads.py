"""Pure, seedable payload generators for the face-gate and elevator simulators.

Every function takes a random.Random and a time, and returns (topic, payload bytes) in one of
the dialects of device_profiles/. No I/O, so tests can round-trip them through the mapper and
the simulators can publish them with any MQTT client.
"""

from __future__ import annotations

import base64
import gzip
import json
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

FACEGATE_DIALECTS = ("hikvision-isapi", "dahua-vto2mqtt", "generic-facegate")
#: Dialects with a documented keep-alive (DahuaVTO2MQTT documents none).
HEARTBEAT_DIALECTS = ("hikvision-isapi", "generic-facegate")
ELEVATOR_DIALECT = "gbt24476-elevator"
CST = timezone(timedelta(hours=8))

_SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
_GIVEN = "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超秀兰霞平刚桂英"
#: A minimal JPEG (SOI ... EOI); enough for the mapper's snapshot check. Callers that need a
#: real face picture pass their own bytes.
TINY_JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xd9"


@dataclass(frozen=True)
class Person:
    employee_no: str
    card_no: str
    name: str


def person(rng: random.Random) -> Person:
    """A synthetic resident: the simulators' stand-in for real, personal data."""
    name = rng.choice(_SURNAMES) + "".join(rng.choice(_GIVEN) for _ in range(rng.randint(1, 2)))
    return Person(str(rng.randint(1000, 99999)), f"{rng.getrandbits(32):010d}", name)


def _iso(t: datetime, ms: bool = False) -> str:
    return t.astimezone(CST).isoformat(timespec="milliseconds" if ms else "seconds")


def _pick(rng: random.Random) -> str:
    """What happens at a gate: mostly face passes, some card/QR, rare denials and alarms."""
    return rng.choices(
        ["face", "card", "qr", "face_denied", "card_denied", "forced_open", "held_open", "tamper"],
        weights=[80, 9, 5, 3, 1, 0.7, 1, 0.3])[0]


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _hikvision(gate_id: str, rng: random.Random, t: datetime, what: str, p: Person,
               entry_prob: float = 0.5, ms: bool = False) -> bytes:
    door = 1 if rng.random() < entry_prob else 2
    codes = {"face": (5, 75), "card": (5, 1), "qr": (5, 1), "face_denied": (5, 76),
             "card_denied": (5, 9), "forced_open": (5, 27), "held_open": (5, 28), "tamper": (1, 1028)}
    major, minor = codes[what]
    ev: dict = {"deviceName": f"Gate-{gate_id}", "majorEventType": major, "subEventType": minor,
                "serialNo": rng.randint(1, 10**6), "currentEvent": True}
    if major == 5 and minor not in (27, 28):
        ev.update({"cardReaderKind": 3 if what == "qr" else 1, "cardReaderNo": door, "doorNo": door,
                   "verifyNo": 0, "userType": "normal", "currentVerifyMode": "cardOrfaceOrPw",
                   "attendanceStatus": "checkIn" if door == 1 else "checkOut"})
        if not what.endswith("denied"):
            ev.update({"name": p.name, "employeeNoString": p.employee_no})
        if what.startswith("card") or what == "qr":
            ev["cardNo"] = p.card_no
        if what.startswith("face"):
            ev.update({"mask": rng.choice(["yes", "no", "unknown"]), "thermometryUnit": "celsius",
                       "currTemperature": round(rng.gauss(36.5, 0.25), 1), "isAbnomalTemperature": False,
                       "pictureURL": f"http://192.168.1.64/picture/{rng.getrandbits(48):x}.jpg",
                       "picturesNumber": 1})
    elif minor in (27, 28):
        ev["doorNo"] = door
    return _dumps({"ipAddress": "192.168.1.64", "portNo": 80, "protocol": "HTTP",
                   "macAddress": "bc:ba:c2:00:00:01", "channelID": 1, "dateTime": _iso(t, ms),
                   "activePostCount": 1, "eventType": "AccessControllerEvent", "eventState": "active",
                   "eventDescription": "Access Controller Event", "AccessControllerEvent": ev})


def _dahua(gate_id: str, rng: random.Random, t: datetime, what: str, p: Person,
           entry_prob: float = 0.5) -> tuple[str, bytes]:
    ts = int(t.timestamp())
    local = t.astimezone(CST).strftime("%Y-%m-%d %H:%M:%S")
    if what in ("forced_open", "held_open", "tamper"):
        data = {"LocaleTime": local, "UTC": ts, "AlarmType": "Alarm",
                "SenseMethod": {"forced_open": "DoorMagnetism", "tamper": "Tamper"}.get(what, "DoorMagnetism")}
        return "DahuaVTO/ProfileAlarmTransmit/Event", _dumps(
            {"Action": "Start", "Code": "ProfileAlarmTransmit", "Index": 0, "Data": data,
             "deviceType": "VTO2202F-P", "serialNumber": gate_id})
    method = {"face": 15, "face_denied": 15, "card": 1, "card_denied": 1, "qr": 4}[what]
    data = {"CardNo": p.card_no if method == 1 else "", "CardType": None, "LocaleTime": local,
            "Method": method, "Name": "OpenDoor", "Password": "", "ReaderID": "1",
            "RecNo": rng.randint(1, 10**5), "SnapURL": f"/mnt/appdata1/userpic/SnapShot/{ts}.jpg",
            "Status": 0 if what.endswith("denied") else 1,
            "Type": "Entry" if rng.random() < entry_prob else "Exit",
            "UTC": ts, "UserID": "" if what.endswith("denied") else p.employee_no}
    return "DahuaVTO/AccessControl/Event", _dumps(
        {"Action": "Pulse", "Code": "AccessControl", "Data": data, "deviceType": "VTO2202F-P",
         "serialNumber": gate_id})


def _generic(gate_id: str, rng: random.Random, t: datetime, what: str, p: Person,
             snapshot: bytes | None, entry_prob: float = 0.5, ms: bool = False) -> tuple[str, bytes]:
    if what in ("forced_open", "held_open", "tamper"):
        token = {"forced_open": "doorSensor", "held_open": "openTimeout", "tamper": "anti"}[what]
        return _generic_heartbeat(gate_id, rng, alarms=[token])
    rtype = {"face": 3, "card": 1, "qr": 32, "face_denied": 19, "card_denied": 24}[what]
    rec = {"SN": gate_id, "RecordID": rng.randint(1, 10**6), "RecordType": rtype,
           "RecordDate": int(t.timestamp() * 1000) if ms else int(t.timestamp()),
           "UserID": "" if rtype == 19 else p.employee_no,
           "Name": "" if rtype == 19 else p.name, "IdentityCard": "", "Job": "", "Department": "",
           "CardNum": p.card_no if rtype in (1, 24) else "0", "QRCode": "", "IsEntry": int(rng.random() < entry_prob),
           "BodyTemp": int(round(rng.gauss(365, 2))) if rtype in (3, 19) else 0}
    if rtype in (3, 19):
        pic = snapshot if snapshot is not None else TINY_JPEG
        rec["Photo"] = base64.b64encode(pic).decode("ascii")
        rec["PhotoLen"] = len(pic)
    return f"facegate/{gate_id}/record", _dumps(rec)


def _generic_heartbeat(gate_id: str, rng: random.Random, alarms: list[str] | None = None) -> tuple[str, bytes]:
    return f"facegate/{gate_id}/heartbeat", _dumps(
        {"SN": gate_id, "RelayStatus": 0, "KeepOpenStatus": 0,
         "DoorSensorStatus": 1 if alarms and "doorSensor" in alarms else 0, "LockDoorStatus": 0,
         "AlarmStatus": ",".join(alarms or [])})


def facegate_message(dialect: str, gate_id: str, rng: random.Random, t: datetime,
                     snapshot: bytes | None = None, *, entry_prob: float = 0.5,
                     ms_time: bool = False) -> tuple[str, bytes]:
    """One gate event (pass, denial or alarm) in DIALECT at time T (timezone-aware).

    entry_prob: share of passes going in (mornings are mostly out, evenings mostly in).
    ms_time: device times with milliseconds (most terminals report whole seconds).
    """
    what, p = _pick(rng), person(rng)
    if dialect == "hikvision-isapi":
        return f"hikvision/{gate_id}/event", _hikvision(gate_id, rng, t, what, p, entry_prob, ms_time)
    if dialect == "dahua-vto2mqtt":
        return _dahua(gate_id, rng, t, what, p, entry_prob)
    if dialect == "generic-facegate":
        return _generic(gate_id, rng, t, what, p, snapshot, entry_prob, ms_time)
    raise ValueError(f"unknown face-gate dialect {dialect!r}; expected one of {FACEGATE_DIALECTS}")


def facegate_heartbeat(dialect: str, gate_id: str, rng: random.Random, t: datetime) -> tuple[str, bytes]:
    """A keep-alive in DIALECT. Raises ValueError for dialects without one (Dahua)."""
    if dialect == "generic-facegate":
        alarms = ["openTimeout"] if rng.random() < 0.01 else []
        return _generic_heartbeat(gate_id, rng, alarms)
    if dialect == "hikvision-isapi":
        return f"hikvision/{gate_id}/event", _dumps(
            {"ipAddress": "192.168.1.64", "channelID": 1, "dateTime": _iso(t), "activePostCount": 0,
             "eventType": "videoloss", "eventState": "inactive", "eventDescription": "videoloss alarm"})
    raise ValueError(f"dialect {dialect!r} has no documented heartbeat; use one of {HEARTBEAT_DIALECTS}")


# --- elevators ----------------------------------------------------------------------------------

def floor_label(n: int) -> str:
    """Floor number to the label a car shows: -1 -> "B1", 0 is skipped by callers."""
    return f"B{-n}" if n < 0 else str(n)


@dataclass
class ElevatorModel:
    """A car that makes trips floor by floor, so consecutive status messages are plausible.

    step(dt) advances the simulation: doors open and close at a stop, then the car travels
    one floor per `floor_time_s` to a new destination. Trips start from the lobby more often.
    """

    lowest: int = -2
    highest: int = 18
    floor_time_s: float = 2.0
    door_time_s: float = 6.0
    seed: int = 0
    floor: int = 1
    target: int = 1
    door_open: bool = False
    occupied: bool = False
    service_mode: int = 1
    running_count: int = 0
    running_hours: float = 0.0
    _clock: float = field(default=0.0, repr=False)
    _rng: random.Random = field(default=None, repr=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self.running_count = self._rng.randint(10_000, 900_000)
        self.running_hours = float(self._rng.randint(500, 20_000))

    @property
    def floors(self) -> list[int]:
        return [f for f in range(self.lowest, self.highest + 1) if f != 0]

    @property
    def direction(self) -> int:
        return 0 if self.target == self.floor else 1 if self.target > self.floor else 2

    @property
    def running(self) -> bool:
        return self.target != self.floor

    def _next_floor(self) -> int:
        i = self.floors.index(self.floor)
        return self.floors[i + (1 if self.target > self.floor else -1)]

    def step(self, dt_s: float) -> None:
        self._clock += dt_s
        while self._clock > 0:
            if self.running:
                self._clock -= self.floor_time_s
                self.running_hours += self.floor_time_s / 3600
                self.floor = self._next_floor()
                if self.floor == self.target:
                    self.door_open = True
            elif self.door_open:
                self._clock -= self.door_time_s
                self.door_open = False
                self.occupied = self._rng.random() < 0.5
            else:  # idle with doors closed: wait, then start a new trip
                self._clock -= self._rng.uniform(2, 30)
                choices = [f for f in self.floors if f != self.floor]
                self.target = 1 if self.floor != 1 and self._rng.random() < 0.4 else self._rng.choice(choices)
                self.running_count += 1

    @property
    def door_zone(self) -> bool:
        return not self.running  # between floors while moving; only stops at landings here

    def status(self) -> dict:
        return {"service_mode": self.service_mode, "car_status": int(self.running),
                "car_direction": self.direction, "door_zone": 1 if self.door_zone else 2,
                "car_position": floor_label(self.floor), "door_status": 2 if self.door_open else 1,
                "passenger_status": 1 if self.occupied or self.running else 2, "power_status": 1,
                "total_running_time_h": round(self.running_hours, 1), "running_count": self.running_count}


def elevator_status(elevator_id: str, model: ElevatorModel, t: datetime, ms_time: bool = False) -> tuple[str, bytes]:
    return f"elevator/{elevator_id}/status", _dumps(
        {"registration_code": elevator_id, "ts": _iso(t, ms_time), **model.status()})


#: GB/T 24476-style codes the simulator raises, with weights (entrapment and door faults
#: dominate real logs; earthquake mode is left out).
_GB_FAULTS = {"04": 5, "02": 6, "03": 6, "11": 2, "09": 1, "10": 1, "01": 2, "05": 0.5,
              "41": 2, "43": 4, "40": 4, "90": 3}
_TERMINAL_FAULTS = {3: 1, 4: 2, 6: 3, 7: 2, 8: 1}


def elevator_fault(elevator_id: str, rng: random.Random, t: datetime,
                   model: ElevatorModel | None = None, ms_time: bool = False) -> tuple[str, bytes]:
    """A fault or event: mostly GB/T 24476 codes, sometimes a sensor terminal's behavioural code."""
    body: dict = {"registration_code": elevator_id, "fault_id": f"{rng.getrandbits(64):016x}",
                  "fault_timestamp": _iso(t, ms_time)}
    if model is not None:
        st = model.status()
        body.update({"car_position": st["car_position"], "door_zone": st["door_zone"],
                     "passenger_status": st["passenger_status"]})
    if rng.random() < 0.2:
        body["terminal_fault"] = rng.choices(list(_TERMINAL_FAULTS), list(_TERMINAL_FAULTS.values()))[0]
        body["state"] = rng.choice([1, 1, 1, 0])
    else:
        body["fault_type"] = rng.choices(list(_GB_FAULTS), list(_GB_FAULTS.values()))[0]
        body["deal_status"] = rng.choice(["01", "01", "01", "00", "02"])
        body["source_dialect"] = "gbt24476-2017-like"
        body["source_code"] = body["fault_type"]
    return f"elevator/{elevator_id}/fault", _dumps(body)


def elevator_heartbeat(elevator_id: str, rng: random.Random, t: datetime, uptime_s: int = 0) -> tuple[str, bytes]:
    return f"elevator/{elevator_id}/heartbeat", _dumps(
        {"registration_code": elevator_id, "ts": _iso(t), "uptime_s": uptime_s,
         "rssi": rng.randint(-95, -55), "firmware": "sim-1.0"})


# --- bad input ----------------------------------------------------------------------------------

MALFORMED_KINDS = ("bad_json", "not_utf8", "wrong_dialect", "huge", "not_object", "deep", "nan",
                   "truncated", "gzip_bomb")


def malformed_payload(rng: random.Random, kind: str | None = None) -> bytes:
    """A payload a broken or foreign device might send; the edge must count it, not crash."""
    kind = kind or rng.choice(MALFORMED_KINDS)
    if kind == "bad_json":
        return rng.choice([b"{", b"{'a': 1}", b"{\"a\":}", b"", b"null,", b"\x00\x00"])
    if kind == "not_utf8":
        return b'{"name":"' + bytes([0xC3, 0x28, 0xFF, 0xFE]) + b'"}'
    if kind == "wrong_dialect":
        return _dumps({"type": "info", "data": {"direction": 0, "floor": 3}})
    if kind == "huge":
        return b'{"pad":"' + b"x" * (300 * 1024 + rng.randint(0, 4096)) + b'"}'
    if kind == "not_object":
        return rng.choice([b"[1,2,3]", b"42", b'"text"', b"true", b"null"])
    if kind == "deep":
        return b"[" * 100_000 + b"]" * 100_000
    if kind == "nan":
        return b'{"SN":"x","RecordType":3,"RecordDate":NaN,"BodyTemp":Infinity,"IsEntry":1}'
    if kind == "truncated":
        body = _dumps({"eventType": "AccessControllerEvent", "AccessControllerEvent": {"majorEventType": 5}})
        return body[: rng.randint(1, len(body) - 1)]
    if kind == "gzip_bomb":
        return gzip.compress(b'{"a":"' + b"0" * (4 * 1024 * 1024) + b'"}')
    raise ValueError(f"unknown malformed kind {kind!r}")


# --- traffic shape ------------------------------------------------------------------------------

#: Relative gate traffic per local hour in a residential compound: quiet nights, a morning peak
#: (leaving for work and school), a smaller noon bump and an evening peak (coming home).
_HOURLY = [0.15, 0.1, 0.08, 0.08, 0.1, 0.3, 1.2, 3.0, 3.2, 1.5, 0.8, 0.9,
           1.1, 0.9, 0.7, 0.8, 1.2, 2.4, 2.8, 2.2, 1.4, 0.9, 0.5, 0.25]
_HOURLY_MEAN = sum(_HOURLY) / len(_HOURLY)


def traffic_factor(t: datetime) -> float:
    """Gate traffic at local time T relative to the daily mean (mean over a day is 1)."""
    local = t.astimezone(CST)
    h = local.hour + local.minute / 60
    a, b = _HOURLY[int(h) % 24], _HOURLY[(int(h) + 1) % 24]
    return (a + (b - a) * (h - int(h))) / _HOURLY_MEAN


def entry_share(t: datetime) -> float:
    """Share of passes that go in: mornings people leave, evenings they come home."""
    h = t.astimezone(CST).hour
    return 0.25 if 5 <= h < 10 else 0.75 if 16 <= h < 22 else 0.5
