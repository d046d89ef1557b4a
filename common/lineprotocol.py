"""InfluxDB line protocol, escaped by the rules of the InfluxDB documentation.

Every string that reaches InfluxDB passes through here, so a device name such as
``a,b=c d\\nx`` or ``5幢1单元电表`` arrives intact and cannot inject a second line.
"""

from __future__ import annotations

import math

from common.points import FieldValue, Point

# Measurement: escape comma and space. Tag keys/values and field keys: comma, equals, space.
_MEAS = str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\n", "\r": r"\r", "\t": r"\t", "\\": "\\\\"})
_KEY = str.maketrans(
    {",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n", "\r": r"\r", "\t": r"\t", "\\": "\\\\"}
)


def escape_measurement(name: str) -> str:
    return name.translate(_MEAS)


def escape_key(text: str) -> str:
    """Tag keys, tag values and field keys.

    Line protocol has no escape for a newline inside a tag, so control characters are
    replaced by their visible escape sequence text (``\\n``); nothing can start a new line.
    """
    return text.translate(_KEY)


def escape_string_field(text: str) -> str:
    # String field values are double-quoted; escape backslash and quote. A raw newline is
    # legal inside a quoted field value in InfluxDB 1.x and 2.x.
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_field(value: FieldValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("NaN and infinities cannot be written to InfluxDB")
        return repr(value)
    if isinstance(value, str):
        return escape_string_field(value)
    raise TypeError(f"field value of type {type(value).__name__} cannot be written")


def to_line(point: Point) -> str:
    """One point as one line (without the trailing newline)."""
    parts = [escape_measurement(point.measurement)]
    for k in sorted(point.tags):
        v = point.tags[k]
        if v == "":
            continue  # InfluxDB refuses empty tag values; an empty tag is the same as none
        parts.append(f"{escape_key(k)}={escape_key(v)}")
    head = ",".join(parts)
    fields = ",".join(f"{escape_key(k)}={format_field(v)}" for k, v in point.fields.items())
    if not fields:
        raise ValueError("a point needs at least one field")
    return f"{head} {fields} {point.time_ns}"


def to_lines(points: list[Point]) -> str:
    return "\n".join(to_line(p) for p in points) + "\n"
