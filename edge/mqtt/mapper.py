"""Pure MQTT mapping: (profile, topic, payload bytes) -> points. No I/O, no clock.

Every failure is a MapError with a short machine `reason` the caller counts and logs; nothing
else escapes (tested with hypothesis). Only what a profile maps becomes a field or tag: the
mapper is a whitelist, so unknown payload keys (names, pictures, vendor extras) are ignored.

The rules are written once, here: how a raw value becomes a field (`_value_of`: ignore, enum,
type coercion, scale, defaults, required), times (`_timestamp`), device ids, person ids,
snapshots, exploded lists, decoding. Speed (the box ingests 20k events/s in one process): a
profile is compiled once (`_compiled`), and for each topic pattern (`_Route`) edge/mqtt/codegen.py
writes one Python function that tests the signature, recognises the message and maps it: it
reads every payload path once, looks enum tables up by precomputed canonical keys, tests
conditions and device options inline and stores the common value types directly, calling the
rules here for anything else. The behaviour is that of the interpreter this replaced, kept as
tests/mqtt_reference_mapper.py and compared by property tests
(tests/test_mqtt_mapper_equivalence.py).
"""

from __future__ import annotations

import binascii
import json
import math
import re
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo

import orjson

from common.points import FieldValue, Point, keep_field, priority_of
from edge.mqtt import codegen
from edge.mqtt.profile import Explode, FieldMap, MessageSpec, MqttProfile, TimeSource, canon
from edge.privacy import Privacy

