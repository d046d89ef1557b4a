"""Pure MQTT mapping: (profile, topic, payload bytes) -> points. No I/O, no clock.

Every failure is a MapError with a short machine `reason` the caller counts and logs; nothing
else escapes (tested with hypothesis). Only what a profile maps becomes a field or tag: the
mapper is a whitelist, so unknown payload keys (names, pictures, vendor extras) are ignored.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo

from common.points import FieldValue, Point, clean_fields, priority_of
from edge.mqtt.profile import Cond, FieldMap, MessageSpec, MqttProfile, PointSpec, TimeSource, canon
from edge.privacy import Privacy

MIN_TIME_NS = 946_684_800 * 10**9  # 2000-01-01T00:00:00Z: earlier means an unset device clock
MAX_AHEAD_NS = 86_400 * 10**9  # a day ahead of the gateway's clock is a wrong device clock
MAX_DEVICE_ID = 64
MAX_SNAPSHOT = 2 * 1024 * 1024
_MISSING = object()
_PATH = re.compile(r"[^.\[\]]+|\[\d+\]")
_DEVICE_ID = re.compile(r"^[\w.:\-]{1,64}$")


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


def _topic_matches(profile: MqttProfile, topic: str) -> list[tuple[MessageSpec, dict[str, str]]]:
    out = []
    for m in profile.messages:
        for filt in m.topics:
            caps = _match_filter(filt, topic)
            if caps is not None:
                out.append((m, caps))
                break
    return out


def match_topic(profile: MqttProfile, topic: str) -> dict | None:
    """Which message of PROFILE the topic belongs to: {"message", "kind", "captures"}, or None.

    Several messages may share a topic (recognised by payload); this returns the first.
    """
    found = _topic_matches(profile, topic)
    if not found:
        return None
    m, caps = found[0]
    return {"message": m.name, "kind": m.kind, "captures": caps}


# --- payload access ---------------------------------------------------------------------------

@lru_cache(maxsize=4096)
def _path(path: str) -> tuple[str | int, ...]:
    """'a.b[0].c' -> ('a', 'b', 0, 'c'), parsed once per profile path."""
    return tuple(int(p[1:-1]) if p.startswith("[") else p for p in _PATH.findall(path))


def _get(data: object, path: str) -> object:
    cur = data
    for part in _path(path):
        if type(part) is int:
            if not isinstance(cur, list) or part >= len(cur):
                return _MISSING
            cur = cur[part]
        elif isinstance(cur, dict):
            cur = cur.get(part, _MISSING)
            if cur is _MISSING:
                return _MISSING
        else:
            return _MISSING
    return cur


def _lookup(ctx: "_Ctx", refs: list[str]) -> object:
    """ctx.key(refs), with the common case (one plain payload path) in one call: this runs for
    every field and condition of every message."""
    if len(refs) == 1:
        ref = refs[0]
        return _get(ctx.payload, ref) if ref[0] != "@" else ctx.ref(ref)
    return ctx.key(refs)


_CANON_SETS: dict[int, tuple[list, frozenset[str]]] = {}


def _canon_set(values: list) -> frozenset[str]:
    """Canonical forms of a profile's value list, computed once per list. Keyed by identity
    (1 and True are equal as dict keys but not as codes); the entry keeps the list alive, so an
    id is never reused for another list."""
    hit = _CANON_SETS.get(id(values))
    if hit is None or hit[0] is not values:
        hit = _CANON_SETS[id(values)] = (values, frozenset(canon(x) for x in values))
    return hit[1]


@dataclass
class _Ctx:
    payload: object
    caps: dict[str, str]
    item: object = _MISSING

    def ref(self, ref: str) -> object:
        if ref[0] != "@":
            return _get(self.payload, ref)
        if ref.startswith("@topic."):
            return self.caps.get(ref[7:], _MISSING)
        if ref == "@item":
            return self.item
        if ref.startswith("@item."):
            return _MISSING if self.item is _MISSING else _get(self.item, ref[6:])
        return _get(self.payload, ref)

    def key(self, refs: list[str]) -> object:
        """One ref's value, or several joined by "/" (missing if any part is)."""
        if len(refs) == 1:
            return self.ref(refs[0])
        vals = [self.ref(r) for r in refs]
        if any(v is _MISSING or v is None for v in vals):
            return _MISSING if len(vals) > 1 or vals[0] is _MISSING else None
        if len(vals) == 1:
            return vals[0]
        if any(isinstance(v, (dict, list)) for v in vals):
            return _MISSING
        return "/".join(canon(v) for v in vals)


def _holds(cond: Cond, ctx: _Ctx) -> bool:
    v = _lookup(ctx, cond.refs)
    present = v is not _MISSING and v is not None
    if cond.exists is not None:
        return present == cond.exists
    if not present or isinstance(v, (dict, list)):
        return cond.not_in is not None
    c = canon(v)
    if cond.equals is not None:
        return c == canon(cond.equals)
    if cond.in_ is not None:
        return c in _canon_set(cond.in_)
    if cond.not_in is not None:
        return c not in _canon_set(cond.not_in)
    return c.startswith(cond.prefix or "")


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


