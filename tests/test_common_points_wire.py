"""The point model and the uplink wire format (pure)."""

from __future__ import annotations

import json
import math
import zlib

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common import wire
from common.points import MEASUREMENTS, Point, Priority, UniqueTimestamps, clean_fields, priority_of

tag_text = st.text(min_size=1, max_size=20)
field_value = st.one_of(st.booleans(), st.integers(-(2**63), 2**63 - 1),
                        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30))
points = st.builds(
    Point,
    st.sampled_from(sorted(MEASUREMENTS)),
    st.dictionaries(tag_text, tag_text, max_size=5),
    st.dictionaries(tag_text, field_value, min_size=1, max_size=5),
    st.integers(0, 2**62),
)


@pytest.mark.parametrize("version", [1, 2])
@settings(max_examples=200)
@given(pts=st.lists(points, max_size=20))
def test_batch_round_trip_keeps_every_point_and_type(version, pts):
    batch = wire.Batch("site-1", "gw-1", "b1", pts, 123)
    back = wire.decode_batch(wire.encode_batch(batch, version=version))
    assert (back.site, back.gateway, back.batch_id, back.sent_ns) == ("site-1", "gw-1", "b1", 123)
    assert back.bad_items == 0
    assert [p.to_wire() for p in back.points] == [p.to_wire() for p in pts]
    for a, b in zip(back.points, pts):
        for k in a.fields:  # int stays int, float stays float, bool stays bool
            assert type(a.fields[k]) is type(b.fields[k])


@pytest.mark.parametrize("version", [1, 2])
@settings(max_examples=100)
@given(pts=st.lists(points, max_size=20))
def test_raw_encoding_equals_model_encoding(version, pts):
    """The edge's encoder (from the outbox's JSON bodies) says what the model's encoder says."""
    a = wire.decode_batch(wire.encode_batch(wire.Batch("s", "g", "x", pts, 5), version=version))
    raw = wire.encode_batch_raw("s", "g", "x", 5, [wire.point_json(p) for p in pts], version=version)
    assert json.loads(zlib.decompress(raw))["v"] == version
    b = wire.decode_batch(raw)
    assert [p.to_wire() for p in a.points] == [p.to_wire() for p in b.points] == [p.to_wire() for p in pts]
    for x, y in zip(b.points, pts):
        assert [type(v) for v in x.fields.values()] == [type(v) for v in y.fields.values()]


def test_v2_writes_each_series_once_and_keeps_the_point_order():
    tags = {"site": "s", "gateway": "g", "device": "5幢1单元电表"}
    pts = [Point("meter", tags, {"voltage": 220.5, "n": 3}, 10),
           Point("meter", {**tags, "device": "m2"}, {"voltage": 221.0, "n": 4}, 11),
           Point("meter", tags, {"voltage": 222.0, "n": 5}, 12),
           Point("meter", tags, {"voltage": 223.0}, 13),          # another field set: another series
           Point("meter", tags, {"n": 6, "voltage": 224.0}, 14),  # keys in another order: another series
           Point("gate_event", tags, {"n": 7}, 15)]
    raw = wire.encode_batch_raw("s", "g", "x", 5, [wire.point_json(p) for p in pts], version=2)
    doc = json.loads(zlib.decompress(raw))
    assert list(doc) == ["v", "site", "gateway", "batch", "sent_ns", "series", "rows"]
    assert doc["series"] == [["meter", tags, ["voltage", "n"]], ["meter", {**tags, "device": "m2"}, ["voltage", "n"]],
                             ["meter", tags, ["voltage"]], ["meter", tags, ["n", "voltage"]],
                             ["gate_event", tags, ["n"]]]
    assert doc["rows"] == [[0, 10, 220.5, 3], [1, 11, 221.0, 4], [0, 12, 222.0, 5], [2, 13, 223.0], [3, 14, 6, 224.0],
                           [4, 15, 7]]
    many = [wire.point_json(Point("meter", {**tags, "device": f"m{i % 3}"}, {"voltage": 220.5 + i, "n": i}, i))
            for i in range(100)]
    v1, v2 = (zlib.decompress(wire.encode_batch_raw("s", "g", "x", 5, many, version=v)) for v in (1, 2))
    assert len(v2) < 0.4 * len(v1)  # each series once, not once per point
    back = wire.decode_batch(raw)
    assert back.points == pts
    back.points[0].tags["building"] = "9幢"  # rows of one series share a tags object on the wire, not in Points
    assert "building" not in back.points[2].tags


def test_integers_past_64_bits_arrive_exact_in_either_version():
    """orjson 3 reads an integer past 64 bits as a float without a word; the decoder must not, so
    that the collector refuses it (integer_out_of_range) instead of writing a float."""
    big = [2**64, -(2**63) - 1, 2**70, 2**64 - 1]
    pts = [Point("meter", {"site": "s", "gateway": "g", "device": "d"}, {"v": v, "f": 1.5}, 10 + i)
           for i, v in enumerate(big)]
    bodies = [wire.point_json(p) for p in pts]
    for version in (1, 2):
        r = wire.decode_batch(wire.encode_batch_raw("s", "g", "x", 5, bodies, version=version))
        assert [p.fields["v"] for p in r.points] == big and all(type(p.fields["v"]) is int for p in r.points)