MIN_TIME_NS = 946_684_800 * 10**9  # 2000-01-01T00:00:00Z: earlier means an unset device clock
MAX_AHEAD_NS = 86_400 * 10**9  # a day ahead of the gateway's clock is a wrong device clock
MAX_DEVICE_ID = 64
MAX_SNAPSHOT = 2 * 1024 * 1024
_MISSING = object()
_UNSET = object()
_DEVICE_ID = re.compile(r"^[\w.:\-]{1,64}$")
_NUMERIC_TIME = re.compile(r"\s*[+-]?\d+(\.\d+)?\s*")
_FRACTION = re.compile(r"[.,](\d{7,9})(?=(Z|[+-]\d\d:?\d\d)?$)")
#: orjson turns integers beyond 64 bits into floats (json keeps them exact); such a float is at
#: least 2**63 in magnitude (see _Inexact).
_BIG = 9.2e18
_TOPIC_CACHE = 20_000
_TIME_CACHE = 4096
_ID_CACHE = 20_000
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class MapError(ValueError):
    """A message that cannot be mapped. `reason` is a short counter name, str() the detail."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class Mapped:
    device_id: str
    kind: str
    points: list[Point]
    snapshot: bytes | None = None
    #: Non-fatal problems (a field of the wrong type was skipped, time corrected...), for logs.
    warnings: list[str] = field(default_factory=list)
    message: str = ""  # the profile message name that matched


# --- topics -------------------------------------------------------------------------------------

def _match_filter(filt: str, topic: str) -> dict[str, str] | None:
    fsegs, tsegs = filt.split("/"), topic.split("/")
    caps: dict[str, str] = {}
    for i, f in enumerate(fsegs):
        if f == "#":
            return caps
        if i >= len(tsegs):
            return None
        t = tsegs[i]
        if f == "+":
            continue
        if f.startswith("{"):
            if not t:
                return None
            caps[f[1:-1]] = t
        elif f != t:
            return None
    return caps if len(fsegs) == len(tsegs) else None


def _scan_topic(profile: MqttProfile, topic: str) -> list[tuple[MessageSpec, dict[str, str]]]:
    out = []
    for m in profile.messages:
        for filt in m.topics:
            caps = _match_filter(filt, topic)
            if caps is not None:
                out.append((m, caps))
                break
    return out


class _Route:
    """Where a topic leads in a profile: the messages whose topics match (in profile order), each
    with its captured segments, and the generated function that maps a payload as the first
    whose match holds."""

    __slots__ = ("candidates", "caps", "_cp", "_shape", "fn")

    def __init__(self, cp: "_CProfile", found: list[tuple[MessageSpec, dict[str, str]]]) -> None:
        groups: list[dict[str, str]] = []  # equal captures, one dict: the values are read once
        shape = []
        self.candidates: list[tuple[_CMessage, dict[str, str]]] = []
        for m, caps in found:
            g = next((i for i, c in enumerate(groups) if c == caps), None)
            if g is None:
                g = len(groups)
                groups.append(caps)
            shape.append((m.name, g))
            self.candidates.append((cp.messages[m.name], groups[g]))
        self.caps = tuple(groups)
        self._cp, self._shape = cp, tuple(shape)
        #: fn(payload, caps, options, privacy, now_ns, window) -> Mapped (codegen.route), made
        #: when a payload is first mapped: topic look-ups alone never run the generator
        self.fn: Callable[..., Mapped] | None = None

    def generate(self) -> Callable[..., Mapped]:
        self.fn = self._cp.route_map(self._shape)
        return self.fn


def _route(profile: MqttProfile, topic: str) -> _Route | None:
    """The route of TOPIC in PROFILE, None if no message reads it. Cached per topic (a compound
    has a few hundred device topics); the caps dicts are shared: read only."""
    cp = _compiled(profile)
    hit = cp.topics.get(topic)
    if hit is None:
        found = _scan_topic(profile, topic)
        hit = _Route(cp, found) if found else False
        if len(cp.topics) >= _TOPIC_CACHE:
            cp.topics.clear()
        cp.topics[topic] = hit
    return hit or None


def match_topic(profile: MqttProfile, topic: str) -> dict | None:
    """Which message of PROFILE the topic belongs to: {"message", "kind", "captures"}, or None.

    Several messages may share a topic (recognised by payload); this returns the first.
    """
    route = _route(profile, topic)
    if route is None:
        return None
    m, caps = route.candidates[0]
    return {"message": m.spec.name, "kind": m.spec.kind, "captures": dict(caps)}


# --- the rules ----------------------------------------------------------------------------------

_CANON_SETS: dict[int, tuple[list, frozenset[str]]] = {}


def _canon_set(values: list) -> frozenset[str]:
    """Canonical forms of a profile's value list, computed once per list. Keyed by identity
    (1 and True are equal as dict keys but not as codes); the entry keeps the list alive, so an
    id is never reused for another list."""
    hit = _CANON_SETS.get(id(values))
    if hit is None or hit[0] is not values:
        hit = _CANON_SETS[id(values)] = (values, frozenset(canon(x) for x in values))
    return hit[1]


class _CField:
    """A field or tag mapping as the rules use it: its enum table with the values already
    coerced (they are constants), its ignore list in canonical form."""

    __slots__ = ("fm", "name", "ignore", "enum", "default", "required")

    def __init__(self, fm: FieldMap) -> None:
        self.fm = fm
        self.name = fm.name
        self.ignore = _canon_set(fm.ignore) if fm.ignore else None
        self.default = fm.default
        self.required = fm.required
        # (1, value) or (0, the error to report)
        self.enum: dict[str, tuple[int, object]] | None = None
        if fm.enum is not None:
            self.enum = {}
            for k, v in fm.enum.items():
                try:
                    self.enum[k] = (1, _coerce(fm, v))
                except (TypeError, ValueError, OverflowError) as exc:
                    self.enum[k] = (0, exc)


_CFIELDS: dict[int, tuple[FieldMap, _CField]] = {}


def _cfield(fm: FieldMap) -> _CField:
    """The _CField of FM, made once (keyed by identity; the entry keeps FM alive)."""
    hit = _CFIELDS.get(id(fm))
    if hit is None or hit[0] is not fm:
        if len(_CFIELDS) >= 100_000:
            _CFIELDS.clear()
        hit = _CFIELDS[id(fm)] = (fm, _CField(fm))
    return hit[1]


def _key_of(raw: object) -> str | None:
    """The canonical form of a value for enum tables and conditions; None when it is absent or
    an object or list (no code)."""
    if raw is _MISSING or raw is None or isinstance(raw, (dict, list)):
        return None
    return canon(raw)


def _join(vals: Sequence[object]) -> object:
    """Several refs' values as one key joined by "/" (missing if any part is missing, null, or
    an object or list)."""
    for v in vals:
        if v is _MISSING or v is None:
            return _MISSING
    for v in vals:
        if isinstance(v, (dict, list)):
            return _MISSING
    return "/".join([canon(v) for v in vals])


def _coerce(fm: FieldMap, raw: object) -> FieldValue:
    """Raise ValueError/TypeError when RAW cannot be the field's type."""
    t = fm.type
    if isinstance(raw, (dict, list)):
        raise TypeError("an object or list, not a value")
    if t is None:
        t = "bool" if isinstance(raw, bool) else "int" if isinstance(raw, int) else \
            "float" if isinstance(raw, float) else "str"
    if t == "str":
        s = canon(raw) if isinstance(raw, bool) else str(raw)
        return s[: fm.max_len]
    if t == "bool":
        if isinstance(raw, bool):
            return raw
        c = canon(raw).lower()
        if c in ("1", "true", "yes", "on"):
            return True
        if c in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"not a boolean: {str(raw)[:20]!r}")
    if isinstance(raw, bool):
        raise TypeError("a boolean, not a number")
    num = float(raw.strip()) if isinstance(raw, str) else raw
    if not isinstance(num, (int, float)) or not math.isfinite(num):
        raise ValueError(f"not a finite number: {str(raw)[:20]!r}")
    if fm.scale is not None or fm.offset:
        num = num * (fm.scale if fm.scale is not None else 1) + fm.offset
    if t == "int":
        if isinstance(num, float):
            if not num.is_integer():
                raise ValueError(f"not an integer: {num}")
            num = int(num)
        return num
    return float(num)


