"""The point model: the one definition of a time-series point, shared by edge and collector.

A point is a measurement, a tag set (str -> str), a field set (float, int, bool, str) and a
timestamp in nanoseconds since the epoch, UTC. Its identity in InfluxDB is
(measurement, tags, timestamp): the edge fixes all three when it creates the point, so a
replayed point overwrites itself instead of counting twice.
"""

from __future__ import annotations

import enum
import math
import time
from dataclasses import dataclass, field

FieldValue = float | int | bool | str

#: Tags every point carries; set by the edge from its config and registry.
REQUIRED_TAGS = ("site", "gateway", "device")

#: Location tags a device may carry (from the registry).
LOCATION_TAGS = ("building", "unit_no", "floor")


class Priority(enum.IntEnum):
    """Drop order when the outbox is full: lowest value is dropped first."""

    HEALTH = 0
    TELEMETRY = 1
    EVENT = 2
    ALARM = 3


#: Every measurement Poplar writes, with its outbox priority. The collector refuses others.
MEASUREMENTS: dict[str, Priority] = {
    "meter": Priority.TELEMETRY,
    "gate_event": Priority.EVENT,
    "gate_alarm": Priority.ALARM,
    "elevator_status": Priority.TELEMETRY,
    "elevator_event": Priority.ALARM,
    "device_health": Priority.HEALTH,
    "gateway_health": Priority.HEALTH,
    "collector_health": Priority.HEALTH,
    "meter_anomaly": Priority.TELEMETRY,
    "care_alert": Priority.ALARM,
}


def priority_of(measurement: str) -> Priority:
    return MEASUREMENTS.get(measurement, Priority.TELEMETRY)


@dataclass(slots=True)
class Point:
    measurement: str
    tags: dict[str, str]
    fields: dict[str, FieldValue]
    time_ns: int
    #: Not part of the identity; how the outbox ranks it when it must drop.
    priority: Priority = field(default=Priority.TELEMETRY, compare=False)
    #: Not part of the identity: False when the time is the device's own (e.g. a gate's event
    #: time), which a correction of the gateway box's clock must not move.
    box_time: bool = field(default=True, compare=False)

    def to_wire(self) -> list:
        """Compact JSON-able form used in the outbox and in uplink batches."""
        return [self.measurement, self.tags, self.fields, self.time_ns]

    @classmethod
    def from_wire(cls, item: list) -> "Point":
        """Inverse of to_wire. Raises ValueError/TypeError on a malformed item; callers count it."""
        if not isinstance(item, list) or len(item) != 4:
            raise ValueError("a point must be [measurement, tags, fields, time_ns]")
        m, tags, fields, ts = item
        if not isinstance(m, str) or not isinstance(tags, dict) or not isinstance(fields, dict):
            raise TypeError("point measurement must be a string, tags and fields objects")
        if not isinstance(ts, int) or isinstance(ts, bool):
            raise TypeError("point time_ns must be an integer")
        return cls(m, tags, fields, ts, priority_of(m))

    def series_key(self) -> tuple:
        return (self.measurement, tuple(sorted(self.tags.items())))


def now_ns() -> int:
    return time.time_ns()


def clean_fields(fields: dict[str, object]) -> tuple[dict[str, FieldValue], list[str]]:
    """Keep the fields InfluxDB can store; return them and the names of those refused.

    NaN and infinities have no line-protocol form; None means "not reported".
    """
    out: dict[str, FieldValue] = {}
    refused: list[str] = []
    for name, value in fields.items():
        if value is not None:
            keep_field(out, refused, name, value)
    return out, refused


def keep_field(fields: dict[str, FieldValue], refused: list[str], name: str, value: object) -> None:
    """The one rule for a field value: finite numbers, bools and strings are kept in FIELDS, anything
    else (NaN, infinities, lists, None) is refused by NAME."""
    if isinstance(value, float) and not math.isfinite(value):
        refused.append(name)
    elif isinstance(value, (bool, int, float, str)):
        fields[name] = value
    else:
        refused.append(name)


class UniqueTimestamps:
    """Makes timestamps unique per series, so two events of one device in the same
    millisecond (or nanosecond) stay two points instead of overwriting each other."""

    def __init__(self, max_series: int = 100_000) -> None:
        self._last: dict[tuple, int] = {}
        self._max = max_series

    def stamp(self, point: Point) -> Point:
        key = point.series_key()
        last = self._last.get(key)
        if last is not None and point.time_ns <= last and last - point.time_ns < 1_000_000_000:
            point.time_ns = last + 1
        if len(self._last) >= self._max and key not in self._last:
            self._last.clear()  # bounded memory; collisions after a reset are vanishingly rare
        self._last[key] = point.time_ns
        return point