def test_v2_encoder_sends_what_is_not_a_point_as_v1():
    """An outbox body that is not a point (a damaged row) cannot be a v2 row: the batch goes as
    v1, which every collector reads, and the collector counts the item as malformed."""
    good = wire.point_json(Point("meter", {"site": "s", "gateway": "g", "device": "d"}, {"v": 1.0}, 10))
    for bad in ('"junk"', '["meter",{},{"v":1}]', '["meter",{"a":[1]},{"v":1},5]', '["meter",{},{"v":1},5'):
        raw = wire.encode_batch_raw("s", "g", "x", 5, [good, bad, good], version=2)
        text = zlib.decompress(raw).decode()
        assert text.startswith('{"v":1,') and bad in text
    r = wire.decode_batch(wire.encode_batch_raw("s", "g", "x", 5, [good, '"junk"', good], version=2))
    assert len(r.points) == 2 and r.bad_items == 1


def test_empty_v2_batch_is_a_clock_probe():
    raw = wire.encode_batch_raw("s", "g", "probe-1", 5, [], version=2)
    doc = json.loads(zlib.decompress(raw))
    assert (doc["v"], doc["series"], doc["rows"]) == (2, [], [])
    r = wire.decode_batch_items(raw)
    assert (r.version, r.count, r.batch_id) == (2, 0, "probe-1")


def test_row_item_is_the_v1_point_a_row_stands_for_or_none():
    series = [["meter", {"device": "d"}, ["a", "b"]], "junk", ["meter", {}], ["meter", {}, ["a", "a"]],
              ["meter", {}, ["a", 1]], ["meter", {}, "ab"], ["meter", {}, [["a"], "b"]]]
    assert wire.row_item(series, [0, 10, 1.5, None]) == ["meter", {"device": "d"}, {"a": 1.5, "b": None}, 10]
    # the point checks judge the time
    assert wire.row_item(series, [0, "x", 1, 2]) == ["meter", {"device": "d"}, {"a": 1, "b": 2}, "x"]
    assert wire.row_item(series, [4, 10, 1, 2]) == ["meter", {}, {"a": 1, 1: 2}, 10]  # and the keys (bad_field)
    for row in ([0, 10, 1.5], [0, 10, 1, 2, 3], [7, 10, 1, 2], [-1, 10, 1, 2], [True, 10, 1, 2], [0.0, 10, 1, 2],
                ["0", 10, 1, 2], [0], [], "row", None, {"0": 1}, [1, 10], [2, 10], [3, 10, 1, 2], [5, 10, 1, 2],
                [6, 10, 1, 2]):
        assert wire.row_item(series, row) is None, row


def _z(**doc) -> bytes:
    """A compressed batch of site s, gateway g, batch b, with the given other fields."""
    return zlib.compress(json.dumps({"site": "s", "gateway": "g", "batch": "b", **doc}).encode())


@pytest.mark.parametrize("payload, reason", [
    (b"not zlib", "not zlib"),
    (zlib.compress(b"{not json"), "not valid JSON"),
    (zlib.compress(b"[1,2]"), "JSON object"),
    (zlib.compress(b"\xff\xfe"), "not valid JSON"),
    (_z(v=3, points=[]), "wire version"),
    (_z(v=True, points=[]), "wire version"),
    (_z(points=[]), "wire version"),
    (_z(v=1, points=[], site=1), "'site'"),
    (_z(v=1, points={}), "'points'"),
    (_z(v=2, rows=[]), "'series'"),
    (_z(v=2, series={}, rows=[]), "'series'"),
    (_z(v=2, series=[], rows="x"), "'rows'"),
    (_z(v=2, points=[]), "'series'"),
])
def test_malformed_batches_raise_wire_error_with_reason(payload, reason):
    with pytest.raises(wire.WireError, match=reason):
        wire.decode_batch(payload)
    with pytest.raises(wire.WireError, match=reason):  # the collector's decoder: same batch-level rules
        wire.decode_batch_items(payload)


def test_zip_bomb_is_refused():
    bomb = zlib.compress(b"{" + b" " * (8 * 1024 * 1024) + b"}")
    with pytest.raises(wire.WireError, match="larger than"):
        wire.decode_batch(bomb, max_bytes=1024 * 1024)