def _value_of(cf: _CField, raw: object, warnings: list[str]) -> FieldValue | None:
    """The value a field or tag mapping gives for RAW (None: no value), or MapError for a
    required one. The whole rule; generated code takes shortcuts only where it gives the same."""
    if cf.ignore is not None and raw is not _MISSING and not isinstance(raw, (dict, list)) \
            and canon(raw) in cf.ignore:
        raw = None
    if raw is _MISSING or raw is None or raw == "":
        if cf.required:
            raise MapError("missing_field", f"{cf.fm.ref} is required for {cf.name}")
        return cf.default
    enum = cf.enum
    if enum is not None:
        if isinstance(raw, (dict, list)):
            if cf.required:
                raise MapError("wrong_type", f"{cf.fm.ref} for {cf.name}: an object or list")
            warnings.append(f"{cf.name}: skipped, an object or list")
            return cf.default
        hit = enum.get(canon(raw))
        if hit is None:
            if cf.required and cf.default is None:
                raise MapError("wrong_type", f"{cf.fm.ref}: value not in the enum of {cf.name}")
            return cf.default
        if hit[0]:
            return hit[1]  # type: ignore[return-value]
        exc = hit[1]
    else:
        try:
            return _coerce(cf.fm, raw)
        except (TypeError, ValueError, OverflowError) as e:
            exc = e
    if cf.required:
        raise MapError("wrong_type", f"{cf.fm.ref} for {cf.name}: {exc}") from None
    warnings.append(f"{cf.name}: skipped, {exc}")
    return None


def _put(fields: dict[str, FieldValue], refused: list[str], name: str, v: object) -> None:
    """Store a mapped value (None: no value), or refuse it (NaN, infinities: no line protocol)."""
    if v is not None:
        keep_field(fields, refused, name, v)


def _tag_value(v: object) -> str | None:
    """What a mapped value becomes as a tag: bools as true/false; None: no tag."""
    if isinstance(v, bool):
        v = canon(v)
    return v if isinstance(v, str) and v else None


def _put_tag(tags: dict[str, str], name: str, v: object) -> None:
    tag = _tag_value(v)
    if tag is not None:
        tags[name] = tag


# --- time ---------------------------------------------------------------------------------------

def _epoch_ns(num: float, unit: str) -> int:
    if unit == "auto":
        a = abs(num)
        unit = "s" if a < 1e11 else "ms" if a < 1e14 else "us" if a < 1e17 else "ns"
    mult = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}[unit]
    return int(round(num * mult))


