"""Checks a batch and its points before anything reaches InfluxDB (pure functions).

A batch is refused whole when its topic, gateway and site disagree or the gateway is unknown;
single points are refused (and counted by reason) when they break a rule, and the good points
around them are still written.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field

from common.points import MEASUREMENTS, Point
from common.wire import Batch
from collector.config import Limits


@dataclass
class Verdict:
    good: list[Point]
    refused: collections.Counter = field(default_factory=collections.Counter)

    @property
    def refused_total(self) -> int:
        return sum(self.refused.values())


def authorise(batch: Batch, topic_site: str, topic_gateway: str, registered_site: str | None) -> str | None:
    """None if the batch may be written, else the reason it may not."""
    if registered_site is None:
        return f"gateway {topic_gateway!r} is not authorised (poplar-collector gateways add {topic_gateway} --site SITE)"
    if batch.gateway != topic_gateway or batch.site != topic_site:
        return (f"batch says site {batch.site!r} gateway {batch.gateway!r} but came on the topic of "
                f"site {topic_site!r} gateway {topic_gateway!r}")
    if registered_site != topic_site:
        return f"gateway {topic_gateway!r} belongs to site {registered_site!r}, not {topic_site!r}"
    return None


def check_point(p: Point, site: str, gateway: str, limits: Limits, now_ns: int) -> str | None:
    """None if the point may be written, else a short reason (used as a counter name)."""
    if p.measurement not in MEASUREMENTS:
        return "unknown_measurement"
    if p.tags.get("site") != site or p.tags.get("gateway") != gateway:
        return "tag_mismatch"
    if not p.tags.get("device"):
        return "missing_device_tag"
    if len(p.tags) > limits.max_tags:
        return "too_many_tags"
    if not p.fields:
        return "no_fields"
    if len(p.fields) > limits.max_fields:
        return "too_many_fields"
    for k, v in p.tags.items():
        if not isinstance(k, str) or not isinstance(v, str) or not k:
            return "bad_tag"
        if len(k) > limits.max_string_len or len(v) > limits.max_string_len:
            return "string_too_long"
        if any(ord(c) < 32 for c in k + v):
            return "control_character_in_tag"
    for k, v in p.fields.items():
        if not isinstance(k, str) or not k:
            return "bad_field"
        if isinstance(v, float):
            if not math.isfinite(v):
                return "nan_or_infinity"
        elif isinstance(v, str):
            if len(v) > limits.max_string_len:
                return "string_too_long"
        elif not isinstance(v, (bool, int)):
            return "bad_field"
        elif isinstance(v, int) and not isinstance(v, bool) and not -(2**63) <= v < 2**63:
            return "integer_out_of_range"
    if p.time_ns < now_ns - limits.max_past_s * 1e9:
        return "too_old"
    if p.time_ns > now_ns + limits.max_future_s * 1e9:
        return "in_the_future"
    return None


def check_points(batch: Batch, limits: Limits, now_ns: int) -> Verdict:
    v = Verdict([])
    if batch.bad_items:
        v.refused["malformed_point"] += batch.bad_items
    for p in batch.points:
        reason = check_point(p, batch.site, batch.gateway, limits, now_ns)
        if reason:
            v.refused[reason] += 1
        else:
            v.good.append(p)
    return v
