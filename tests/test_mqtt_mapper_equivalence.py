"""The mapper (edge/mqtt/mapper.py) maps every message exactly as the frozen reference does.

tests/mqtt_reference_mapper.py is the mapper before it generated code per profile. Both map the
same (profile, topic, payload, options) and must agree on everything a caller can see: the
Mapped (device id, kind, message, snapshot, warnings in order, points with measurement, tags,
fields in order with their value types, time, priority) or the MapError (reason and text).

Inputs: simulator payloads (simulators/payloads.py) of every shipped MQTT profile, mutated by
hypothesis (keys removed, values of other types, codes in and outside the enum tables, odd
times, per-device options, both privacy modes, wrong topics, gzip, broken bytes), plus a
synthetic profile that uses every profile feature the shipped ones leave out.
"""

from __future__ import annotations

import ast
import base64
import copy
import functools
import gzip
import json
import math
import os
import random
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.mqtt import mapper as NEW
from edge.mqtt.profile import MqttProfile, load_mqtt_profile
from edge.privacy import Privacy
from simulators import payloads as pl
from tests import mqtt_reference_mapper as REF

PROFILES = Path(__file__).resolve().parent.parent / "device_profiles"
SHIPPED = {n: load_mqtt_profile(PROFILES / f"{n}.yaml")
           for n in ("hikvision-isapi", "dahua-vto2mqtt", "generic-facegate", "gbt24476-elevator")}