def _parse_time(src: TimeSource, raw: object, zone: ZoneInfo) -> int:
    """Nanoseconds since the epoch, UTC. Raises ValueError/TypeError/OverflowError."""
    fmt = src.format
    if isinstance(raw, bool) or isinstance(raw, (dict, list)):
        raise TypeError("not a time")
    if isinstance(raw, str) and _NUMERIC_TIME.fullmatch(raw) and fmt != "local" and fmt != "iso8601":
        raw = float(raw)
    if isinstance(raw, (int, float)):
        if not math.isfinite(raw) or fmt in ("iso8601", "local"):
            raise ValueError("not a time")
        return _epoch_ns(raw, {"epoch_s": "s", "epoch_ms": "ms"}.get(fmt, "auto"))
    if not isinstance(raw, str) or fmt in ("epoch_s", "epoch_ms"):
        raise TypeError("not a time")
    text = raw.strip()
    frac_ns = 0
    m = _FRACTION.search(text)
    if m:  # fromisoformat keeps microseconds; keep the digits beyond them ourselves
        digits = m.group(1).ljust(9, "0")
        frac_ns = int(digits[6:])
        text = text[: m.start(1) + 6] + text[m.end(1):]
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        if fmt == "iso8601":
            raise ValueError("ISO 8601 time without a UTC offset")
        dt = dt.replace(tzinfo=ZoneInfo(src.zone) if src.zone else zone)
    elif fmt == "local":
        raise ValueError("local time with an offset")
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 10**9 + delta.microseconds * 1000 + frac_ns


def _timestamp(cm: "_CMessage", raws: Sequence[object], lo: int, hi: int, now_ns: int,
               fields: dict[str, FieldValue], warnings: list[str]) -> int:
    """The point time from the message's time sources (RAWS, in order), or the receive time
    with `time_corrected` (or MapError bad_time, as the profile says)."""
    m = cm.spec
    problem = "no time in the payload"
    for src, cache, raw in zip(m.time, cm.time_cache, raws):
        if raw is _MISSING or raw is None or raw == "":
            continue
        # Gates report whole seconds: a busy stream repeats each time string (or number) many
        # times. Only str and int keys: True == 1 must not find 1's time.
        keyed = type(raw) is str or type(raw) is int
        ts = cache.get(raw) if keyed else None  # type: ignore[call-overload]
        if ts is None:
            try:
                ts = _parse_time(src, raw, cm.zone)
            except (ValueError, TypeError, OverflowError, KeyError) as exc:
                problem = f"{src.ref}: cannot read {str(raw)[:40]!r} as a time ({str(exc)[:60]})"
                break
            if keyed:
                if len(cache) >= _TIME_CACHE:
                    cache.clear()
                cache[raw] = ts  # type: ignore[index]
        if lo <= ts <= hi:
            return ts
        problem = f"{src.ref}: {str(raw)[:40]!r} is outside the sane window"
        fields["device_time"] = str(raw)[:40]
        break
    if m.on_bad_time == "reject":
        raise MapError("bad_time", problem)
    # Keep the event at the receive time and say so: losing a door alarm over a device's
    # unset clock is worse than a few seconds of time error.
    fields["time_corrected"] = True
    warnings.append(f"time corrected: {problem}")
    return now_ns


# --- device ids, persons, snapshots, lists --------------------------------------------------------

#: Device ids already checked, by their raw text: a compound has a few hundred.
_DEVICE_IDS: dict[str, str] = {}


def _device_id(ref: str, raw: object) -> str:
    if raw is _MISSING or raw is None or raw == "":
        raise MapError("missing_field", f"no device id at {ref}")
    if isinstance(raw, (dict, list, bool, float)):
        raise MapError("wrong_type", f"device id at {ref} is not a string")
    dev = str(raw).strip()
    if not _DEVICE_ID.match(dev):
        raise MapError("wrong_type", f"device id at {ref} is not a short plain identifier")
    if type(raw) is str:
        if len(_DEVICE_IDS) >= _ID_CACHE:
            _DEVICE_IDS.clear()
        _DEVICE_IDS[raw] = dev  # type: ignore[index]
    return dev


def _person(absent: list[str], raws: Sequence[object], privacy: Privacy) -> str | None:
    """The pseudonym of the first person id present (RAWS in the profile's order), or None."""
    for raw in raws:
        if raw is _MISSING or raw is None or isinstance(raw, (dict, list, bool)):
            continue
        text = canon(raw) if isinstance(raw, (int, float)) else str(raw).strip()
        if text in absent or not text:
            continue
        return privacy.pseudonym(text)
    return None


