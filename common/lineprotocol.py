"""InfluxDB line protocol, escaped by what real servers do (verified against InfluxDB 1.6.7 and
VictoriaMetrics; tests/test_lineprotocol_servers.py).

Every string that reaches InfluxDB passes through here, so a device name such as
``a,b=c d "x" 5幢`` arrives intact and cannot inject a second line or a tag.

What the servers do (measured, not assumed):
- Tag keys, tag values, field keys: ``\\,`` ``\\=`` ``\\ `` are the only escapes InfluxDB 1.x
  (and 2.x, same parser) undoes. A backslash before any other character is stored as written,
  so a backslash is written raw: escaping it as ``\\\\`` would store two backslashes in 1.x, while
  VictoriaMetrics (and InfluxDB 3.x) turn ``\\\\`` into one. A backslash that ends a tag value,
  or stands before a backslash, comma, equals sign or space, has no form every server reads the
  same way: the collector refuses such tags (``tag_unrepresentable``, see ``tag_problem``).
- There is no escape for a newline in a tag or key: control characters are refused by the
  collector; here they are replaced by a space as a last defence, so nothing can start a line.
- String field values are double-quoted; ``\\\\`` and ``\\"`` are undone by every server, and
  a raw newline inside the quotes is stored as a newline by InfluxDB 1.x/2.x.
"""

from __future__ import annotations

import math

import orjson

from common.points import FieldValue, Point

_CONTROL = {chr(c): " " for c in range(32)} | {"\x7f": " "}
_MEAS = str.maketrans({",": r"\,", " ": r"\ "} | _CONTROL)
_KEY = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "} | _CONTROL)
_NEEDS_KEY_ESCAPE = frozenset(",= ") | frozenset(_CONTROL)


def tag_problem(text: str) -> str | None:
    """Why `text` cannot be a tag key, tag value or field key, or None if it can.

    Cheap for the common case (no backslash, no control character)."""
    if not text:
        return "empty"
    if "\\" in text:
        if text.endswith("\\"):
            return "tag_unrepresentable"
        i = text.find("\\")
        while i != -1:
            if text[i + 1] in "\\,= ":
                return "tag_unrepresentable"
            i = text.find("\\", i + 1)
    if not text.isprintable():
        if any(ord(c) < 32 or c == "\x7f" for c in text):
            return "control_character"
        if not is_utf8(text):
            return "invalid_unicode"
    return None


def is_utf8(text: str) -> bool:
    """False for text holding a lone surrogate (JSON's "\\ud800" decodes to one): it has no
    UTF-8 form, so it can be neither written to InfluxDB nor stored as it came."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def escape_measurement(name: str) -> str:
    return name.translate(_MEAS)


def escape_key(text: str) -> str:
    """Tag keys, tag values and field keys (see the module doc for backslashes)."""
    if _NEEDS_KEY_ESCAPE.isdisjoint(text):
        return text  # the common case: nothing to escape, no copy
    return text.translate(_KEY)


def escape_string_field(text: str) -> str:
    if "\\" in text:
        text = text.replace("\\", "\\\\")
    if '"' in text:
        text = text.replace('"', '\\"')
    return '"' + text + '"'


def format_float(value: float) -> str:
    """A finite float as line protocol: the shortest text that reads back as the same float,
    like repr(), written by orjson (the collector writes whole batches of numbers with one orjson
    call). It spells some exponents otherwise than repr (``1e-7`` for ``1e-07``, ``0.00001`` for
    ``1e-05``); every server reads the same value (tests/test_lineprotocol_servers.py)."""
    return orjson.dumps(value).decode()


def format_field(value: FieldValue) -> str:
    t = type(value)
    if t is float:
        if not math.isfinite(value):
            raise ValueError("NaN and infinities cannot be written to InfluxDB")
        return format_float(value)
    if t is bool:
        return "true" if value else "false"
    if t is int:
        return f"{value}i"
    if t is str:
        return escape_string_field(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{int(value)}i"
    if isinstance(value, float):
        return format_field(float(value))
    if isinstance(value, str):
        return escape_string_field(str(value))
    raise TypeError(f"field value of type {type(value).__name__} cannot be written")


def series_head(measurement: str, tags: dict[str, str]) -> str:
    """``measurement,k=v,...`` with tags sorted (InfluxDB's fast path); empty tag values left out
    because InfluxDB refuses them (an empty tag is the same as none)."""
    parts = [escape_measurement(measurement)]
    for k in sorted(tags):
        v = tags[k]
        if v != "":
            parts.append(f"{escape_key(k)}={escape_key(v)}")
    return ",".join(parts)


def format_fields(fields: dict[str, FieldValue]) -> str:
    if not fields:
        raise ValueError("a point needs at least one field")
    return ",".join(f"{escape_key(k)}={format_field(v)}" for k, v in fields.items())


def to_line(point: Point) -> str:
    """One point as one line (without the trailing newline)."""
    return f"{series_head(point.measurement, point.tags)} {format_fields(point.fields)} {point.time_ns}"


def to_lines(points: list[Point]) -> str:
    return "\n".join(to_line(p) for p in points) + "\n"
