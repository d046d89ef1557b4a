"""Checks a batch and its points before anything reaches InfluxDB (pure functions).

A batch is refused whole when its topic, gateway and site disagree or the gateway is unknown;
single points are refused (and counted by reason) when they break a rule, and the good points
around them are still written.

`LineMaker` is the hot path: it checks and formats in one pass, straight from the decoded JSON
(no Point per item), for both wire versions: v1 items are put in v2's columns first, so one loop
(`check_rows`) serves both. It remembers the series heads (measurement + tags), field keys and
field sets (keys and value types) it has already checked, because a batch holds the same few
devices over and over: a row whose series and field set passed before is formatted from a cached
template of its whole line, and only its values are checked (time window, integer range,
finiteness). The rules themselves live once, in the full checks here (`_full`) and in
common/lineprotocol.py: the templates are built from them, and any point that fails the fast
path goes through them for its reason.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from dataclasses import dataclass, field

import orjson

from common.lineprotocol import escape_key, escape_string_field, format_float, is_utf8, series_head, tag_problem
from common.points import MEASUREMENTS, Point
from common.wire import Batch, NotColumnar, RawBatch, columnar, row_item
from collector.config import Limits

_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1


@dataclass
class Verdict:
    good: list[Point] = field(default_factory=list)
    refused: collections.Counter = field(default_factory=collections.Counter)
    #: Line protocol, UTF-8, one line each without its newline: bytes, because the HTTP body is
    #: bytes and joining and encoding text that holds Chinese costs the collector about 1 µs a point.
    lines: list[bytes] = field(default_factory=list)
    newest_ns: int = 0

    @property
    def refused_total(self) -> int:
        return sum(self.refused.values())

    @property
    def written(self) -> int:
        return len(self.lines)

    @property
    def text_lines(self) -> list[str]:
        """The lines as text (tests, tools)."""
        return [ln.decode() for ln in self.lines]


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
        if k == "time":  # InfluxDB refuses a tag key `time`
            return "reserved_key"
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
    if k == "time":  # InfluxDB 1.x would answer 204 and store the point without it
        return "reserved_key"
    if '\\"' in k:  # InfluxDB 1.x reads \" in a field key as a plain quote: the key would change
        return "field_key_unrepresentable"
    problem = tag_problem(k)
    if problem:
        return {"control_character": "control_character_in_field_key",
                "invalid_unicode": "invalid_unicode"}.get(problem, "bad_field")
    return None


class LineMaker:
    """Checks points and turns the good ones into line protocol, for one collector process."""

    def __init__(self, limits: Limits, max_cache: int = 100_000, escape_newlines: bool = False) -> None:
        self.limits = limits
        self.escape_newlines = escape_newlines
        self._heads: dict[tuple, str] = {}     # (site, gateway, measurement, tag keys, tag values) -> head or "!reason"
        self._keys: dict[str, str] = {}        # field key -> escaped key, or "!reason"
        # series_key() -> {value types: (%-format template of the whole line, positions of integers)}
        self._fast: dict[tuple, dict[tuple, tuple]] = {}
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
        types, taking the numbers as text (`_render`), and the positions of its integers
        (range-checked per point). None when the set needs the full per-field check (bools,
        strings, a bad key, too many fields): the fast path only ever formats what the full
        checks in `_full` would format, and the same way."""
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
                parts.append(ek + "%s")  # the text format_float gives (_render)
            elif t is int:
                parts.append(ek + "%si")  # str() of the int, as the full checks write it
                ints.append(i)
            else:
                return None
        return ",".join(parts) + " %s", tuple(ints)

    def _remember(self, site: str, gateway: str, m: str, tags: dict, fields: dict, head: str) -> None:
        """Cache the fast form of a series and field set whose head passed (see `_template`)."""
        key = series_key(site, gateway, m, tags, fields)
        types = tuple(map(type, fields.values()))
        known = self._fast.get(key)
        if known is None or types not in known:
            tpl = self._template(fields)
            if tpl is not None:  # the next point of this series and field set takes the fast path
                if known is None:
                    if len(self._fast) >= self._max_cache:
                        self._fast.clear()  # bounded memory; the cache refills from the next batches
                    known = self._fast[key] = {}
                known[types] = ((head.replace("%", "%%") + tpl[0]).encode(), tpl[1])

    def _cached(self, site: str, gateway: str, item: list) -> tuple | None:
        """The cached fast form of a point that passed the full checks, if it has one."""
        m, tags, fields, _ = item
        known = self._fast.get(series_key(site, gateway, m, tags, fields))
        return known.get(tuple(map(type, fields.values()))) if known else None

    def _full(self, site: str, gateway: str, item: object, lo: int, hi: int) -> str:
        """One wire item through every check, in their order (shape, head, time window, fields):
        its line, or "!" and the reason it is refused. The one place the per-point rules live;
        the fast path only takes points these checks would pass, and formats them the same way."""
        if type(item) is list and len(item) == 4:
            m, tags, fields, ts = item
            well_formed = type(m) is str and type(tags) is dict and type(fields) is dict and type(ts) is int
        else:
            well_formed = False
        if not well_formed:  # rare: let the point model decide (it may still accept a look-alike)
            try:
                p = Point.from_wire(item)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                return "!malformed_point"
            m, tags, fields, ts = p.measurement, p.tags, p.fields, p.time_ns
        head = self._head(site, gateway, m, tags)
        if head[0] == "!":
            return head
        if ts < lo:
            return "!too_old"
        if ts > hi:
            return "!in_the_future"
        if well_formed:
            self._remember(site, gateway, m, tags, fields, head)
        if not fields or len(fields) > self.limits.max_fields:
            return "!no_fields" if not fields else "!too_many_fields"
        keys, field_key = self._keys, self._field_key
        max_len, esc_nl = self.limits.max_string_len, self.escape_newlines
        out = []
        for k, val in fields.items():
            ek = keys.get(k) if type(k) is str else None
            if ek is None:
                ek = field_key(k)
            if ek[0] == "!":
                return ek
            t = type(val)
            if t is float:
                if val - val != 0.0:  # NaN or an infinity, faster than math.isfinite
                    return "!nan_or_infinity"
                out.append(ek + format_float(val))
            elif t is int:
                if not _INT_MIN <= val <= _INT_MAX:
                    return "!integer_out_of_range"
                out.append(f"{ek}{val}i")
            elif t is bool:
                out.append(ek + ("true" if val else "false"))
            elif t is str:
                if len(val) > max_len:
                    return "!string_too_long"
                if not val.isprintable() and not is_utf8(val):
                    return "!invalid_unicode"
                if esc_nl and ("\n" in val or "\r" in val):
                    val = val.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
                    out.append(ek + '"' + val.replace('"', '\\"') + '"')
                else:
                    out.append(ek + escape_string_field(val))
            else:
                return "!bad_field"
        return f"{head}{','.join(out)} {ts}"

    def check(self, batch: Batch, now_ns: int) -> Verdict:
        """Every point of a batch of Points (tests, tools): see `check_items`."""
        v = self.check_items(batch.site, batch.gateway, [p.to_wire() for p in batch.points], now_ns)
        if batch.bad_items:
            v.refused["malformed_point"] += batch.bad_items
        return v

    def check_batch(self, batch: RawBatch, now_ns: int) -> Verdict:
        """Every point of a decoded batch of either wire version."""
        if batch.version == 2:
            return self.check_rows(batch.site, batch.gateway, batch.series, batch.rows, now_ns)
        return self.check_items(batch.site, batch.gateway, batch.items, now_ns)

    def check_items(self, site: str, gateway: str, items: list, now_ns: int) -> Verdict:
        """Every wire item of a v1 batch (as decoded JSON, `wire.RawBatch.items`): good ones become
        lines, bad ones are counted by reason.

        The items are put in v2's columns (`wire.columnar`, what the edge does) and checked by
        `check_rows`: one hot path for both versions. A batch holding an item that is not
        point-shaped (rare: damaged or hostile input) goes item by item through the full checks
        instead, where `Point.from_wire` (the one definition of a point's shape) judges it."""
        try:
            series, rows = columnar(items)
        except NotColumnar:
            v = Verdict()
            lo, hi = self._window(now_ns)
            for item in items:
                self._take(v, self._full(site, gateway, item, lo, hi), item)
            return v
        return self.check_rows(site, gateway, series, rows, now_ns)

    def _window(self, now_ns: int) -> tuple[int, int]:
        """The oldest and newest time a point may have (limits.max_past_s, max_future_s)."""
        return now_ns - int(self.limits.max_past_s * 1e9), now_ns + int(self.limits.max_future_s * 1e9)

    @staticmethod
    def _take(v: Verdict, line: str, item: list) -> None:
        """Count a refusal ("!reason") or keep a line from the full checks (`item` gave it)."""
        if line[0] == "!":
            v.refused[line[1:]] += 1
        else:
            v.lines.append(line.encode())
            if item[3] > v.newest_ns:
                v.newest_ns = item[3]

    def check_rows(self, site: str, gateway: str, series: list, rows: list, now_ns: int) -> Verdict:
        """Every row of a v2 batch (`wire.RawBatch.series` and `.rows`): good ones become lines, bad
        ones are counted by reason, line by line and reason by reason as the full checks judge the
        v1 points the rows stand for (`wire.row_item`).

        Each series entry is looked up once in the template cache, which only holds series and
        field sets (keys and value types) that passed the full checks: that gives, for this batch,
        the templates of its rows by series index and the types of the whole row. Per row, one
        look-up by those checks its shape (its length, an int index of a series that passed, an
        int time, the value types); then the time window, the integers' range and one finiteness
        test for all floats; the numbers of all such rows are written by one orjson call
        (`_render`). Any other row goes through the full checks (`_full`), which give the reason
        of a refusal and leave a template for the next rows of its kind. The loop is written out
        flat (locals, no per-row method calls on the common path): it runs once per point."""
        v = Verdict()
        lo, hi = self._window(now_ns)
        refused, lines = v.refused, v.lines
        fast_cache, full, take = self._fast, self._full, self._take
        # (series index, type of each element of the row) -> (template, int positions), this batch
        templates: dict[tuple, tuple] = {}
        for idx, entry in enumerate(series):
            if type(entry) is list and len(entry) == 3 and type(entry[1]) is dict and type(entry[2]) is list:
                try:
                    known = fast_cache.get(series_key(site, gateway, *entry))
                except TypeError:  # unhashable: not a series that passed
                    continue
                if known:
                    for types, tpl in known.items():
                        templates[(idx, int, int, *types)] = tpl
        fmts: list[bytes] = []  # fast rows waiting for _render, and their templates
        pending: list[list] = []
        newest = 0
        for row in rows:
            try:
                fmt, ints = templates[(row[0], *map(type, row))]
            except (KeyError, TypeError, IndexError):
                pass  # a series or field set not seen pass yet, or a malformed row
            else:
                ts = row[1]
                if lo <= ts <= hi:
                    if ints:
                        for i in ints:
                            if not _INT_MIN <= row[i + 2] <= _INT_MAX:
                                break
                        else:
                            ints = None
                    if not ints:
                        total = sum(row)  # NaN or an infinity anywhere makes the sum non-finite
                        if total - total == 0.0:
                            if ts > newest:
                                newest = ts
                            fmts.append(fmt)
                            pending.append(row)
                            continue
                # out of the window, an integer out of range, a non-finite value (or finite values
                # whose sum overflows): the full checks decide and give the reason
            item = row_item(series, row)
            line = full(site, gateway, item, lo, hi)
            if line[0] != "!":
                _render(fmts, pending, lines)  # keep the rows' order
                tpl = self._cached(site, gateway, item)  # left by the full checks
                if tpl is not None:
                    templates[(row[0], *map(type, row))] = tpl
            take(v, line, item)
        _render(fmts, pending, lines)
        if newest > v.newest_ns:
            v.newest_ns = newest
        return v