def _snapshot(raw: object, warnings: list[str]) -> bytes | None:
    if not isinstance(raw, str) or not raw:
        return None
    if raw.startswith("data:"):
        raw = raw.partition(",")[2]
    if len(raw) > MAX_SNAPSHOT * 4 // 3 + 4:
        warnings.append("snapshot too large, ignored")
        return None
    try:
        data = binascii.a2b_base64(raw)  # base64.b64decode(raw) without its wrapper: ASCII str or ValueError
    except (binascii.Error, ValueError):
        warnings.append("snapshot is not base64, ignored")
        return None
    if not data.startswith(b"\xff\xd8"):
        warnings.append("snapshot is not a JPEG, ignored")
        return None
    return data


def _items(explode: Explode, raw: object) -> list[object]:
    """The elements of an exploded list (a JSON array, or a string split on `sep`)."""
    if isinstance(raw, str):
        items: list[object] = [s.strip() for s in raw.split(explode.sep) if s.strip()]
    elif isinstance(raw, list):
        items = raw
    else:
        items = []
    return items[: explode.max_items]


# --- decoding -----------------------------------------------------------------------------------

# orjson reads valid UTF-8 JSON exactly as json does, ~5x faster, but for one thing: an integer
# beyond 64 bits becomes a float (json keeps it exact), of 2**63 or more in magnitude. A payload
# holding such a number anywhere used to be parsed again by json, after a walk of every value
# (~2 us a message). Now the functions that read an orjson document call checked rules: a float
# that big, read where its type matters, raises _Inexact, and the message is mapped again from
# json's document. The fast paths in generated code never take floats that big.

class _Inexact(Exception):
    """A value read from an orjson document may be an integer orjson rounded."""


#: The last payload decoded (bytes only: immutable), with what decides its document: the MQTT
#: source asks a payload's device id (for dialects that carry it in the payload) and then maps
#: it, so the second call reuses the parse. Documents are only ever read.
_LAST_DECODED: tuple[bytes, bool, int, object, bool] | None = None


def _decode(profile: MqttProfile, payload: bytes, max_bytes: int, exact: bool = False) -> tuple[object, bool]:
    """The document of PAYLOAD, and whether json made it (exact) rather than orjson."""
    global _LAST_DECODED
    last = _LAST_DECODED
    if last is not None and last[0] is payload and last[1] == profile.gzip and last[2] == max_bytes \
            and (last[4] or not exact):
        return last[3], last[4]
    data = _unpacked(profile, payload, max_bytes)
    doc, is_exact = _UNSET, True
    if not exact:
        # Whatever orjson refuses (a BOM, bad UTF-8, NaN, lone surrogates, 1e400, deep nesting)
        # goes to json, which decides and words the error as it always did.
        try:
            doc, is_exact = orjson.loads(data), False
        except orjson.JSONDecodeError:
            pass
    if doc is _UNSET:
        doc = _json(data)
    if type(payload) is bytes:
        _LAST_DECODED = (payload, profile.gzip, max_bytes, doc, is_exact)
    return doc, is_exact


def _unpacked(profile: MqttProfile, payload: bytes, max_bytes: int) -> bytes:
    """The JSON bytes of PAYLOAD: size checked, gunzipped where the profile allows."""
    if type(payload) is not bytes:
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise MapError("wrong_type", "payload must be bytes")
        payload = bytes(payload)
    if len(payload) > max_bytes:
        raise MapError("too_large", f"{len(payload)} bytes > {max_bytes}")
    if profile.gzip and payload[:2] == b"\x1f\x8b":
        d = zlib.decompressobj(wbits=31)
        try:
            payload = d.decompress(payload, max_bytes + 1)
        except zlib.error:
            raise MapError("malformed_json", "bad gzip data") from None
        if len(payload) > max_bytes or d.unconsumed_tail:
            raise MapError("too_large", f"decompressed payload > {max_bytes} bytes")
    return payload