def _value(fm: FieldMap, ctx: _Ctx, warnings: list[str]) -> FieldValue | None:
    if fm.value is not None:
        return fm.value
    raw = _lookup(ctx, fm.refs)
    if fm.ignore and raw is not _MISSING and not isinstance(raw, (dict, list)) \
            and canon(raw) in _canon_set(fm.ignore):
        raw = None
    if raw is _MISSING or raw is None or raw == "":
        if fm.required:
            raise MapError("missing_field", f"{fm.ref} is required for {fm.name}")
        return fm.default
    if fm.enum is not None:
        if isinstance(raw, (dict, list)):
            if fm.required:
                raise MapError("wrong_type", f"{fm.ref} for {fm.name}: an object or list")
            warnings.append(f"{fm.name}: skipped, an object or list")
            return fm.default
        hit = fm.enum.get(canon(raw))
        if hit is None:
            if fm.required and fm.default is None:
                raise MapError("wrong_type", f"{fm.ref}: value not in the enum of {fm.name}")
            return fm.default
        raw = hit
    try:
        return _coerce(fm, raw)
    except (TypeError, ValueError, OverflowError) as exc:
        if fm.required:
            raise MapError("wrong_type", f"{fm.ref} for {fm.name}: {exc}") from None
        warnings.append(f"{fm.name}: skipped, {exc}")
        return None


def _enabled(fm: FieldMap, options: Mapping[str, object]) -> bool:
    if fm.if_option is not None and not options.get(fm.if_option):
        return False
    if fm.unless_option is not None and options.get(fm.unless_option):
        return False
    return True


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
    if isinstance(raw, str) and re.fullmatch(r"\s*[+-]?\d+(\.\d+)?\s*", raw) and fmt != "local" \
            and fmt != "iso8601":
        raw = float(raw)
    if isinstance(raw, (int, float)):
        if not math.isfinite(raw) or fmt in ("iso8601", "local"):
            raise ValueError("not a time")
        return _epoch_ns(raw, {"epoch_s": "s", "epoch_ms": "ms"}.get(fmt, "auto"))
    if not isinstance(raw, str) or fmt in ("epoch_s", "epoch_ms"):
        raise TypeError("not a time")
    text = raw.strip()
    frac_ns = 0
    m = re.search(r"[.,](\d{7,9})(?=(Z|[+-]\d\d:?\d\d)?$)", text)
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
    delta = dt - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 10**9 + delta.microseconds * 1000 + frac_ns


def _timestamp(profile: MqttProfile, m: MessageSpec, ctx: _Ctx, now_ns: int,
               window: tuple[int, int] | None, fields: dict[str, FieldValue],
               warnings: list[str]) -> int:
    if not m.time:
        return now_ns  # the dialect carries no time: the receive time is the best there is
    lo, hi = window if window is not None else (MIN_TIME_NS, now_ns + MAX_AHEAD_NS)
    problem = "no time in the payload"
    for src in m.time:
        raw = ctx.ref(src.ref)
        if raw is _MISSING or raw is None or raw == "":
            continue
        try:
            ts = _parse_time(src, raw, profile.zone)
        except (ValueError, TypeError, OverflowError, KeyError) as exc:
            problem = f"{src.ref}: cannot read {str(raw)[:40]!r} as a time ({str(exc)[:60]})"
            break
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


def _points(spec: PointSpec, ctx: _Ctx, options: Mapping[str, object], person: str | None,
            ts: int, extra: dict[str, FieldValue], warnings: list[str]) -> list[Point]:
    out = []
    for item in _items(spec, ctx):
        ictx = _Ctx(ctx.payload, ctx.caps, item)
        if not all(_holds(c, ictx) for c in spec.when):
            continue
        tags: dict[str, str] = {}
        for tm in spec.tags:
            if tm.name not in tags and _enabled(tm, options):
                v = _value(tm, ictx, warnings)
                if isinstance(v, bool):
                    v = canon(v)
                if isinstance(v, str) and v:
                    tags[tm.name] = v
        raw_fields: dict[str, object] = {}
        for fm in spec.fields:
            if fm.name not in raw_fields and _enabled(fm, options):
                v = _value(fm, ictx, warnings)
                if v is not None:
                    raw_fields[fm.name] = v
        if spec.person and person is not None:
            raw_fields["person"] = person
        raw_fields.update(extra)
        fields, refused = clean_fields(raw_fields)
        warnings.extend(f"{n}: not a storable value" for n in refused)
        if not fields:
            # InfluxDB refuses a point without fields; say the event happened at least
            fields = {"count": 1}
        out.append(Point(spec.measurement, tags, fields, ts, priority_of(spec.measurement)))
    return out


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
    if not all(_holds(c, _Ctx(data, candidates[0][1])) for c in profile.signature):
        raise MapError("wrong_dialect", f"payload does not look like {profile.id}")
    for m, caps in candidates:
        ctx = _Ctx(data, caps)
        if all(_holds(c, ctx) for c in m.match):
            break
    else:
        raise MapError("unknown_message", f"no message of {profile.id} recognises this payload")
    opts = {**profile.options, **(options or {})}
    warnings: list[str] = []
    device_id = _device_id(profile, m, ctx)
    extra: dict[str, FieldValue] = {}
    ts = _timestamp(profile, m, ctx, now_ns, window, extra, warnings)
    person = _person(m, ctx, privacy)
    points: list[Point] = []
    for spec in m.points:
        points.extend(_points(spec, ctx, opts, person, ts, extra, warnings))
    return Mapped(device_id, m.kind, points, _snapshot(m, ctx, warnings), warnings, m.name)


def device_id_of(profile: MqttProfile, topic: str, payload: bytes, max_bytes: int = 256 * 1024) -> str | None:
    """The device id of a message, cheaply, for discovering unregistered devices. Never raises."""
    candidates = _topic_matches(profile, topic)
    if not candidates:
        return None
    m, caps = candidates[0]
    ref = m.device_id or profile.device_id
    try:
        if ref.startswith("@topic."):
            return _device_id(profile, m, _Ctx(None, caps))
        data = _decode(profile, payload, max_bytes)
        return _device_id(profile, m, _Ctx(data, caps))
    except MapError:
        return None
    except Exception:
        return None
