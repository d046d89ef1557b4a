"""Checks a batch and its points before anything reaches InfluxDB (pure functions).

A batch is refused whole when its topic, gateway and site disagree or the gateway is unknown;
single points are refused (and counted by reason) when they break a rule, and the good points
around them are still written.

`LineMaker` is the hot path: it checks and formats in one pass, straight from the decoded JSON
(no Point per item), and remembers the series heads (measurement + tags) and field keys it has
already checked, because a batch holds the same few devices over and over. A point whose series
and field set (keys and value types) passed before is formatted from a cached template of its
whole line; only its values are checked (time window, integer range, finiteness). The rules
themselves live once, in the full checks here and in common/lineprotocol.py: the template is
built from them, and any point that fails the fast path goes through them for its reason.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from common.lineprotocol import escape_key, escape_string_field, series_head, tag_problem
from common.points import MEASUREMENTS, Point
from common.wire import Batch
from collector.config import Limits

_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1


@dataclass
class Verdict:
    good: list[Point] = field(default_factory=list)
    refused: collections.Counter = field(default_factory=collections.Counter)
    lines: list[str] = field(default_factory=list)
    newest_ns: int = 0

    @property
    def refused_total(self) -> int:
        return sum(self.refused.values())

    @property
    def written(self) -> int:
        return len(self.lines)


def authorise(batch: Batch, topic_site: str, topic_gateway: str, registered_site: str | None) -> str | None:
    """None if the batch may be written, else the reason it may not."""
    if registered_site is None:
        return (f"gateway {topic_gateway!r} is not authorised on this collector "
                f"(central IT: poplar-collector gateways add {topic_gateway} --site SITE)")
    if batch.gateway != topic_gateway or batch.site != topic_site:
        return (f"batch says site {batch.site!r} gateway {batch.gateway!r} but came on the topic of "
                f"site {topic_site!r} gateway {topic_gateway!r}")
    if registered_site != topic_site:
        return f"gateway {topic_gateway!r} belongs to site {registered_site!r}, not {topic_site!r}"
    return None


def _check_tags(measurement: str, tags: dict, site: str, gateway: str, limits: Limits) -> str | None:
    if measurement not in MEASUREMENTS:
        return "unknown_measurement"
    if tags.get("site") != site or tags.get("gateway") != gateway:
        return "tag_mismatch"
    if not tags.get("device"):
        return "missing_device_tag"
    if len(tags) > limits.max_tags:
        return "too_many_tags"
    for k, v in tags.items():
        if not isinstance(k, str) or not isinstance(v, str):
            return "bad_tag"
        if len(k) > limits.max_string_len or len(v) > limits.max_string_len:
            return "string_too_long"
        problem = tag_problem(k) or (tag_problem(v) if v else None)
        if problem:
            return "control_character_in_tag" if problem == "control_character" else (
                "bad_tag" if problem == "empty" else problem)
    return None


def _check_field_key(k: object, limits: Limits) -> str | None:
    if not isinstance(k, str) or not k:
        return "bad_field"
    if len(k) > limits.max_string_len:
        return "string_too_long"
    problem = tag_problem(k)
    if problem:
        return "control_character_in_field_key" if problem == "control_character" else "bad_field"
    return None


class LineMaker:
    """Checks points and turns the good ones into line protocol, for one collector process."""

    def __init__(self, limits: Limits, max_cache: int = 100_000, escape_newlines: bool = False) -> None:
        self.limits = limits
        self.escape_newlines = escape_newlines
        self._heads: dict[tuple, str] = {}     # (site, gateway, measurement, tag keys, tag values) -> head or "!reason"
        self._keys: dict[str, str] = {}        # field key -> escaped key, or "!reason"
        # (site, gateway, measurement, tag keys, tag values, None, field keys, value types)
        #   -> (%-format template of the whole line, positions of integer fields)
        self._fast: dict[tuple, tuple] = {}
        self._max_cache = max_cache

    def _head(self, site: str, gateway: str, measurement: str, tags: dict) -> str:
        # Flat key: n tag keys then their n values (no item tuples to build; the length fixes n).
        key = (site, gateway, measurement, *tags, *tags.values())
        try:
            return self._heads[key]
        except KeyError:
            pass
        except TypeError:  # unhashable tag value (a list, a dict): not a string
            return "!bad_tag"
        reason = _check_tags(measurement, tags, site, gateway, self.limits)
        head = "!" + reason if reason else series_head(measurement, tags) + " "
        if len(self._heads) >= self._max_cache:
            self._heads.clear()  # bounded memory; the cache refills from the next batches
        self._heads[key] = head
        return head

    def _field_key(self, k: str) -> str:
        try:
            return self._keys[k]
        except (KeyError, TypeError):
            pass
        reason = _check_field_key(k, self.limits)
        if not isinstance(k, str):
            return "!" + (reason or "bad_field")
        esc = "!" + reason if reason else escape_key(k) + "="
        if len(self._keys) >= self._max_cache:
            self._keys.clear()
        self._keys[k] = esc
        return esc

    def _template(self, fields: dict) -> tuple | None:
        """The fast form of a field set seen before: a %-format template for its keys and value
        types, and the positions of its integers (range-checked per point). None when the set
        needs the full per-field check (bools, strings, a bad key, too many fields): the fast path
        only ever formats what the full checks in `check_items` would format, and the same way."""
        if not fields or len(fields) > self.limits.max_fields:
            return None
        parts, ints = [], []
        for i, (k, val) in enumerate(fields.items()):
            ek = self._field_key(k)
            if ek[0] == "!":
                return None
            ek = ek.replace("%", "%%")  # a literal percent sign in a %-format template
            t = type(val)
            if t is float:
                parts.append(ek + "%r")  # %r is repr(): the same text as the full checks
            elif t is int:
                parts.append(ek + "%di")  # %d of an int is str(): the same text as the full checks
                ints.append(i)
            else:
                return None
        return ",".join(parts) + " %d", tuple(ints)

    def check(self, batch: Batch, now_ns: int) -> Verdict:
        """Every point of a batch of Points (tests, tools): see `check_items`."""
        v = self.check_items(batch.site, batch.gateway, [p.to_wire() for p in batch.points], now_ns)
        if batch.bad_items:
            v.refused["malformed_point"] += batch.bad_items
        return v

    def check_items(self, site: str, gateway: str, items: list, now_ns: int) -> Verdict:
        """Every wire item of a batch (as decoded JSON, `wire.RawBatch.items`): good ones become
        lines, bad ones are counted by reason. Items that are not well-formed points are judged by
        `Point.from_wire` (the one definition of a point's shape) and counted `malformed_point`.

        The loop is written out flat (locals, no per-point method calls on the common path): it
        runs once per point. Points whose series head and field set (keys and value types) were
        seen and passed before take the fast path: one dict look-up, the time window, a
        finiteness test for all floats at once and one %-format of the whole line; anything
        else goes through the full checks (which decide the reason of a refusal)."""
        v = Verdict()
        lo = now_ns - int(self.limits.max_past_s * 1e9)
        hi = now_ns + int(self.limits.max_future_s * 1e9)
        lines, refused = v.lines, v.refused
        append = lines.append
        newest = 0
        heads, keys, fast_cache = self._heads, self._keys, self._fast
        max_fields, max_len, esc_nl = self.limits.max_fields, self.limits.max_string_len, self.escape_newlines
        field_key, head_of, template_of = self._field_key, self._head, self._template
        for item in items:
            # Fast path: one look-up by everything that decides the checks except the values. The
            # cache only holds keys of points that passed every check, so a hit means the item is
            # a well-formed point (a str measurement equal to a stored one, dicts for tags and
            # fields: a list or string has no .values()) with a good head and field set.
            try:
                m, tags, fields, ts = item
                vals = fields.values()
                fkey = (site, gateway, m, *tags, *tags.values(), None, *fields, *map(type, vals))
                fmt, ints = fast_cache[fkey]
            except KeyError:
                pass  # fkey is remembered below if the point passes the checks
            except (TypeError, ValueError, AttributeError):  # not a well-formed point
                fkey = None
            else:
                if type(ts) is int and lo <= ts <= hi:
                    if ints:
                        lst = list(vals)
                        for i in ints:
                            if not _INT_MIN <= lst[i] <= _INT_MAX:
                                break
                        else:
                            ints = None
                    if not ints:
                        total = sum(vals)  # NaN or an infinity anywhere makes the sum non-finite
                        if total - total == 0.0:
                            if ts > newest:
                                newest = ts
                            append(fmt % (*vals, ts))  # %-format: faster than str.format here
                            continue
                # out of the window, an integer out of range, a non-finite value (or finite
                # values whose sum overflows): the full checks below decide and give the reason
            # Full checks, in their order: shape, head, time window, fields.
            if type(item) is list and len(item) == 4:
                m, tags, fields, ts = item
                well_formed = type(m) is str and type(tags) is dict and type(fields) is dict and type(ts) is int
            else:
                well_formed = False
            if not well_formed:  # rare: let the point model decide (it may still accept a look-alike)
                try:
                    p = Point.from_wire(item)
                except (TypeError, ValueError):
                    refused["malformed_point"] += 1
                    continue
                m, tags, fields, ts = p.measurement, p.tags, p.fields, p.time_ns
            try:
                head = heads[(site, gateway, m, *tags, *tags.values())]
            except (KeyError, TypeError):
                head = head_of(site, gateway, m, tags)
            if head[0] == "!":
                refused[head[1:]] += 1
                continue
            if ts < lo:
                refused["too_old"] += 1
                continue
            if ts > hi:
                refused["in_the_future"] += 1
                continue
            if fkey is not None and well_formed and fkey not in fast_cache:
                tpl = template_of(fields)
                if tpl is not None:  # the next point of this series and field set takes the fast path
                    if len(fast_cache) >= self._max_cache:
                        fast_cache.clear()
                    fast_cache[fkey] = (head.replace("%", "%%") + tpl[0], tpl[1])
            if not fields or len(fields) > max_fields:
                refused["no_fields" if not fields else "too_many_fields"] += 1
                continue
            out = []
            bad = None
            for k, val in fields.items():
                ek = keys.get(k) if type(k) is str else None
                if ek is None:
                    ek = field_key(k)
                if ek[0] == "!":
                    bad = ek[1:]
                    break
                t = type(val)
                if t is float:
                    if val - val != 0.0:  # NaN or an infinity, faster than math.isfinite
                        bad = "nan_or_infinity"
                        break
                    out.append(ek + repr(val))
                elif t is int:
                    if not _INT_MIN <= val <= _INT_MAX:
                        bad = "integer_out_of_range"
                        break
                    out.append(f"{ek}{val}i")
                elif t is bool:
                    out.append(ek + ("true" if val else "false"))
                elif t is str:
                    if len(val) > max_len:
                        bad = "string_too_long"
                        break
                    if esc_nl and ("\n" in val or "\r" in val):
                        val = val.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
                        out.append(ek + '"' + val.replace('"', '\\"') + '"')
                    else:
                        out.append(ek + escape_string_field(val))
                else:
                    bad = "bad_field"
                    break
            if bad is not None:
                refused[bad] += 1
                continue
            if ts > newest:
                newest = ts
            append(f"{head}{','.join(out)} {ts}")
        v.newest_ns = newest
        return v


def check_point(p: Point, site: str, gateway: str, limits: Limits, now_ns: int) -> str | None:
    """None if the point may be written, else a short reason (used as a counter name)."""
    b = Batch(site, gateway, "", [p])
    v = LineMaker(limits).check(b, now_ns)
    return next(iter(v.refused), None)