def series_key(site: str, gateway: str, m: str, tags: dict, keys: Iterable) -> tuple:
    """The template cache key of a series and its field keys: flat (no item tuples to build):
    site, gateway, measurement, tag keys, tag values, None, field keys. Only series that passed
    are cached (string tags, string keys), so the None marks where the tags end."""
    return (site, gateway, m, *tags, *tags.values(), None, *keys)


def _render(fmts: list[bytes], rows: list[list], lines: list[bytes]) -> None:
    """Append the lines of the fast rows ([series index, time, number, ...]) through their
    templates, and empty both lists. One orjson call writes every number of them, about twice as
    fast as repr() one by one; its floats are the text `format_float` gives the full checks."""
    if rows:
        text = orjson.dumps(rows)
        for fmt, part in zip(fmts, text[2:-2].split(b"],[")):  # numbers only: no brackets inside
            t = part.split(b",")
            lines.append(fmt % (*t[2:], t[1]))
        fmts.clear()
        rows.clear()


def check_point(p: Point, site: str, gateway: str, limits: Limits, now_ns: int) -> str | None:
    """None if the point may be written, else a short reason (used as a counter name)."""
    b = Batch(site, gateway, "", [p])
    v = LineMaker(limits).check(b, now_ns)
    return next(iter(v.refused), None)