T0 = datetime(2024, 3, 1, 8, 0, tzinfo=timezone.utc)
NOW = int(T0.timestamp()) * 10**9
PRIVACIES = [Privacy(b"s" * 32), Privacy(b"another-site-secret!"), Privacy(b"", "drop")]
SETTINGS = settings(max_examples=400, deadline=None, derandomize=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# --- what a caller sees ---------------------------------------------------------------------------


def _typed(d: dict) -> tuple:
    # repr keeps 1, 1.0 and True apart, and -0.0 from 0.0; insertion order counts too
    return tuple((k, type(v).__name__, repr(v)) for k, v in d.items())


def outcome(mod, profile, topic, payload, **kw) -> tuple:
    try:
        m = mod.map_message(profile, topic, payload, **kw)
    except Exception as exc:  # noqa: BLE001 - anything but MapError is a finding
        return ("raised", type(exc).__name__, getattr(exc, "reason", None), str(exc))
    points = tuple((p.measurement, _typed(p.tags), _typed(p.fields), p.time_ns, repr(p.priority), p.box_time)
                   for p in m.points)
    return ("mapped", m.device_id, m.kind, m.message, m.snapshot, tuple(m.warnings), points)


def lone_surrogate(payload) -> bool:
    """Whether the payload is JSON text holding a "\\ud800"-style escape without its pair. The
    reference mapped such text; the new mapper drops it as not_utf8 (it has no UTF-8 form, so it
    could be neither committed to the outbox nor written to InfluxDB): the one intended change."""
    try:
        data = payload if payload[:2] != b"\x1f\x8b" else gzip.decompress(payload)
        json.dumps(json.loads(data.decode("utf-8-sig")), ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return True
    except Exception:  # noqa: BLE001 - not JSON text at all: judged by both mappers alike
        return False
    return False


def assert_same(profile, topic, payload, **kw) -> tuple:
    """Map through both; they must agree, and the new one may raise only its MapError."""
    max_bytes = kw.get("max_bytes", 256 * 1024)
    if isinstance(payload, bytes) and len(payload) <= max_bytes and lone_surrogate(payload):
        got = outcome(NEW, profile, topic, payload, **kw)
        assert got[:3] == ("raised", "MapError", "not_utf8"), got
        assert NEW.device_id_of(profile, topic, payload, max_bytes) in (None, REF.device_id_of(
            profile, topic, payload, max_bytes))
        return got
    want = outcome(REF, profile, topic, payload, **kw)
    # as the MQTT source does: the device id first (it may parse the payload), then the mapping
    assert NEW.device_id_of(profile, topic, payload, max_bytes) == REF.device_id_of(profile, topic, payload, max_bytes)
    got = outcome(NEW, profile, topic, payload, **kw)
    assert got == want, f"topic={topic!r} payload={payload[:600]!r} kw={kw!r}"
    if got[0] == "raised":
        assert got[1] == "MapError"
    assert NEW.match_topic(profile, topic) == REF.match_topic(profile, topic)
    return got


# --- what a profile reads ---------------------------------------------------------------------------

_PATH = re.compile(r"[^.\[\]]+|\[\d+\]")


def _parts(ref: str) -> tuple:
    return tuple(int(p[1:-1]) if p.startswith("[") else p for p in _PATH.findall(ref))


def _all_maps(profile: MqttProfile):
    for m in profile.messages:
        for p in m.points:
            yield from p.tags
            yield from p.fields


def _all_conds(profile: MqttProfile):
    yield from profile.signature
    for m in profile.messages:
        yield from m.match
        for p in m.points:
            yield from p.when


def _refs(profile: MqttProfile) -> set[str]:
    out = {profile.device_id}
    for m in profile.messages:
        out |= {m.device_id or profile.device_id, *(t.ref for t in m.time), *m.privacy.person, *m.privacy.drop}
        out |= {m.privacy.snapshot} - {None}
        out |= {p.explode.ref for p in m.points if p.explode}
    out |= {r for f in _all_maps(profile) for r in f.refs}
    out |= {r for c in _all_conds(profile) for r in c.refs}
    return out


def _forms(code: object) -> list:
    """A code as devices send it: number or string, zero-padded, spaced, as a float."""
    text = str(code)
    out: list = [code, text, f" {text} ", "0" + text, text + ".0"]
    if re.fullmatch(r"[+-]?\d+", text):
        out += [int(text), float(text), "+" + text]
    if text in ("true", "false"):
        out.append(text == "true")
    return out


class Pools:
    """What one profile reads, as values to put into payloads."""

    def __init__(self, profile: MqttProfile) -> None:
        self.profile = profile
        refs = _refs(profile)
        self.paths = sorted({_parts(r) for r in refs if not r.startswith("@")}, key=repr)
        self.person_paths = sorted({_parts(r) for m in profile.messages for r in m.privacy.person
                                    if not r.startswith("@")}, key=repr)
        self.time_paths = sorted({_parts(t.ref) for m in profile.messages for t in m.time
                                  if not t.ref.startswith("@")}, key=repr)
        codes: set = set()
        #: (the paths a key is read from, the parts of one key): a code of a table where it is read
        keyed: list[tuple[tuple, list[str]]] = []

        def add(refs: list[str], key: str) -> None:
            nonlocal codes
            parts = key.split("/") if len(refs) > 1 else [key]
            codes |= set(parts)
            if all(not r.startswith("@") for r in refs) and (tuple(refs), key) not in seen:
                seen.add((tuple(refs), key))
                keyed.append((tuple(_parts(r) for r in refs), parts))
        seen: set = set()
        for f in _all_maps(profile):
            for k in (f.enum or {}):
                add(f.refs, k)
            for x in f.ignore:
                add(f.refs, str(x))
        for c in _all_conds(profile):
            vals = [c.equals] if c.equals is not None else list(c.in_ or c.not_in or [])
            vals += [c.prefix, c.prefix + "x"] if c.prefix is not None else []
            for v in vals:
                add(c.refs, str(v))
        for m in profile.messages:
            codes |= set(m.privacy.absent)
        self.codes = sorted(codes)
        self.keyed = keyed or [((("x",),), ["1"])]
        self.captures = sorted({c for c in codes if re.fullmatch(r"[^/+#]+", c)} | {"g", "gate-1", "7H0123PAZ"})


POOLS = {n: Pools(p) for n, p in SHIPPED.items()}

# --- values ----------------------------------------------------------------------------------------

ODD_TEXT = ["", " ", "0", "00", "04", " 4 ", "+5", "-0", "4.0", "1e3", "NaN", "nan", "inf", "-Infinity",
            "true", "false", "True", "yes", "no", "on", "off", "null", "None", "\u0664", "1_000", "0x10",
            "5/75", "a,b", "fire,,anti, ", "x" * 200, "\u00b2", "007", "123456789012345", "9007199254740993",
            "12345678901234567", "\u95e8\u7981", "\ud800", "\x00", "'\"\\"]
ODD_NUMBERS = [0, 1, -1, 2, 3, 7, 10, 12, 75, 1000, 1024, 2**31, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**19, 10**25,
               123456789012345678901, -(10**21), 0.0, -0.0, 0.5, 1.5, 1e-300, 1e19, 9.3e18, -1e300,
               math.nan, math.inf, -math.inf, True, False]
_JPEG64 = base64.b64encode(pl.TINY_JPEG).decode()
SNAPSHOTS = [_JPEG64, "data:image/jpeg;base64," + _JPEG64, "data:,", "!!not base64!!", "/9j/4AAQ", "A" * 5000,
             base64.b64encode(b"\xff\x00 not quite").decode(), base64.b64encode(b"\xff\xd8").decode(),
             base64.b64encode(b"not a jpeg").decode(), _JPEG64[:-2], " " + _JPEG64]
PERSON_IDS = ["1203", 1203, 1203.0, 12.5, " 77 ", "0", 0, "", "  ", True, False, None, {"a": 1}, ["x"],
              "none", "\u5f20\u4e09", -0.0, 10**20]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 130), st.integers(), st.sampled_from(ODD_NUMBERS),
    st.floats(), st.text(max_size=12), st.sampled_from(ODD_TEXT))


def _iso(dt: datetime, sep: str, spec: str, zone: str) -> str:
    text = dt.isoformat(sep=sep, timespec=spec)
    return text.replace("+00:00", "Z") if zone == "Z" else text


times = st.one_of(
    st.builds(_iso, st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                                 timezones=st.sampled_from([None, timezone.utc, timezone(timedelta(hours=8)),
                                                            timezone(timedelta(hours=-3, minutes=-30))])),
              st.sampled_from(["T", " "]), st.sampled_from(["seconds", "milliseconds", "microseconds", "auto"]),
              st.sampled_from(["", "Z"])),
    st.builds(lambda d: _iso(d, "T", "seconds", ""), st.datetimes(min_value=datetime(2023, 12, 1),
                                                                 max_value=datetime(2024, 4, 1))),
    st.sampled_from(["2024-03-01T08:15:02+08:00", "2024-03-01 08:15:02", "2024-02-30T00:00:00Z",
                     "0001-01-01T00:00:00", "9999-12-31T23:59:59+14:00", "1999-12-31T23:59:59+08:00",
                     "2024-03-01T00:15:02.123456789Z", "2024-03-01T00:15:02.1234567+08:00",
                     "2024-03-01T00:15:02,5Z", "2024-03-01T08:15:02+0800", "20240301T081502", "yesterday",
                     "", "  ", " 2024-03-01T08:15:02+08:00 ", "2024-03-01T08:15:02.000+08:00"]),
    st.integers(NOW // 10**9 - 3 * 86400, NOW // 10**9 + 3 * 86400).flatmap(
        lambda s: st.sampled_from([s, s * 1000, s * 10**6, s * 10**9, str(s), str(s * 1000), f" {s} ",
                                   s + 0.25, str(s) + ".5", -s, float(s * 1000)])),
    st.sampled_from([0, -5, 946684799, 946684800, 10**11, 10**14, 10**17, 10**20, 2**63, "0", "-1", "1e9", True,
                     10**45, " 99999999999999.999999999999999999999999999 ", "0" * 40 + "1709251200",
                     "2024-03-01T08:15:02.123456789+08:00", "9999-12-31T23:59:59.999999999+14:00"]),
    st.floats())


