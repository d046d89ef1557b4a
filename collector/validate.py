"""Checks a batch and its points before anything reaches InfluxDB (pure functions).

A batch is refused whole when its topic, gateway and site disagree or the gateway is unknown;
single points are refused (and counted by reason) when they break a rule, and the good points
around them are still written.

`LineMaker` is the hot path: it checks and formats in one pass, and remembers the series heads
(measurement + tags) and field keys it has already checked, because a batch holds the same few
devices over and over.
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
        self._heads: dict[tuple, str] = {}     # (measurement, site, gateway, tag items) -> head or "!reason"
        self._keys: dict[str, str] = {}        # field key -> escaped key, or "!reason"
        self._max_cache = max_cache

    def _head(self, site: str, gateway: str, measurement: str, tags: dict) -> str:
        key = (measurement, site, gateway, *tags.items())
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

    def _fields(self, fields: dict) -> str:
        """`k=v,...` or "!reason"."""
        if not fields:
            return "!no_fields"
        if len(fields) > self.limits.max_fields:
            return "!too_many_fields"
        max_len = self.limits.max_string_len
        out = []
        for k, v in fields.items():
            ek = self._field_key(k)
            if ek[0] == "!":
                return ek
            t = type(v)
            if t is float:
                if v - v != 0.0:  # NaN or an infinity, faster than math.isfinite
                    return "!nan_or_infinity"
                out.append(ek + repr(v))
            elif t is int:
                if not _INT_MIN <= v <= _INT_MAX:
                    return "!integer_out_of_range"
                out.append(f"{ek}{v}i")
            elif t is bool:
                out.append(ek + ("true" if v else "false"))
            elif t is str:
                if len(v) > max_len:
                    return "!string_too_long"
                if self.escape_newlines and ("\n" in v or "\r" in v):
                    v = v.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
                    out.append(ek + '"' + v.replace('"', '\\"') + '"')
                else:
                    out.append(ek + escape_string_field(v))
            else:
                return "!bad_field"
        return ",".join(out)

    def check(self, batch: Batch, now_ns: int) -> Verdict:
        """Every point of a batch: good ones become lines, bad ones are counted by reason.

        The loop is written out flat (locals, no per-field method calls): it runs once per point."""
        v = Verdict()
        if batch.bad_items:
            v.refused["malformed_point"] += batch.bad_items
        lo = now_ns - int(self.limits.max_past_s * 1e9)
        hi = now_ns + int(self.limits.max_future_s * 1e9)
        site, gateway = batch.site, batch.gateway
        lines, refused = v.lines, v.refused
        append = lines.append
        newest = 0
        heads, keys = self._heads, self._keys
        max_fields, max_len, esc_nl = self.limits.max_fields, self.limits.max_string_len, self.escape_newlines
        field_key, head_of = self._field_key, self._head
        for p in batch.points:
            try:
                head = heads[(p.measurement, site, gateway, *p.tags.items())]
            except (KeyError, TypeError):
                head = head_of(site, gateway, p.measurement, p.tags)
            if head[0] == "!":
                refused[head[1:]] += 1
                continue
            ts = p.time_ns
            if ts < lo:
                refused["too_old"] += 1
                continue
            if ts > hi:
                refused["in_the_future"] += 1
                continue
            fields = p.fields
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


def check_points(batch: Batch, limits: Limits, now_ns: int) -> Verdict:
    v = LineMaker(limits).check(batch, now_ns)
    return v

