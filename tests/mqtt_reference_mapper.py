"""Frozen reference: edge/mqtt/mapper.py as of commit a6fa706, before the code generator.

Do not edit. tests/test_mqtt_mapper_equivalence.py maps the same messages through this module
and through edge/mqtt/mapper.py and requires identical results (points, warnings, MapError
reasons), and bench/mqtt_map.py --reference measures it. The code below is the mapper as it was:
a profile compiled once into getters, enum tables and condition tests, then interpreted field by
field for every message.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo

import orjson

from common.points import FieldValue, Point, keep_field, priority_of
from edge.mqtt.profile import Cond, FieldMap, MessageSpec, MqttProfile, PointSpec, TimeSource, canon
from edge.privacy import Privacy

MIN_TIME_NS = 946_684_800 * 10**9  # 2000-01-01T00:00:00Z: earlier means an unset device clock
MAX_AHEAD_NS = 86_400 * 10**9  # a day ahead of the gateway's clock is a wrong device clock
MAX_DEVICE_ID = 64
MAX_SNAPSHOT = 2 * 1024 * 1024
_MISSING = object()
_UNSET = object()  # a slot not read yet in this message
_PATH = re.compile(r"[^.\[\]]+|\[\d+\]")
_DEVICE_ID = re.compile(r"^[\w.:\-]{1,64}$")
_NUMERIC_TIME = re.compile(r"\s*[+-]?\d+(\.\d+)?\s*")
_FRACTION = re.compile(r"[.,](\d{7,9})(?=(Z|[+-]\d\d:?\d\d)?$)")
#: orjson turns integers beyond 64 bits into floats (json keeps them exact); such a float is at
#: least 2**63 in magnitude, so a document holding one is parsed again by json.
_BIG = 9.2e18
_TOPIC_CACHE = 20_000
_TIME_CACHE = 4096
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_I64_MIN, _U64_MAX = -(2**63), 2**64 - 1


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


def _topic_matches(profile: MqttProfile, topic: str) -> list[tuple["_CMessage", dict[str, str]]]:
    """The messages of PROFILE whose topics match, each with its captured segments. Cached per
    topic (a compound has a few hundred device topics); the caps dicts are shared: read only."""
    cp = _compiled(profile)
    hit = cp.topics.get(topic)
    if hit is None:
        found = _scan_topic(profile, topic)
        shared: list[dict[str, str]] = []  # equal captures, one dict: one set of slots
        hit = []
        for m, caps in found:
            same = next((c for c in shared if c == caps), None)
            if same is None:
                shared.append(caps)
                same = caps
            hit.append((cp.messages[m.name], same))
        if len(cp.topics) >= _TOPIC_CACHE:
            cp.topics.clear()
        cp.topics[topic] = hit
    return hit


def match_topic(profile: MqttProfile, topic: str) -> dict | None:
    """Which message of PROFILE the topic belongs to: {"message", "kind", "captures"}, or None.

    Several messages may share a topic (recognised by payload); this returns the first.
    """
    found = _topic_matches(profile, topic)
    if not found:
        return None
    m, caps = found[0]
    return {"message": m.spec.name, "kind": m.spec.kind, "captures": dict(caps)}


# --- payload access ---------------------------------------------------------------------------

@lru_cache(maxsize=4096)
def _path(path: str) -> tuple[str | int, ...]:
    """'a.b[0].c' -> ('a', 'b', 0, 'c'), parsed once per profile path."""
    return tuple(int(p[1:-1]) if p.startswith("[") else p for p in _PATH.findall(path))


Getter = Callable[[object], object]
RefFn = Callable[[object, dict, object], object]  # (payload, captures, item) -> value


def _path_getter(parts: tuple[str | int, ...]) -> Getter:
    """A function reading PARTS from a decoded payload, _MISSING where the path does not exist."""
    if len(parts) == 1 and type(parts[0]) is str:
        k = parts[0]

        def get1(cur: object) -> object:
            return cur.get(k, _MISSING) if isinstance(cur, dict) else _MISSING
        return get1
    if len(parts) == 2 and type(parts[0]) is str and type(parts[1]) is str:
        k1, k2 = parts

        def get2(cur: object) -> object:
            if isinstance(cur, dict):
                cur = cur.get(k1, _MISSING)
                if isinstance(cur, dict):
                    return cur.get(k2, _MISSING)
            return _MISSING
        return get2

    def getn(cur: object) -> object:
        for part in parts:
            if type(part) is int:
                if not isinstance(cur, list) or part >= len(cur):  # type: ignore[operator]
                    return _MISSING
                cur = cur[part]
            elif isinstance(cur, dict):
                cur = cur.get(part, _MISSING)
                if cur is _MISSING:
                    return _MISSING
            else:
                return _MISSING
        return cur
    return getn


def _payload_fn(parts: tuple[str | int, ...]) -> RefFn:
    """As _path_getter, but called as a ref function (payload, captures, item): one call less
    for the common paths of one or two keys."""
    if len(parts) == 1 and type(parts[0]) is str:
        k = parts[0]

        def ref1(d: object, c: dict, i: object) -> object:
            return d.get(k, _MISSING) if isinstance(d, dict) else _MISSING
        return ref1
    if len(parts) == 2 and type(parts[0]) is str and type(parts[1]) is str:
        k1, k2 = parts

        def ref2(d: object, c: dict, i: object) -> object:
            if isinstance(d, dict):
                d = d.get(k1, _MISSING)
                if isinstance(d, dict):
                    return d.get(k2, _MISSING)
            return _MISSING
        return ref2
    g = _path_getter(parts)
    return lambda d, c, i: g(d)


_REF_FNS: dict[str, RefFn] = {}


def _ref_fn(ref: str) -> RefFn:
    """The compiled reader of one ref (payload path, @topic.NAME, @item, @item.path)."""
    fn = _REF_FNS.get(ref)
    if fn is not None:
        return fn
    if ref[0] != "@":
        fn = _payload_fn(_path(ref))
    elif ref.startswith("@topic."):
        name = ref[7:]
        fn = lambda d, c, i: c.get(name, _MISSING)  # noqa: E731
    elif ref == "@item":
        fn = lambda d, c, i: i  # noqa: E731
    elif ref.startswith("@item."):
        gi = _path_getter(_path(ref[6:]))
        fn = lambda d, c, i: _MISSING if i is _MISSING else gi(i)  # noqa: E731
    else:
        fn = _payload_fn(_path(ref))
    if len(_REF_FNS) >= 20_000:
        _REF_FNS.clear()
    _REF_FNS[ref] = fn
    return fn


def _key_fn(refs: list[str]) -> RefFn:
    """One ref's value, or several joined by "/" (missing if any part is missing, null, or an
    object or list)."""
    if len(refs) == 1:
        return _ref_fn(refs[0])
    fns = tuple(_ref_fn(r) for r in refs)

    def key(d: object, c: dict, i: object) -> object:
        vals = [f(d, c, i) for f in fns]
        for v in vals:
            if v is _MISSING or v is None:
                return _MISSING
        for v in vals:
            if isinstance(v, (dict, list)):
                return _MISSING
        return "/".join([canon(v) for v in vals])
    return key


_CANON_SETS: dict[int, tuple[list, frozenset[str]]] = {}


def _canon_set(values: list) -> frozenset[str]:
    """Canonical forms of a profile's value list, computed once per list. Keyed by identity
    (1 and True are equal as dict keys but not as codes); the entry keeps the list alive, so an
    id is never reused for another list."""
    hit = _CANON_SETS.get(id(values))
    if hit is None or hit[0] is not values:
        hit = _CANON_SETS[id(values)] = (values, frozenset(canon(x) for x in values))
    return hit[1]


class _Ctx:
    """One message (or one exploded item) being mapped: the payload, the topic captures, the
    current item, and the values read so far (one slot per distinct ref list of the message)."""

    __slots__ = ("payload", "caps", "item", "vals", "fns")

    def __init__(self, payload: object, caps: dict[str, str], item: object = _MISSING,
                 fns: tuple[RefFn, ...] = ()) -> None:
        self.payload = payload
        self.caps = caps
        self.item = item
        self.fns = fns
        self.vals = [_UNSET] * len(fns)

    def ref(self, ref: str) -> object:
        return _ref_fn(ref)(self.payload, self.caps, self.item)

    def key(self, refs: list[str]) -> object:
        return _key_fn(refs)(self.payload, self.caps, self.item)


# --- the compiled profile -----------------------------------------------------------------------

class _Slots:
    """Assigns one slot per distinct ref list of a message."""

    def __init__(self) -> None:
        self.index: dict[tuple[str, ...], int] = {}
        self.fns: list[RefFn] = []

    def of(self, refs: list[str]) -> int:
        key = tuple(refs)
        s = self.index.get(key)
        if s is None:
            s = self.index[key] = len(self.fns)
            self.fns.append(_key_fn(refs))
        return s


# condition kinds
_C_EXISTS, _C_EQ, _C_IN, _C_NOT_IN, _C_PREFIX = range(5)


class _CCond:
    __slots__ = ("slot", "kind", "arg", "absent")

    def __init__(self, cond: Cond, slots: _Slots) -> None:
        self.slot = slots.of(cond.refs)
        self.absent = cond.not_in is not None  # the result when the value is absent or not a scalar
        if cond.exists is not None:
            self.kind, self.arg = _C_EXISTS, cond.exists
        elif cond.equals is not None:
            self.kind, self.arg = _C_EQ, canon(cond.equals)
        elif cond.in_ is not None:
            self.kind, self.arg = _C_IN, _canon_set(cond.in_)
        elif cond.not_in is not None:
            self.kind, self.arg = _C_NOT_IN, _canon_set(cond.not_in)
        else:
            self.kind, self.arg = _C_PREFIX, cond.prefix or ""


def _holds(cc: _CCond, ctx: _Ctx) -> bool:
    v = ctx.vals[cc.slot]
    if v is _UNSET:
        v = ctx.vals[cc.slot] = ctx.fns[cc.slot](ctx.payload, ctx.caps, ctx.item)
    kind = cc.kind
    if kind == _C_EXISTS:
        return (v is not _MISSING and v is not None) == cc.arg
    if v is _MISSING or v is None or isinstance(v, (dict, list)):
        return cc.absent
    c = canon(v)
    if kind == _C_EQ:
        return c == cc.arg
    if kind == _C_IN:
        return c in cc.arg
    if kind == _C_NOT_IN:
        return c not in cc.arg
    return c.startswith(cc.arg)


def _all_hold(conds: list[_CCond], ctx: _Ctx) -> bool:
    for c in conds:
        if not _holds(c, ctx):
            return False
    return True


# fast coercions of a raw payload value, when the field has no scale or offset
_F_NONE, _F_INT, _F_FLOAT, _F_STR, _F_AUTO = range(5)


class _CField:
    __slots__ = ("fm", "name", "const", "slot", "ignore", "enum", "default", "required", "fast",
                 "max_len", "if_option", "unless_option")

    def __init__(self, fm: FieldMap, slots: _Slots) -> None:
        self.fm = fm
        self.name = fm.name
        self.const = fm.value
        self.slot = slots.of(fm.refs) if fm.value is None else -1
        self.ignore = _canon_set(fm.ignore) if fm.ignore else None
        self.default = fm.default
        self.required = fm.required
        self.max_len = fm.max_len
        self.if_option, self.unless_option = fm.if_option, fm.unless_option
        # Enum values are constants: coerce them now. (1, value) or (0, the error to report).
        self.enum: dict[str, tuple[int, object]] | None = None
        if fm.enum is not None:
            self.enum = {}
            for k, v in fm.enum.items():
                try:
                    self.enum[k] = (1, _coerce(fm, v))
                except (TypeError, ValueError, OverflowError) as exc:
                    self.enum[k] = (0, exc)
        plain = fm.scale is None and not fm.offset
        self.fast = _F_NONE if not plain else {
            "int": _F_INT, "float": _F_FLOAT, "str": _F_STR, None: _F_AUTO}.get(fm.type, _F_NONE)

    def enabled(self, options: Mapping[str, object]) -> bool:
        if self.if_option is not None and not options.get(self.if_option):
            return False
        if self.unless_option is not None and options.get(self.unless_option):
            return False
        return True


class _CPoint:
    def __init__(self, spec: PointSpec, slots: _Slots) -> None:
        self.spec = spec
        self.measurement = spec.measurement
        self.priority = priority_of(spec.measurement)
        self.when = [_CCond(c, slots) for c in spec.when]
        self.tags = [_CField(t, slots) for t in spec.tags]
        self.fields = [_CField(f, slots) for f in spec.fields]
        # Which fields and tags a device's options enable: options differ per device only by
        # these flags, so the enabled lists are made once per combination.
        self.option_names = sorted({o for f in self.tags + self.fields
                                    for o in (f.if_option, f.unless_option) if o is not None})
        self._enabled: dict[tuple[bool, ...], tuple[list[_CField], list[_CField]]] = {}

    def enabled(self, options: Mapping[str, object]) -> tuple[list[_CField], list[_CField]]:
        if not self.option_names:
            return self.tags, self.fields
        flags = tuple(bool(options.get(o)) for o in self.option_names)
        hit = self._enabled.get(flags)
        if hit is None:
            hit = self._enabled[flags] = ([t for t in self.tags if t.enabled(options)],
                                          [f for f in self.fields if f.enabled(options)])
        return hit


class _CMessage:
    def __init__(self, m: MessageSpec, slots: _Slots) -> None:
        self.spec = m
        self.match = [_CCond(c, slots) for c in m.match]
        self.points = [_CPoint(p, slots) for p in m.points]
        self.time_cache: list[dict[str, int]] = [{} for _ in m.time]


class _CProfile:
    def __init__(self, profile: MqttProfile) -> None:
        self.profile = profile
        # One slot table for the whole profile: a slot's value depends only on the payload, the
        # topic captures and the item, so the candidate messages of a topic (which share their
        # captures, see _topic_matches) read eventType and the like once, not once each.
        slots = _Slots()
        self.signature = [_CCond(c, slots) for c in profile.signature]
        self.messages = {m.name: _CMessage(m, slots) for m in profile.messages}
        self.fns = tuple(slots.fns)
        self.topics: dict[str, list[tuple[_CMessage, dict[str, str]]]] = {}


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


# --- decoding -----------------------------------------------------------------------------------

def _decode(profile: MqttProfile, payload: bytes, max_bytes: int) -> object:
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
    # orjson reads valid UTF-8 JSON exactly as json does, ~5x faster. Whatever it refuses (a BOM,
    # bad UTF-8, NaN, lone surrogates, 1e400, deep nesting) goes to json, which decides and words
    # the error as it always did.
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        pass
    else:
        if not _has_big_float(doc):
            return doc
    try:
        text = payload.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MapError("not_utf8", f"invalid UTF-8 at byte {exc.start}") from None
    try:
        return json.loads(text)
    except RecursionError:
        raise MapError("malformed_json", "nested too deeply") from None
    except ValueError as exc:
        raise MapError("malformed_json", str(exc)[:120]) from None


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


def _value(cf: _CField, ctx: _Ctx, warnings: list[str]) -> FieldValue | None:
    s = cf.slot
    if s < 0:
        return cf.const
    raw = ctx.vals[s]
    if raw is _UNSET:
        raw = ctx.vals[s] = ctx.fns[s](ctx.payload, ctx.caps, ctx.item)
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
        fast, t = cf.fast, type(raw)
        if fast == _F_INT or fast == _F_AUTO and t is int:
            if t is int and _I64_MIN <= raw <= _U64_MAX:  # type: ignore[operator]
                return raw  # type: ignore[return-value]
        elif fast == _F_STR or fast == _F_AUTO and t is str:
            if t is str:
                return raw[: cf.max_len]  # type: ignore[index]
        elif fast == _F_FLOAT or fast == _F_AUTO and t is float:
            if t is float and math.isfinite(raw):  # type: ignore[arg-type]
                return raw  # type: ignore[return-value]
        try:
            return _coerce(cf.fm, raw)
        except (TypeError, ValueError, OverflowError) as e:
            exc = e
    if cf.required:
        raise MapError("wrong_type", f"{cf.fm.ref} for {cf.name}: {exc}") from None
    warnings.append(f"{cf.name}: skipped, {exc}")
    return None


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


def _timestamp(profile: MqttProfile, cm: _CMessage, ctx: _Ctx, now_ns: int,
               window: tuple[int, int] | None, fields: dict[str, FieldValue],
               warnings: list[str]) -> int:
    m = cm.spec
    if not m.time:
        return now_ns  # the dialect carries no time: the receive time is the best there is
    lo, hi = window if window is not None else (MIN_TIME_NS, now_ns + MAX_AHEAD_NS)
    problem = "no time in the payload"
    for src, cache in zip(m.time, cm.time_cache):
        raw = ctx.ref(src.ref)
        if raw is _MISSING or raw is None or raw == "":
            continue
        # Gates report whole seconds: a busy stream repeats each time string many times.
        ts = cache.get(raw) if type(raw) is str else None  # type: ignore[arg-type]
        if ts is None:
            try:
                ts = _parse_time(src, raw, profile.zone)
            except (ValueError, TypeError, OverflowError, KeyError) as exc:
                problem = f"{src.ref}: cannot read {str(raw)[:40]!r} as a time ({str(exc)[:60]})"
                break
            if type(raw) is str:
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


# --- mapping ------------------------------------------------------------------------------------

def _device_id(profile: MqttProfile, m: MessageSpec, ctx: _Ctx) -> str:
    ref = m.device_id or profile.device_id
    raw = ctx.ref(ref)
    if raw is _MISSING or raw is None or raw == "":
        raise MapError("missing_field", f"no device id at {ref}")
    if isinstance(raw, (dict, list, bool, float)):
        raise MapError("wrong_type", f"device id at {ref} is not a string")
    dev = str(raw).strip()
    if not _DEVICE_ID.match(dev):
        raise MapError("wrong_type", f"device id at {ref} is not a short plain identifier")
    return dev


def _snapshot(m: MessageSpec, ctx: _Ctx, warnings: list[str]) -> bytes | None:
    if m.privacy.snapshot is None:
        return None
    raw = ctx.ref(m.privacy.snapshot)
    if not isinstance(raw, str) or not raw:
        return None
    if raw.startswith("data:"):
        raw = raw.partition(",")[2]
    if len(raw) > MAX_SNAPSHOT * 4 // 3 + 4:
        warnings.append("snapshot too large, ignored")
        return None
    try:
        data = base64.b64decode(raw, validate=False)
    except (binascii.Error, ValueError):
        warnings.append("snapshot is not base64, ignored")
        return None
    if not data.startswith(b"\xff\xd8"):
        warnings.append("snapshot is not a JPEG, ignored")
        return None
    return data


def _person(m: MessageSpec, ctx: _Ctx, privacy: Privacy) -> str | None:
    for ref in m.privacy.person:
        raw = ctx.ref(ref)
        if raw is _MISSING or raw is None or isinstance(raw, (dict, list, bool)):
            continue
        text = canon(raw) if isinstance(raw, (int, float)) else str(raw).strip()
        if text in m.privacy.absent or not text:
            continue
        return privacy.pseudonym(text)
    return None


def _items(spec: PointSpec, ctx: _Ctx) -> list[object]:
    if spec.explode is None:
        return [_MISSING]
    raw = ctx.ref(spec.explode.ref)
    if isinstance(raw, str):
        items: list[object] = [s.strip() for s in raw.split(spec.explode.sep) if s.strip()]
    elif isinstance(raw, list):
        items = raw
    else:
        items = []
    return items[: spec.explode.max_items]


def _points(cp: _CPoint, ctx: _Ctx, options: Mapping[str, object], person: str | None,
            ts: int, extra: dict[str, FieldValue], warnings: list[str]) -> list[Point]:
    out = []
    spec = cp.spec
    tag_maps, field_maps = cp.enabled(options)
    for item in _items(spec, ctx):
        # Without explode the item is _MISSING, as in ctx: its slots can be shared.
        ictx = ctx if item is _MISSING else _Ctx(ctx.payload, ctx.caps, item, ctx.fns)
        if cp.when and not _all_hold(cp.when, ictx):
            continue
        tags: dict[str, str] = {}
        for tm in tag_maps:
            if tm.name not in tags:
                v = _value(tm, ictx, warnings)
                if isinstance(v, bool):
                    v = canon(v)
                if isinstance(v, str) and v:
                    tags[tm.name] = v
        fields: dict[str, FieldValue] = {}
        refused: list[str] = []
        for fm in field_maps:
            name = fm.name
            if name not in fields and name not in refused:
                v = _value(fm, ictx, warnings)
                if v is None:
                    continue
                t = type(v)
                if t is str or t is int or t is bool or t is float and math.isfinite(v):  # type: ignore[arg-type]
                    fields[name] = v
                else:
                    _store(fields, refused, name, v)
        if spec.person and person is not None:
            _store(fields, refused, "person", person)
        for name, v in extra.items():
            _store(fields, refused, name, v)
        warnings.extend(f"{n}: not a storable value" for n in refused)
        if not fields:
            # InfluxDB refuses a point without fields; say the event happened at least
            fields = {"count": 1}
        out.append(Point(cp.measurement, tags, fields, ts, cp.priority))
    return out


# Names never repeat when storing: the caller keeps the first mapping of a name, and profiles
# cannot name a field `person` or a reserved one (time_corrected, device_time).
_store = keep_field


def map_message(profile: MqttProfile, topic: str, payload: bytes, *, privacy: Privacy, now_ns: int,
                max_bytes: int = 256 * 1024, time_window: tuple[int, int] | None = None,
                options: Mapping[str, object] | None = None) -> Mapped:
    """Map one MQTT message through PROFILE. Raises MapError, nothing else.

    `options` are per-device overrides of the profile's `options` (e.g. door_is_floor for a
    Hikvision terminal used as an elevator controller). `time_window` (ns, ns) overrides the
    default sane window [2000-01-01, now + 1 day].
    """
    try:
        return _map(profile, topic, payload, privacy, now_ns, max_bytes, time_window, options)
    except MapError:
        raise
    except RecursionError:
        raise MapError("malformed_json", "nested too deeply") from None
    except Exception as exc:  # a bug must cost one message, not the agent
        raise MapError("internal", f"{type(exc).__name__}: {str(exc)[:120]}") from None


def _map(profile: MqttProfile, topic: str, payload: bytes, privacy: Privacy, now_ns: int,
         max_bytes: int, window: tuple[int, int] | None,
         options: Mapping[str, object] | None) -> Mapped:
    candidates = _topic_matches(profile, topic)
    if not candidates:
        raise MapError("unknown_message", f"topic {topic[:100]!r} is not in profile {profile.id}")
    data = _decode(profile, payload, max_bytes)
    if not isinstance(data, dict):
        raise MapError("wrong_type", f"expected a JSON object, got {type(data).__name__}")
    cprof = _compiled(profile)
    ctx = _Ctx(data, candidates[0][1], _MISSING, cprof.fns)
    if not _all_hold(cprof.signature, ctx):
        raise MapError("wrong_dialect", f"payload does not look like {profile.id}")
    for cm, caps in candidates:
        if caps is not ctx.caps:
            ctx = _Ctx(data, caps, _MISSING, cprof.fns)  # other captures: other values
        if _all_hold(cm.match, ctx):
            break
    else:
        raise MapError("unknown_message", f"no message of {profile.id} recognises this payload")
    m = cm.spec
    opts = {**profile.options, **options} if options else profile.options
    warnings: list[str] = []
    device_id = _device_id(profile, m, ctx)
    extra: dict[str, FieldValue] = {}
    ts = _timestamp(profile, cm, ctx, now_ns, window, extra, warnings)
    person = _person(m, ctx, privacy)
    points: list[Point] = []
    for cp in cm.points:
        points.extend(_points(cp, ctx, opts, person, ts, extra, warnings))
    return Mapped(device_id, m.kind, points, _snapshot(m, ctx, warnings), warnings, m.name)


def device_id_of(profile: MqttProfile, topic: str, payload: bytes, max_bytes: int = 256 * 1024) -> str | None:
    """The device id of a message, cheaply, for discovering unregistered devices. Never raises."""
    try:
        candidates = _topic_matches(profile, topic)
        if not candidates:
            return None
        cm, caps = candidates[0]
        m = cm.spec
        ref = m.device_id or profile.device_id
        if ref.startswith("@topic."):
            return _device_id(profile, m, _Ctx(None, caps))
        data = _decode(profile, payload, max_bytes)
        return _device_id(profile, m, _Ctx(data, caps))
    except MapError:
        return None
    except Exception:
        return None