@functools.cache
def values(pools: Pools) -> st.SearchStrategy:
    code = st.sampled_from(pools.codes).flatmap(lambda c: st.sampled_from(_forms(c)))
    leaf = st.one_of(code, code, scalars, times)
    return st.one_of(
        leaf, leaf, leaf,
        st.lists(st.one_of(code, scalars), max_size=4),
        st.dictionaries(st.sampled_from(["a", "b", "kind", "n", "on", "majorEventType"]), leaf, max_size=3),
        st.lists(st.sampled_from(pools.codes), max_size=5).map(",".join),
        st.sampled_from(SNAPSHOTS))


# --- payload surgery -------------------------------------------------------------------------------

def _existing(doc: object, prefix: tuple = ()) -> list[tuple]:
    out = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.append(prefix + (k,))
            out += _existing(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out.append(prefix + (i,))
            out += _existing(v, prefix + (i,))
    return out


def _set(doc: dict, parts: tuple, value: object) -> None:
    value = copy.deepcopy(value)  # values from constant pools: later surgery must not change them
    cur: object = doc
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        nxt = parts[i + 1] if not last else None
        if isinstance(part, int):
            if not isinstance(cur, list):
                return
            while len(cur) <= part:
                cur.append(None)
        elif not isinstance(cur, dict):
            return
        if last:
            cur[part] = value
            return
        child = cur[part] if isinstance(cur, list) else cur.get(part)
        if not isinstance(child, list if isinstance(nxt, int) else dict):
            child = [] if isinstance(nxt, int) else {}
            cur[part] = child
        cur = child


def _delete(doc: dict, parts: tuple) -> None:
    cur: object = doc
    for part in parts[:-1]:
        cur = cur[part]
    if isinstance(cur, dict):
        del cur[parts[-1]]
    else:
        cur.pop(parts[-1])


@st.composite
def mutated(draw, doc: dict, pools: Pools) -> dict:
    doc = json.loads(json.dumps(doc))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["delete", "set", "set", "set", "key", "key", "time", "person"]))
        if op == "delete":
            have = _existing(doc)
            if have:
                _delete(doc, draw(st.sampled_from(have)))
        elif op == "set":  # mostly a path the profile reads, else any key of the payload
            have = _existing(doc)
            paths = pools.paths if not have or draw(st.integers(0, 3)) else have
            _set(doc, draw(st.sampled_from(paths)), draw(values(pools)))
        elif op == "person":
            if pools.person_paths:
                _set(doc, draw(st.sampled_from(pools.person_paths)), draw(st.sampled_from(PERSON_IDS)))
        elif op == "key":  # a multi-ref key (Hikvision major/minor) set as a whole, in device forms
            paths, parts = draw(st.sampled_from(pools.keyed))
            for path, part in zip(paths, parts):
                _set(doc, path, draw(st.sampled_from(_forms(part))))
        elif pools.time_paths:
            _set(doc, draw(st.sampled_from(pools.time_paths)), draw(times))
    return doc


@st.composite
def encoded(draw, doc: object, gzip_ok: bool) -> tuple[object, int]:
    body = json.dumps(doc, ensure_ascii=draw(st.booleans()), separators=draw(st.sampled_from([None, (",", ":")])))
    raw = body.encode("utf-8", "surrogatepass")
    # hypothesis favours small and boundary numbers: choices from a Random seeded with the payload itself
    rnd = random.Random(b"%d:%s" % (draw(st.integers(0, 2**32)), raw))
    how = "plain" if rnd.random() < 0.75 else rnd.choice([
        "gzip", "gzip", "bom", "bad_utf8", "truncate", "garbage", "small_limit", "bytearray", "memoryview",
        "str", "bomb"])
    limit = 256 * 1024
    if how == "gzip" or (how == "plain" and gzip_ok and rnd.random() < 0.1):
        raw = gzip.compress(raw)
    elif how == "bom":
        raw = b"\xef\xbb\xbf" + raw
    elif how == "bad_utf8":
        i = draw(st.integers(0, len(raw)))
        raw = raw[:i] + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80"])) + raw[i:]
    elif how == "truncate":
        raw = raw[: draw(st.integers(0, max(0, len(raw) - 1)))]
    elif how == "garbage":
        raw = draw(st.binary(max_size=64))
    elif how == "small_limit":
        limit = rnd.choice([0, len(raw) - 1, len(raw), len(raw) + 1, rnd.randint(0, len(raw) + 10)])
        if rnd.random() < 0.5 and gzip_ok:  # the limit applies to the decompressed payload too
            raw = gzip.compress(raw)
    elif how == "bomb":
        raw = gzip.compress(b'{"SN":"' + b"0" * 300_000 + b'"}')
    elif how == "bytearray":
        return bytearray(raw), limit
    elif how == "memoryview":
        return memoryview(raw), limit
    elif how == "str":
        return body, limit
    return raw, limit