def _json(data: bytes) -> object:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MapError("not_utf8", f"invalid UTF-8 at byte {exc.start}") from None
    try:
        doc = json.loads(text)
    except RecursionError:
        raise MapError("malformed_json", "nested too deeply") from None
    except ValueError as exc:
        raise MapError("malformed_json", str(exc)[:120]) from None
    if _SURROGATE_ESCAPE.search(text):
        # "\ud800" alone is valid JSON but no text: it has no UTF-8 form, so it could be neither
        # stored in the outbox nor written to InfluxDB (a proper pair, an emoji, is fine).
        try:
            json.dumps(doc, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise MapError("not_utf8", "a \\uD800-\\uDFFF escape without its pair") from None
    return doc


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _check(raw: object) -> None:
    """Raise _Inexact for a float that may be an integer orjson rounded."""
    if type(raw) is float and not -_BIG < raw < _BIG:
        raise _Inexact


def _checked_key_of(raw: object) -> str | None:
    _check(raw)
    return _key_of(raw)


def _checked_join(vals: Sequence[object]) -> object:
    for v in vals:
        _check(v)
    return _join(vals)


def _checked_value(cf: _CField, raw: object, warnings: list[str]) -> FieldValue | None:
    _check(raw)
    return _value_of(cf, raw, warnings)


def _checked_timestamp(cm: "_CMessage", raws: Sequence[object], lo: int, hi: int, now_ns: int,
                       fields: dict[str, FieldValue], warnings: list[str]) -> int:
    for raw in raws:  # a warning quotes an object or list it cannot read: its numbers count too
        if _has_big_float(raw):
            raise _Inexact
    return _timestamp(cm, raws, lo, hi, now_ns, fields, warnings)


def _checked_device_id(ref: str, raw: object) -> str:
    _check(raw)
    return _device_id(ref, raw)


def _checked_person(absent: list[str], raws: Sequence[object], privacy: Privacy) -> str | None:
    for raw in raws:
        _check(raw)
    return _person(absent, raws, privacy)


def _has_big_float(doc: object) -> bool:
    """Whether DOC holds a float of 2**63 or more in magnitude (maybe an integer orjson rounded).
    A walk of the decoded values, not a scan of the bytes: pictures make payloads long, not deep."""
    if type(doc) is float:
        return not -_BIG < doc < _BIG
    if type(doc) is not dict and type(doc) is not list:
        return False
    stack = [doc]
    while stack:
        o = stack.pop()
        for v in (o.values() if type(o) is dict else o):  # type: ignore[union-attr]
            t = type(v)
            if t is float:
                if not -_BIG < v < _BIG:
                    return True
            elif t is dict or t is list:
                stack.append(v)
    return False




_RUNTIME = codegen.Runtime(
    missing=_MISSING, field=_cfield, value=_value_of, put=_put, put_tag=_put_tag, tag_value=_tag_value,
    keep=keep_field, join=_join, key_of=_key_of, canon_str=lru_cache(maxsize=8192)(canon),
    timestamp=_timestamp, device_id=_device_id, device_ids=_DEVICE_IDS, person=_person,
    snapshot=_snapshot, items=_items, point=Point, mapped=Mapped, map_error=MapError, min_time_ns=MIN_TIME_NS,
    max_ahead_ns=MAX_AHEAD_NS, big=_BIG, priority_of=priority_of,
    checked={"key_of": _checked_key_of, "join": _checked_join, "value": _checked_value,
             "timestamp": _checked_timestamp, "device_id": _checked_device_id, "person_of": _checked_person})


# --- the compiled profile -----------------------------------------------------------------------

class _CMessage:
    """One message of a profile as generated code and the rules use it: the caches of its time
    sources, and the reader of its device id (for device_id_of)."""

    def __init__(self, profile: MqttProfile, m: MessageSpec) -> None:
        self.spec = m
        self.device_ref = profile.device_id
        self.zone = profile.zone
        self.time_cache: list[dict[object, int]] = [{} for _ in m.time]
        self._device_reader: Callable[[object, dict], object] | None = None

    def device_raw(self, data: object, caps: dict[str, str]) -> object:
        if self._device_reader is None:
            self._device_reader = codegen.reader(self.spec.device_id or self.device_ref, _RUNTIME)
        return self._device_reader(data, caps)


class _CProfile:
    def __init__(self, profile: MqttProfile) -> None:
        self.profile = profile
        self.messages = {m.name: _CMessage(profile, m) for m in profile.messages}
        self.topics: dict[str, _Route | bool] = {}  # False: no message reads the topic
        self._maps: dict[tuple[tuple[str, int], ...], Callable[..., Mapped]] = {}

    def route_map(self, shape: tuple[tuple[str, int], ...]) -> Callable[..., Mapped]:
        """The mapping function for candidates of this SHAPE ((message name, captures group) in
        order), made once: the topics of one pattern share it."""
        fn = self._maps.get(shape)
        if fn is None:
            fn = self._maps[shape] = codegen.route(
                self.profile, [(self.messages[name], g) for name, g in shape], _RUNTIME)
        return fn


_COMPILED: dict[int, tuple[MqttProfile, _CProfile]] = {}


def _compiled(profile: MqttProfile) -> _CProfile:
    """The compiled form of PROFILE, made once. Keyed by identity; the entry keeps the profile
    alive, so an id is never reused for another profile (profiles are frozen)."""
    hit = _COMPILED.get(id(profile))
    if hit is None or hit[0] is not profile:
        if len(_COMPILED) >= 256:  # profiles reloaded over and over: start afresh
            _COMPILED.clear()
        hit = _COMPILED[id(profile)] = (profile, _CProfile(profile))
    return hit[1]


# --- mapping ------------------------------------------------------------------------------------

def map_message(profile: MqttProfile, topic: str, payload: bytes, *, privacy: Privacy, now_ns: int,
                max_bytes: int = 256 * 1024, time_window: tuple[int, int] | None = None,
                options: Mapping[str, object] | None = None) -> Mapped:
    """Map one MQTT message through PROFILE. Raises MapError, nothing else.

    `options` are per-device overrides of the profile's `options` (e.g. door_is_floor for a
    Hikvision terminal used as an elevator controller). `time_window` (ns, ns) overrides the
    default sane window [2000-01-01, now + 1 day].
    """
    try:
        route = _route(profile, topic)
        if route is None:
            raise MapError("unknown_message", f"topic {topic[:100]!r} is not in profile {profile.id}")
        data, exact = _decode(profile, payload, max_bytes)
        try:
            return _map_doc(profile, route, data, privacy, now_ns, time_window, options, exact)
        except _Inexact:  # only from an orjson document: map json's
            data, _ = _decode(profile, payload, max_bytes, exact=True)
            return _map_doc(profile, route, data, privacy, now_ns, time_window, options, True)
    except MapError:
        raise
    except RecursionError:
        raise MapError("malformed_json", "nested too deeply") from None
    except Exception as exc:  # a bug must cost one message, not the agent
        raise MapError("internal", f"{type(exc).__name__}: {str(exc)[:120]}") from None


def _map_doc(profile: MqttProfile, route: _Route, data: object, privacy: Privacy, now_ns: int,
             window: tuple[int, int] | None, options: Mapping[str, object] | None, exact: bool) -> Mapped:
    """Map the decoded document; EXACT: json made it, else orjson (see _Inexact)."""
    if not isinstance(data, dict):
        if not exact:
            raise _Inexact  # the type named below must be json's
        raise MapError("wrong_type", f"expected a JSON object, got {type(data).__name__}")
    fn = route.fn or route.generate()
    if exact:
        fn = fn.exact  # type: ignore[attr-defined]
    return fn(data, route.caps, options, privacy, now_ns, window)


def device_id_of(profile: MqttProfile, topic: str, payload: bytes, max_bytes: int = 256 * 1024) -> str | None:
    """The device id of a message, cheaply, for discovering unregistered devices. Never raises."""
    try:
        route = _route(profile, topic)
        if route is None:
            return None
        cm, caps = route.candidates[0]
        ref = cm.spec.device_id or profile.device_id
        if ref.startswith("@topic."):
            return _device_id(ref, caps.get(ref[7:], _MISSING))
        data, exact = _decode(profile, payload, max_bytes)
        raw = cm.device_raw(data, caps)
        dev = _DEVICE_IDS.get(raw) if type(raw) is str else None
        if dev is not None:
            return dev
        if not exact:
            try:
                return _checked_device_id(ref, raw)
            except _Inexact:
                data, _ = _decode(profile, payload, max_bytes, exact=True)
        return _device_id(ref, cm.device_raw(data, caps))
    except MapError:
        return None
    except Exception:
        return None
