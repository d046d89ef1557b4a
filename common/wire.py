"""The uplink wire format between edge and collector. Documented in docs/wire-format.md.

Topics (MQTT, QoS 1):
  poplar/v1/{site}/{gateway}/up     edge -> collector   a Batch
  poplar/v1/{site}/{gateway}/ack    collector -> edge   an Ack
  poplar/v1/{site}/{gateway}/state  edge, retained, with a last will: "online" / "offline" JSON

A Batch payload is zlib-compressed UTF-8 JSON, in one of two versions; the collector accepts both
(gateways are upgraded at other times than the central collector), the edge sends v2 unless its
config says `uplink.wire_version: 1`.
  v1: {"v": 1, "site": str, "gateway": str, "batch": str, "sent_ns": int, "points": [point, ...]}
      where a point is [measurement, {tag: str}, {field: number|bool|str}, time_ns].
  v2: {"v": 2, "site": str, "gateway": str, "batch": str, "sent_ns": int,
       "series": [[measurement, {tag: str}, [field key, ...]], ...],
       "rows": [[series index, time_ns, value_1, ..., value_k], ...]}
      columnar: each series (measurement, tag set, field keys) is written once per batch, and a
      row carries exactly one value per field key of its series, in order (null is not a value).
      Rows keep the points' order. Every v2 row stands for the v1 point `row_item` gives.
JSON integers are InfluxDB integers, JSON numbers with a fraction or exponent are floats.

An Ack payload is plain UTF-8 JSON (the same for both batch versions):
  {"v": 1, "batch": str, "status": "ok"|"retry"|"rejected", "written": int, "refused": int,
   "reason": str, "collector_ns": int}
"ok" means InfluxDB accepted every written point: the edge may delete the batch. "refused" counts
points the collector refused one by one (NaN, out of the clock window, ...) and will never accept.
"retry" means the collector could not write now (sink down): the edge keeps the batch and resends.
"rejected" means the whole batch was refused (unknown gateway, site mismatch): the edge keeps it and
logs the reason for the installer, because it is a configuration problem that someone can fix.
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass, field

import orjson

from common.lineprotocol import is_utf8
from common.points import Point

#: The batch version the edge sends by default; the collector accepts every one of WIRE_VERSIONS.
WIRE_VERSION = 2
WIRE_VERSIONS = (1, 2)
#: Acks did not change with v2; their "v" stays 1 so that older edges read them as before.
ACK_VERSION = 1
TOPIC_ROOT = "poplar/v1"

#: Site and gateway ids appear in MQTT topics: no '/', '+', '#', whitespace. Chinese is fine.
ID_PATTERN = re.compile(r"^[\w.\-]{1,64}$")


class WireError(ValueError):
    """A payload that is not a valid message of this wire format. The text says why."""


def up_topic(site: str, gateway: str) -> str:
    return f"{TOPIC_ROOT}/{site}/{gateway}/up"


def ack_topic(site: str, gateway: str) -> str:
    return f"{TOPIC_ROOT}/{site}/{gateway}/ack"


def state_topic(site: str, gateway: str) -> str:
    return f"{TOPIC_ROOT}/{site}/{gateway}/state"


UP_SUBSCRIPTION = f"{TOPIC_ROOT}/+/+/up"


def parse_up_topic(topic: str) -> tuple[str, str]:
    """(site, gateway) from an uplink topic; WireError if it is not one."""
    parts = topic.split("/")
    if len(parts) != 5 or f"{parts[0]}/{parts[1]}" != TOPIC_ROOT or parts[4] != "up":
        raise WireError(f"not an uplink topic: {topic!r}")
    return parts[2], parts[3]


@dataclass(slots=True)
class Batch:
    site: str
    gateway: str
    batch_id: str
    points: list[Point]
    sent_ns: int = 0
    #: Items that could not be parsed as points; the collector counts them as refused.
    bad_items: int = 0


def _head(site: str, gateway: str, batch_id: str, sent_ns: int, version: int) -> dict:
    # The batch id comes early in the text: the collector reads it from the first bytes of a
    # batch too large to decode, to tell the edge (collector.service._peek_batch_id).
    return {"v": version, "site": site, "gateway": gateway, "batch": batch_id, "sent_ns": sent_ns}


def _std_dumps(doc: object) -> bytes:
    """The stdlib's JSON: it writes integers past 64 bits and NaN literals, which the collector
    then refuses point by point (orjson refuses the first and turns the second into null)."""
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


class NotColumnar(ValueError):
    """Items that v2 cannot express (not point-shaped): the batch goes out as v1 instead, which
    every collector reads, and the collector counts those items as malformed, as it always has."""


def columnar(items: list) -> tuple[list, list]:
    """(series, rows) of v2 for v1 items [measurement, tags, fields, time_ns], in their order."""
    index: dict[tuple, int] = {}
    series: list = []
    rows: list = []
    try:
        for m, tags, fields, ts in items:
            # Flat key, no item tuples: measurement, the tag count (so the split is unambiguous),
            # tag keys, tag values, field keys.
            key = (m, len(tags), *tags, *tags.values(), *fields)
            i = index.get(key)
            if i is None:
                i = index[key] = len(series)
                series.append([m, tags, list(fields)])
            rows.append([i, ts, *fields.values()])
    except (TypeError, ValueError, AttributeError):  # not [m, {tags}, {fields}, ts], unhashable tags
        raise NotColumnar() from None
    return series, rows


def _v2_payload(site: str, gateway: str, batch_id: str, sent_ns: int, items: list, level: int,
                plain: bool) -> bytes:
    """A v2 payload; `plain` says the items hold nothing orjson cannot write the same way."""
    series, rows = columnar(items)
    doc = _head(site, gateway, batch_id, sent_ns, 2)
    doc["series"] = series
    doc["rows"] = rows
    return zlib.compress(orjson.dumps(doc) if plain else _std_dumps(doc), level)


def encode_batch(batch: Batch, level: int = 1, version: int = WIRE_VERSION) -> bytes:
    """A batch of Points as a payload of the given wire version (tests and tools)."""
    items = [p.to_wire() for p in batch.points]
    if version == 2:
        try:
            return _v2_payload(batch.site, batch.gateway, batch.batch_id, batch.sent_ns, items, level, False)
        except NotColumnar:
            pass
    doc = _head(batch.site, batch.gateway, batch.batch_id, batch.sent_ns, 1)
    doc["points"] = items
    return zlib.compress(_std_dumps(doc), level)


def encode_batch_raw(site: str, gateway: str, batch_id: str, sent_ns: int, items_json: list[str],
                     level: int = 1, version: int = WIRE_VERSION) -> bytes:
    """A payload from points already serialised as JSON (as the outbox stores them: `point_json`).

    v1 splices the texts, so the edge does not decode and re-encode every point it forwards. v2
    must decode them to build its series table: one orjson call for the whole batch, and orjson
    again to write it; a batch holding what orjson cannot read or write exactly (integers past
    64 bits) goes through the stdlib, and one holding an item that is not a point goes out as v1."""
    if version == 2:
        try:
            items, plain = _loads(("[" + ",".join(items_json) + "]").encode())
            return _v2_payload(site, gateway, batch_id, sent_ns, items, level, plain)
        except (ValueError, NotColumnar):  # an item that is not JSON or not a point: v1 carries it as is
            pass
    head = json.dumps(_head(site, gateway, batch_id, sent_ns, 1), ensure_ascii=False, separators=(",", ":"))
    return zlib.compress((head[:-1] + ',"points":[' + ",".join(items_json) + "]}").encode(), level)


#: Any JSON integer orjson would silently turn into a float (past 2**64 - 1 or below -2**63)
#: has 20 digits, or a minus and 19: after this translation, a run of 20 zeros.
_DIGITS = bytes.maketrans(b"0123456789-", b"0" * 11)
_LONG_NUMBER = b"0" * 20


def _loads(raw: bytes) -> tuple[object, bool]:
    """(document, plain): orjson where it reads the text exactly (plain=True), else the stdlib,
    which keeps integers past 64 bits exact and reads NaN literals, so that the point checks can
    refuse them by name. orjson 3 reads an integer past 64 bits as a float without a word, so a
    long digit run (rare: a timestamp has 19 digits) sends the text to the stdlib."""
    if _LONG_NUMBER not in raw.translate(_DIGITS):
        try:
            return orjson.loads(raw), True  # about 1.5x the stdlib's speed on the collector's hot path
        except orjson.JSONDecodeError:
            pass
    return json.loads(raw), False


@dataclass(slots=True)
class RawBatch:
    """A decoded batch whose points are still the wire items as JSON gave them: the collector
    checks and formats them directly, without building a Point per item (its hot path).
    v1 fills `items`; v2 fills `series` and `rows` (see `row_item`). Items, series and rows may
    be malformed; the collector counts them (`Point.from_wire` judges a point's shape)."""
    site: str
    gateway: str
    batch_id: str
    items: list
    sent_ns: int = 0
    version: int = 1
    series: list = field(default_factory=list)
    rows: list = field(default_factory=list)

    @property
    def count(self) -> int:
        """Points in the batch, good or bad."""
        return len(self.rows) if self.version == 2 else len(self.items)


def decode_batch_items(payload: bytes, max_bytes: int = 64 * 1024 * 1024) -> RawBatch:
    """Parse a batch payload (v1 or v2) down to its items or rows. Raises WireError with a reason
    for anything malformed at the batch level; single items, series and rows are not checked here."""
    try:
        d = zlib.decompressobj()
        raw = d.decompress(payload, max_bytes)
        if d.unconsumed_tail:
            raise WireError(f"batch larger than {max_bytes} bytes when decompressed")
    except zlib.error as exc:
        raise WireError(f"batch is not zlib-compressed: {exc}") from None
    try:
        doc, _ = _loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise WireError(f"batch is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise WireError("batch must be a JSON object")
    version = doc.get("v")
    if version not in WIRE_VERSIONS or type(version) is not int:
        raise WireError(f"unsupported wire version {version!r}; this collector reads versions "
                        f"{', '.join(map(str, WIRE_VERSIONS))} (upgrade the collector to read newer gateways)")
    for key in ("site", "gateway", "batch"):
        if not isinstance(doc.get(key), str):
            raise WireError(f"batch field {key!r} must be a string")
    sent = doc.get("sent_ns", 0)
    r = RawBatch(doc["site"], doc["gateway"], doc["batch"], [], sent if isinstance(sent, int) else 0, version)
    for key in ("points",) if version == 1 else ("series", "rows"):
        if not isinstance(doc.get(key), list):
            raise WireError(f"batch field {key!r} must be a list")
    if version == 1:
        r.items = doc["points"]
    else:
        r.series, r.rows = doc["series"], doc["rows"]
    return r


def row_item(series: list, row: object) -> list | None:
    """The v1 item [measurement, tags, fields, time_ns] a v2 row stands for, or None when the row
    or its series entry is malformed: a row is [series index, time_ns, value...] with exactly one
    value per field key; a series entry is [measurement, tags, [distinct keys]]. The measurement,
    tags, keys, time and values are left for the point checks to judge, as in v1."""
    if type(row) is not list or len(row) < 2:
        return None
    i = row[0]
    if type(i) is not int or not 0 <= i < len(series):
        return None
    entry = series[i]
    if type(entry) is not list or len(entry) != 3:
        return None
    m, tags, keys = entry
    if type(keys) is not list or len(keys) != len(row) - 2:
        return None
    try:
        fields = dict(zip(keys, row[2:]))
    except TypeError:  # a key that cannot be one (a list)
        return None
    return [m, tags, fields, row[1]] if len(fields) == len(keys) else None  # else a key came twice


def items_of(r: RawBatch) -> list:
    """The v1 items of a decoded batch of either version; a malformed v2 row becomes None (which
    `Point.from_wire` and the collector's checks refuse as malformed)."""
    if r.version == 1:
        return r.items
    return [row_item(r.series, row) for row in r.rows]


def decode_batch(payload: bytes, max_bytes: int = 64 * 1024 * 1024) -> Batch:
    """Parse a batch payload (v1 or v2) into Points. Raises WireError with a reason for anything
    malformed at the batch level; items that are not points are counted in `bad_items`."""
    r = decode_batch_items(payload, max_bytes)
    points: list[Point] = []
    bad = 0
    for item in items_of(r):
        try:
            p = Point.from_wire(item)
        except (TypeError, ValueError):
            bad += 1
            continue
        p.tags = dict(p.tags)  # rows of one v2 series share the tags: each Point gets its own
        points.append(p)
    return Batch(r.site, r.gateway, r.batch_id, points, r.sent_ns, bad)


@dataclass(slots=True)
class Ack:
    batch_id: str
    status: str  # "ok" | "retry" | "rejected"
    written: int = 0
    refused: int = 0
    reason: str = ""
    collector_ns: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def encode_ack(ack: Ack) -> bytes:
    doc = {"v": ACK_VERSION, "batch": ack.batch_id, "status": ack.status, "written": ack.written,
           "refused": ack.refused, "reason": ack.reason, "collector_ns": ack.collector_ns}
    doc.update(ack.extra)
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def decode_ack(payload: bytes) -> Ack:
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise WireError(f"ack is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("batch"), str):
        raise WireError("ack must be an object with a string 'batch'")
    status = doc.get("status")
    if status not in ("ok", "retry", "rejected"):
        raise WireError(f"ack status must be ok, retry or rejected, not {status!r}")
    known = {"v", "batch", "status", "written", "refused", "reason", "collector_ns"}
    return Ack(doc["batch"], status, int(doc.get("written") or 0), int(doc.get("refused") or 0),
               str(doc.get("reason") or ""), int(doc.get("collector_ns") or 0),
               {k: v for k, v in doc.items() if k not in known})


def point_json(point: Point) -> str:
    """A point serialised as stored in the outbox and spliced into batches."""
    item = point.to_wire()
    # orjson writes the same JSON ~10x faster. It writes NaN and infinities as null, which no
    # point holds otherwise: then (and for a string that happens to contain "null") the stdlib
    # decides, and refuses them as ever. It also writes integers past 64 bits, which the
    # collector then refuses per point.
    try:
        out = orjson.dumps(item)
    except TypeError:
        pass
    else:
        if b"null" not in out:
            return out.decode()
    out_text = json.dumps(item, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    if is_utf8(out_text):
        return out_text
    # A lone surrogate (a source's "\ud800" escape) has no UTF-8 form: keep it escaped, so the
    # outbox can store the point and the collector refuses it by name (invalid_unicode).
    return json.dumps(item, ensure_ascii=True, separators=(",", ":"), allow_nan=False)