# --- simulator payloads ------------------------------------------------------------------------------

def sim_payload(dialect: str, seed: int, kind: int, ms: bool) -> tuple[str, dict]:
    rng = random.Random(seed)
    t = T0 + timedelta(seconds=rng.randint(-2 * 86400, 2 * 86400), milliseconds=rng.randint(0, 999))
    gate = rng.choice(["gate-1", "g", "7H0123PAZ", "lift-3"])
    if dialect == pl.ELEVATOR_DIALECT:
        model = pl.ElevatorModel(seed=seed)
        model.step(rng.uniform(0, 300))
        if kind == 0:
            topic, body = pl.elevator_status(gate, model, t, ms)
        elif kind == 1:
            topic, body = pl.elevator_fault(gate, rng, t, model if rng.random() < 0.7 else None, ms)
        else:
            topic, body = pl.elevator_heartbeat(gate, rng, t, rng.randint(0, 10**6))
    elif kind == 2 and dialect in pl.HEARTBEAT_DIALECTS:
        topic, body = pl.facegate_heartbeat(dialect, gate, rng, t)
    else:
        topic, body = pl.facegate_message(dialect, gate, rng, t, entry_prob=rng.random(), ms_time=ms)
    return topic, json.loads(body)


def _topics(profile: MqttProfile, pools: Pools) -> st.SearchStrategy:
    """Topics of the profile's messages with odd segments, and topics of no message at all."""
    templates = [t for m in profile.messages for t in m.topics]
    seg = st.sampled_from(pools.captures + ["", "a b", "\u95e8", "+", "x/y"])

    def fill(template: str, caps: list[str]) -> str:
        segs = template.split("/")
        it = iter(caps)
        out = [next(it) if s.startswith("{") or s == "+" else ("more/levels" if s == "#" else s) for s in segs]
        return "/".join(out)
    filled = st.builds(fill, st.sampled_from(templates), st.lists(seg, min_size=4, max_size=4))
    others = st.sampled_from([t for p in SHIPPED.values() for m in p.messages for t in m.topics]).map(
        lambda t: t.replace("{id}", "g").replace("{Code}", "AccessControl"))
    return st.one_of(filled, others, st.sampled_from(["", "/", "hikvision/g/event/extra", "elevator//status",
                                                      "DahuaVTO/AccessControl", "facegate/g"]))


OPTIONS = st.sampled_from([None, {}, {"door_is_floor": True}, {"door_is_floor": False}, {"door_is_floor": 1},
                           {"door_is_floor": "no"}, {"door_is_floor": ""}, {"unrelated": True},
                           {"opt_a": True}, {"opt_b": False}, {"opt_b": 0, "opt_a": "x"}])
NOWS = st.sampled_from([NOW, NOW + 3600 * 10**9, NOW - 2 * 86400 * 10**9, NOW + 3650 * 86400 * 10**9, 0])
WINDOWS = st.one_of(st.none(), st.none(), st.none(),
                    st.tuples(st.integers(NOW - 10**15, NOW), st.integers(NOW, NOW + 10**15)),
                    st.just((NOW, NOW - 1)), st.just((0, 2**63 - 1)))


@st.composite
def cases(draw, name: str):
    profile, pools = SHIPPED[name], POOLS[name]
    topic, doc = sim_payload(name, draw(st.integers(0, 2**32)), draw(st.integers(0, 2)), draw(st.booleans()))
    doc = draw(mutated(doc, pools))
    rnd = random.Random(f"{draw(st.integers(0, 2**32))}:{topic}:{doc!r}")
    if rnd.random() < 0.1:
        topic = draw(_topics(profile, pools))
    if rnd.random() < 0.03:  # not an object at all
        doc = draw(st.one_of(st.lists(scalars, max_size=3), scalars))
    payload, kw = draw(call(doc, profile.gzip))
    return profile, topic, payload, kw


@st.composite
def call(draw, doc: object, gzip_ok: bool) -> tuple[object, dict]:
    """The payload bytes and the keyword arguments of one map_message call."""
    payload, limit = draw(encoded(doc, gzip_ok))
    kw = {"privacy": draw(st.sampled_from(PRIVACIES)), "now_ns": draw(NOWS), "options": draw(OPTIONS)}
    window = draw(WINDOWS)
    if window is not None:
        kw["time_window"] = window
    if limit != 256 * 1024:
        kw["max_bytes"] = limit
    return payload, kw


@pytest.mark.parametrize("name", sorted(SHIPPED))
@SETTINGS
@given(data=st.data())
def test_shipped_profile_maps_as_the_reference(name, data):
    profile, topic, payload, kw = data.draw(cases(name))
    assert_same(profile, topic, payload, **kw)


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(SHIPPED)), payload=st.binary(max_size=200), topic_i=st.integers(0, 5))
def test_arbitrary_bytes_fail_as_in_the_reference(name, payload, topic_i):
    profile = SHIPPED[name]
    topics = [t.replace("{id}", "g").replace("{Code}", "AccessControl") for m in profile.messages for t in m.topics]
    assert_same(profile, topics[topic_i % len(topics)], payload, privacy=PRIVACIES[0], now_ns=NOW)