def test_bad_points_are_counted_not_fatal():
    doc = {"v": 1, "site": "s", "gateway": "g", "batch": "b",
           "points": [["meter", {}, {"a": 1}, 5], ["meter", {}, {"a": 1}], "junk", ["meter", {}, {}, "x"],
                      ["meter", [], {}, 1], ["meter", {}, {"a": 1}, True]]}
    b = wire.decode_batch(zlib.compress(json.dumps(doc).encode()))
    assert len(b.points) == 1 and b.bad_items == 5
    # the collector's decoder keeps every item as JSON gave it; its checks count the bad ones
    raw = wire.decode_batch_items(zlib.compress(json.dumps(doc).encode()))
    assert (raw.site, raw.gateway, raw.batch_id, raw.sent_ns) == ("s", "g", "b", 0)
    assert raw.items == doc["points"]


def test_ack_round_trip_and_errors():
    ack = wire.Ack("b1", "ok", written=10, refused=2, reason="nan_or_infinity=2", collector_ns=99)
    back = wire.decode_ack(wire.encode_ack(ack))
    assert (back.batch_id, back.status, back.written, back.refused, back.collector_ns) == ("b1", "ok", 10, 2, 99)
    assert back.ok
    for bad in (b"{", b"[]", b'{"batch": "b", "status": "maybe"}', b'{"status": "ok"}'):
        with pytest.raises(wire.WireError):
            wire.decode_ack(bad)


def test_topics():
    assert wire.up_topic("s", "g") == "poplar/v1/s/g/up"
    assert wire.parse_up_topic("poplar/v1/阳光花园/gw-1/up") == ("阳光花园", "gw-1")
    for bad in ("poplar/v1/s/up", "poplar/v2/s/g/up", "poplar/v1/s/g/ack", "x/v1/s/g/up"):
        with pytest.raises(wire.WireError):
            wire.parse_up_topic(bad)
    assert wire.ID_PATTERN.match("阳光花园-1") and not wire.ID_PATTERN.match("a/b") \
        and not wire.ID_PATTERN.match("a+b") and not wire.ID_PATTERN.match("a b")


def test_unique_timestamps_keep_same_millisecond_events_apart():
    u = UniqueTimestamps()
    tags = {"device": "gate-1"}
    a = u.stamp(Point("gate_event", tags, {"x": 1}, 1_000_000))
    b = u.stamp(Point("gate_event", dict(tags), {"x": 2}, 1_000_000))
    c = u.stamp(Point("gate_event", {"device": "gate-2"}, {"x": 3}, 1_000_000))
    assert a.time_ns != b.time_ns and c.time_ns == 1_000_000
    # a genuinely older (backfilled) event is left alone
    d = u.stamp(Point("gate_event", dict(tags), {"x": 4}, 1_000_000 - 5_000_000_000))
    assert d.time_ns == 1_000_000 - 5_000_000_000


def test_clean_fields_refuses_what_influx_cannot_store():
    out, refused = clean_fields({"a": 1.0, "b": math.nan, "c": math.inf, "d": None, "e": [1], "f": "x", "g": True})
    assert out == {"a": 1.0, "f": "x", "g": True}
    assert sorted(refused) == ["b", "c", "e"]


def test_priorities_rank_alarms_last():
    assert priority_of("device_health") < priority_of("meter") < priority_of("gate_event") <= priority_of("gate_alarm")
    assert priority_of("gate_alarm") == Priority.ALARM


def test_point_json_refuses_nan_and_infinities_and_keeps_everything_else_exact():
    tags = {"site": "s", "gateway": "g", "device": "null"}  # a name that is the word "null"
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError):
            wire.point_json(Point("meter", tags, {"voltage": bad}, 1))
    odd = Point("gate_event", tags, {"note": 'said "null" twice: null', "n": 2**70, "ok": True, "t": 36.6}, 7)
    assert json.loads(wire.point_json(odd)) == odd.to_wire()  # the stdlib's path, the same content
    plain = Point("meter", {**tags, "device": "5幢电表"}, {"voltage": 220.5, "count": 3}, 9)
    assert wire.point_json(plain) == orjson.dumps(plain.to_wire()).decode()  # the fast path


def test_point_json_is_always_utf8_even_for_a_lone_surrogate():
    # A source that let a "\ud800" escape through must not make the outbox fail (SQLite stores
    # UTF-8): the point is stored escaped, and the collector refuses it by name.
    tags = {"site": "s", "gateway": "g", "device": "5幢"}
    p = Point("gate_event", tags, {"raw_method": "face\ud800", "note": "行\n"}, 7)
    text = wire.point_json(p)
    assert text.encode() and "\\ud800" in text and "5幢" not in text  # escaped, all of it
    assert json.loads(text) == p.to_wire()
    from collector.config import Limits
    from collector.validate import LineMaker
    v = LineMaker(Limits()).check_items("s", "g", [json.loads(text)], 7)
    assert dict(v.refused) == {"invalid_unicode": 1} and not v.lines
    fine = Point("gate_event", tags, {"note": "行\n"}, 7)
    assert "5幢" in wire.point_json(fine)  # only such points are escaped