@pytest.mark.parametrize("kind", pl.MALFORMED_KINDS)
@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_malformed_payloads_fail_as_in_the_reference(name, kind):
    profile = SHIPPED[name]
    topic = profile.messages[0].topics[0].replace("{id}", "g").replace("{Code}", "AccessControl")
    for seed in range(3):
        got = assert_same(profile, topic, pl.malformed_payload(random.Random(seed), kind),
                          privacy=PRIVACIES[0], now_ns=NOW)
        assert got[0] == "raised" or kind in ("wrong_dialect", "nan"), got


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_size_limits_as_in_the_reference(name):
    topic, doc = sim_payload(name, 5, 0, False)
    raw = json.dumps(doc).encode()
    for payload in (raw, gzip.compress(raw)):
        for limit in (len(raw) - 1, len(raw), len(raw) + 1, len(payload) - 1, len(payload), len(payload) + 1):
            assert_same(SHIPPED[name], topic, payload, privacy=PRIVACIES[0], now_ns=NOW, max_bytes=limit)


def test_every_enum_code_of_every_shipped_profile_maps_as_the_reference():
    """Not left to chance: each code of each table, in the forms devices send, in each dialect's
    messages, with each option setting."""
    seen = 0
    for name, profile in SHIPPED.items():
        pools = POOLS[name]
        bases = [sim_payload(name, seed, kind, False) for seed in range(4) for kind in range(3)]
        for paths, parts in pools.keyed:
            for form in (0, 1, 3):
                for topic, doc in bases[::2]:
                    doc = json.loads(json.dumps(doc))
                    for path, part in zip(paths, parts):
                        _set(doc, path, _forms(part)[form] if form < len(_forms(part)) else part)
                    for options in (None, {"door_is_floor": True}):
                        got = assert_same(profile, topic, json.dumps(doc).encode(), privacy=PRIVACIES[0],
                                          now_ns=NOW, options=options)
                        seen += got[0] == "mapped"
    assert seen > 1000


# --- a profile that uses what the shipped ones do not ------------------------------------------------

KITCHEN_SINK = """
id: kitchen-sink
kind: mqtt
vendor: test
description: every profile feature the shipped profiles leave out
time_zone: Europe/Berlin
gzip: true
options: {opt_a: false, opt_b: true, opt_c: 0}
signature:
  - {ref: hdr.kind, exists: true}
  - {ref: hdr.bad, exists: false}
device_id: dev.ids[1]
messages:
  - name: first
    topics: ["ks/{site}/{id}/ev", "ks/{id}/#"]
    kind: event
    match:
      - {ref: hdr.kind, prefix: "ev"}
      - {ref: [hdr.a, hdr.b], not_in: ["1/1", "x/"]}
      - {ref: "@topic.id", not_in: [blocked]}
    device_id: "@topic.id"
    time:
      - {ref: t.local, format: local, zone: Asia/Tokyo}
      - {ref: t.ms, format: epoch_ms}
      - {ref: t.iso, format: iso8601}
      - {ref: t.s, format: epoch_s}
      - {ref: t.auto}
    privacy:
      person: [who.id, who.alt]
      absent: ["", "0", "none"]
      drop: [who.name]
      snapshot: pic
    points:
      - measurement: gate_event
        person: true
        when: [{ref: hdr.kind, in: [ev, evx, 5]}]
        tags:
          - {name: cat, ref: [hdr.a, hdr.b], enum: {"1/2": one_two, "2/04": two_four, "a/b": letters, "": empty_key,
                                                   "1/123456789012345678901": huge}, default: other}
          - {name: cat, value: const_cat}
          - {name: flag, ref: hdr.flag, type: bool}
          - {name: mode, ref: hdr.mode, enum: {1: "1", 2: "x", 3: "true"}, type: int}
          - {name: truth, ref: hdr.mode, enum: {1: "yes", 2: "off", 3: "maybe"}, type: bool}
          - {name: on_b, value: b_on, if_option: opt_b}
          - {name: off_a, value: a_off, unless_option: opt_a}
        fields:
          - {name: req_int, ref: v.i, type: int, required: true}
          - {name: scaled, ref: v.s, type: int, scale: 2, offset: 1}
          - {name: scaled_f, ref: v.s, type: float, scale: 0.5, offset: -3, ignore: [0, "n/a"]}
          - {name: offset_only, ref: v.s, offset: 0.5}
          - {name: auto, ref: v.auto}
          - {name: auto_def, ref: v.missing, default: 7.5}
          - {name: short, ref: v.str, type: str, max_len: 3}
          - {name: b, ref: v.b, type: bool, default: false}
          - {name: e, ref: v.e, enum: {1: 1, 2: "2", 3: 3.5, 4: true, 5: "abc", "": empty, x: .nan, 7: "", 8: .inf}, type: float}
          - {name: e_auto, ref: v.e, enum: {1: 1, 2: "2", 3: 3.5, 4: true, 7: ""}}
          - {name: e2, ref: v.e, enum: {1: a, 2: b}, required: true, default: z}
          - {name: e3, ref: v.e3, enum: {a: x}, required: true}
          - {name: e4, ref: v.e4, enum: {a: x}, default: .nan}
          - {name: dup, ref: v.d1, type: int}
          - {name: dup, ref: v.d2, type: str}
          - {name: dup, value: 3}
          - {name: dup2, ref: v.zz, default: .nan}
          - {name: dup2, value: 5}
          # paths only one mapping reads: no other rule decides for them
          - {name: e5, ref: v.e5, enum: {"": empty, 1: one}}
          - {name: odd_keys, ref: v.ok, enum: {"1000": c, "7": d, "0": g, "1_000": a, "000000000000000000007": b,
                                               "123456789012345678901": e, "-0": f, " 12 ": h}}
          - {name: only_enum, ref: v.oe, enum: {"123456789012345678901": big, 5: five}}
          - {name: c_float, value: 1.5}
          - {name: c_nan, value: .nan}
          - {name: c_bool, value: true}
          - {name: inf_def, ref: v.zz, default: .inf}
          - {name: str_def, ref: v.zz, type: int, default: "n/a"}
          - {name: big, ref: v.big, type: int, scale: 1.0e300}
          - {name: big_f, ref: v.big, type: float, scale: 1.0e300}
          - {name: ign_enum, ref: v.ie, enum: {0: zero, 1: one}, ignore: [0, "none"]}
          - {name: ign_int, ref: v.ie, type: int, ignore: ["1"]}
          - {name: only_a, ref: v.i, type: int, if_option: opt_a}
          - {name: not_b, ref: v.i, type: str, unless_option: opt_b}
          - {name: both, ref: v.i, type: float, if_option: opt_a, unless_option: opt_b}
          - {name: topic_site, ref: "@topic.site", type: str}
          - {name: topic_code, ref: "@topic.id", enum: {g: gee, "7": seven}}
          - {name: lst, ref: "arr[0]", type: int}
          - {name: lst2, ref: "arr[2].k", type: str}
          - {name: root_code, ref: hdr.kind, enum: {ev: 1, evx: 2}, type: int}
          - {name: three, ref: [hdr.a, hdr.b, v.e], enum: {"1/2/3": x, "a/b/": y}}
          - {name: whole, ref: ".", type: str}
          - {name: req_str, ref: v.rs, type: str, required: true, max_len: 2}
      - measurement: gate_alarm
        explode: {ref: items, sep: ";", max_items: 3}
        when: [{ref: "@item.on", exists: false}]
        tags:
          - {name: alarm, ref: "@item", enum: {fire: fire, "1": tamper}, default: other}
        fields:
          - {name: raw_alarm, ref: "@item", type: str}
          - {name: pair, ref: [hdr.a, "@item"], type: str}
          - {name: n, ref: "@item.n", type: int}
      - measurement: gate_alarm
        explode: {ref: objs}
        when: [{ref: "@item.on", equals: true}]
        tags:
          - {name: alarm, ref: "@item.kind", enum: {fire: fire}, default: other}
        fields:
          - {name: n, ref: "@item.n", type: int}
          - {name: deep, ref: "@item.sub[0]", type: str}
      - measurement: gate_alarm
        explode: {ref: words}
        tags:
          - {name: alarm, ref: "@item", enum: {fire: fire}}
  - name: second
    topics: ["ks/{id}/#"]
    kind: status
    on_bad_time: reject
    match: [{ref: hdr.kind, equals: 7}]
    time: [{ref: t.auto, format: auto}, {ref: t.iso2, format: iso8601}]
    points:
      - measurement: device_health
        fields: [{name: x, ref: v.i, type: int}, {name: y, ref: v.s, type: bool, required: true},
                 {name: tid, ref: "@topic.id", type: str}]
  - name: third
    topics: ["ks/{id}/#", "other/+/{id}"]
    kind: heartbeat
    device_id: dev.ids[0]
    match: [{ref: hdr.kind, in: [hb, 8, true]}]
    points: []
"""
SINK = MqttProfile.model_validate(yaml.safe_load(KITCHEN_SINK))
SINK_POOLS = Pools(SINK)
SINK_DOCS = [
    {"hdr": {"kind": "ev", "a": 1, "b": 2, "flag": True, "mode": 1}, "dev": {"ids": ["x", "dev-1"]},
     "t": {"local": "2024-03-01 17:00:00"}, "who": {"id": "p1", "alt": 5, "name": "n"},
     "pic": base64.b64encode(pl.TINY_JPEG).decode(),
     "v": {"i": 5, "s": 3, "auto": 1.5, "str": "abcdef", "b": "yes", "e": 3, "e3": "a", "e4": "b", "d1": "7",
           "d2": "q", "big": 10, "ie": 1, "rs": "xyz", "e5": 1, "ok": 7, "oe": 5},
     "arr": [1, 2, {"k": "v"}], "items": "fire;smoke;;1; x ", "words": ["fire", 3, {"a": 1}, None],
     "objs": [{"kind": "fire", "on": True, "n": 3, "sub": ["q"]}, {"kind": "x", "on": "true", "n": "4"}, 7]},
    {"hdr": {"kind": "evx", "a": "2", "b": "04", "flag": 0, "mode": "3"}, "dev": {"ids": ["x", 12]},
     "t": {"ms": 1709280000123, "iso": "2024-03-01T08:00:00Z"}, "who": {"id": "0", "alt": "none"},
     "v": {"i": "6", "s": "0", "auto": "x", "str": 12345, "b": 2, "e": "x", "e3": "b", "d2": 5,
           "big": 1e10, "ie": "0", "rs": ""}, "items": ["fire", 1, {"n": 2}]},
    {"hdr": {"kind": 7, "a": "x", "b": None}, "t": {"auto": "1709280000", "iso2": "2024-03-01T08:00:00"},
     "v": {"i": 1.0, "s": "yes"}, "dev": {"ids": ["a", "dev-9"]}},
    {"hdr": {"kind": "ev", "a": 1, "b": 3}, "t": {"iso": "2024-03-01T08:00:00+01:00"}},
    {"hdr": {"kind": "hb"}, "dev": {"ids": [" dev-2 ", "y"]}},
]


@st.composite
def sink_cases(draw):
    doc = draw(mutated(draw(st.sampled_from(SINK_DOCS)), SINK_POOLS))
    topic = draw(st.sampled_from(["ks/s1/g/ev", "ks/g/x"] * 4 + ["ks/7", "ks/s/blocked/ev", "ks/blocked/y",
                                                                "other/a/g", "other/a/", "ks//g/ev", "ks"]))
    payload, kw = draw(call(doc, True))
    return topic, payload, kw


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=sink_cases())
def test_every_profile_feature_maps_as_the_reference(case):
    topic, payload, kw = case
    assert_same(SINK, topic, payload, **kw)


def test_kitchen_sink_examples_reach_the_features():
    """The synthetic profile's base payloads map (so the property above tests mapping, not errors)."""
    kinds = set()
    for doc in SINK_DOCS:
        for topic in ("ks/s1/g/ev", "ks/g/x"):
            got = assert_same(SINK, topic, json.dumps(doc).encode(), privacy=PRIVACIES[0], now_ns=NOW)
            kinds.add(got[3] if got[0] == "mapped" else got[2])
    assert {"first", "second", "third", "missing_field"} <= kinds


# --- sweeps: every path a profile reads, with every odd value --------------------------------------

ODD_VALUES = ODD_NUMBERS + ODD_TEXT + PERSON_IDS + SNAPSHOTS + [
    [], {}, [1, "a"], {"a": 1}, [{"n": 1, "on": True, "kind": "fire"}], "fire;x;1", "fire,anti,x",
    [2**64], {"t": 10**20, "u": 1.5}, [[10**25]], "1_000", "000000000000000000007", "123456789012345678901"]
#: Where `auto` switches between s, ms, us and ns, and the edges of the sane window.
BOUNDARY_TIMES = [10**11 - 1, 10**11, 1e11, "100000000000", 10**14 - 1, 10**14, 1e14, 10**17 - 1, 10**17,
                  1e17, 946684799, 946684800, 946684800000, (NOW + 86400 * 10**9) // 10**9,
                  (NOW + 86400 * 10**9) // 10**6 + 1, NOW + 86400 * 10**9, NOW + 86400 * 10**9 + 1]
KW_ROTATION = [
    {"privacy": PRIVACIES[0], "now_ns": NOW},
    {"privacy": PRIVACIES[2], "now_ns": NOW, "options": {"door_is_floor": True, "opt_a": True}},
    {"privacy": PRIVACIES[1], "now_ns": NOW + 3600 * 10**9, "time_window": (0, 2**63 - 1)},
    {"privacy": PRIVACIES[0], "now_ns": NOW, "options": {"opt_b": False}},
]
SWEEPS = [(SHIPPED[n], POOLS[n], [sim_payload(n, seed, kind, False) for seed in (1, 2) for kind in range(3)])
          for n in SHIPPED]
SWEEPS.append((SINK, SINK_POOLS, [(t, d) for d in SINK_DOCS[:3] for t in ("ks/s1/g/ev", "ks/g/x")]))


@pytest.mark.parametrize("profile, pools, bases", SWEEPS, ids=lambda x: getattr(x, "id", ""))
def test_every_read_path_with_odd_values_maps_as_the_reference(profile, pools, bases):
    n = 0
    for topic, base in bases:
        for path in pools.paths:
            for value in ODD_VALUES:
                doc = json.loads(json.dumps(base))
                _set(doc, path, value)
                assert_same(profile, topic, json.dumps(doc).encode(), **KW_ROTATION[n % len(KW_ROTATION)])
                n += 1
        for path in pools.time_paths:
            for value in BOUNDARY_TIMES:
                doc = json.loads(json.dumps(base))
                _set(doc, path, value)
                for kw in KW_ROTATION:
                    assert_same(profile, topic, json.dumps(doc).encode(), **kw)
        for path in pools.person_paths:  # each person id on its own: the later ones count too
            for value in ODD_VALUES:
                doc = json.loads(json.dumps(base))
                for other in pools.person_paths:
                    _set(doc, other, None)
                _set(doc, path, value)
                assert_same(profile, topic, json.dumps(doc).encode(), **KW_ROTATION[n % 3])
                n += 1
    assert n > 1000


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_payloads_that_are_not_objects_fail_as_in_the_reference(name):
    profile = SHIPPED[name]
    topic = profile.messages[0].topics[0].replace("{id}", "g").replace("{Code}", "AccessControl")
    for value in ODD_VALUES:
        if not isinstance(value, dict):
            assert_same(profile, topic, json.dumps(value).encode(), privacy=PRIVACIES[0], now_ns=NOW)


# --- profile text is data, never code -----------------------------------------------------------------

CANARY = "POPLAR_CODEGEN_CANARY"
_RUN = "__import__('os').environ.__setitem__('" + CANARY + "','{}')"
#: Text that would run if it were spliced into generated source: quotes of every kind, escapes,
#: newlines, f-string braces, comment marks. Refs cannot hold whitespace, so some have none.
EVIL = [
    "x');" + _RUN.format(1) + ";('",
    'x");' + _RUN.format(2).replace("'", '"') + ';("',
    "a']or(" + _RUN.format(3) + ")or['",
    "c\\';" + _RUN.format(4) + ";#",
    "'" * 3 + '"' * 3 + "\\",
    "{" + _RUN.format(5) + "}",
    "\n" + _RUN.format(6) + "\n",
    "x'] = 1\n" + _RUN.format(7) + "  # ",
    "\\n\\x00\\u1234 # comment",
]
EVIL_REFS = [e for e in EVIL if not re.search(r"\s", e)]  # R0 signature, R1-R3 values, R4 time, R5 person


def _evil_profile() -> MqttProfile:
    r = EVIL_REFS
    assert len(r) >= 6
    keys = {e: f"v{i}" for i, e in enumerate(EVIL)}
    vals = {str(i): e for i, e in enumerate(EVIL)}
    return MqttProfile.model_validate({
        "id": EVIL[0], "kind": "mqtt", "vendor": EVIL[1], "description": EVIL[6],
        "options": {e: False for e in EVIL},
        "signature": [{"ref": r[0], "exists": True}],
        "device_id": "@topic.id",
        "messages": [{
            "name": e, "topics": [f"evil/{{id}}/{i}"], "kind": "event",
            "match": [{"ref": r[1], "in": EVIL}, {"ref": r[0], "not_in": EVIL[:1]},
                      {"ref": r[2], "prefix": e}] if i == 0 else [],
            "time": [{"ref": r[4], "format": "auto"}],
            "privacy": {"person": [r[5]], "absent": EVIL},
            "points": [{
                "measurement": "gate_event", "person": True,
                "when": [{"ref": r[1], "not_in": [e]}],
                "tags": [{"name": "event", "ref": [r[1], r[2]], "enum": {e: "t" + str(i)}, "default": "d"}],
                "fields": [
                    {"name": "f_enum", "ref": r[1], "enum": vals, "default": e},
                    {"name": "f_key", "ref": r[2], "enum": keys},
                    {"name": "f_str", "ref": r[3], "type": "str", "max_len": 40},
                    {"name": "f_const", "value": e},
                    {"name": "f_ign", "ref": r[1], "type": "str", "ignore": EVIL},
                    {"name": "f_opt", "ref": r[2], "type": "str", "if_option": e},
                ],
            }],
        } for i, e in enumerate(EVIL)],
    })


def test_profile_text_never_runs_as_code():
    os.environ.pop(CANARY, None)
    evil = _evil_profile()
    rng = random.Random(3)
    mapped = 0
    for n in range(300):
        doc: dict = {}
        for ref in EVIL_REFS:
            if rng.random() < 0.8:
                _set(doc, _parts(ref), rng.choice(EVIL + list(range(len(EVIL))) + [str(rng.randint(0, 9))]))
        for i in range(len(EVIL)):
            got = assert_same(evil, f"evil/g{n % 3}/{i}", json.dumps(doc).encode(), privacy=PRIVACIES[n % 3],
                              now_ns=NOW, options={e: bool(rng.getrandbits(1)) for e in EVIL})
            mapped += got[0] == "mapped"
    assert CANARY not in os.environ
    assert mapped > 500  # the evil strings were mapped as data, not only refused
    for i in range(len(EVIL)):
        _assert_only_generated_code(NEW._route(evil, f"evil/g/{i}").generate())  # type: ignore[union-attr]


_NAMES = re.compile(r"^((v|x|k|c|h|it|on)\d+|_k\d+|caps\d*|d|options|opts|privacy|now_ns|window|w|dev|ex|lo|hi|ts|"
                    r"s|person|pts|t|f|rf|x|n|ty|M|join|key_of|canon_str|value|put|put_tag|keep|timestamp|"
                    r"device_id|device_ids|person_of|snapshot|items|Point|Mapped|MapError|type|str|int|bool|"
                    r"dict|list|len|float|map_message|read)$")
_ATTRIBUTES = {"get", "strip", "pseudonym", "startswith", "isdigit", "isascii", "update", "extend", "append"}


def _assert_only_generated_code(fn) -> None:
    """Every name and attribute in FN's source is one the generator makes up or binds, and the
    namespace offers no way out (no __import__, eval, open): profile text is only in literals."""
    assert set(fn.__globals__["__builtins__"]) <= {"type", "str", "int", "bool", "dict", "list", "len", "float"}
    for node in ast.walk(ast.parse(fn.__source__)):
        if isinstance(node, ast.Name):
            assert _NAMES.match(node.id), node.id
        elif isinstance(node, ast.Attribute):
            assert node.attr in _ATTRIBUTES, node.attr
        elif isinstance(node, (ast.Import, ast.ImportFrom, ast.Lambda, ast.ClassDef, ast.Global)):
            raise AssertionError(ast.dump(node))


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_generated_code_holds_only_its_own_names(name):
    profile = SHIPPED[name]
    for m in profile.messages:
        for topic in m.topics:
            route = NEW._route(profile, topic.replace("{id}", "g").replace("{Code}", "AccessControl"))
            _assert_only_generated_code(route.generate())  # type: ignore[union-attr]
    _assert_only_generated_code(NEW._route(SINK, "ks/s1/g/ev").generate())  # type: ignore[union-attr]
