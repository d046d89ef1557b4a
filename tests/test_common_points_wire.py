"""The point model and the uplink wire format (pure)."""

from __future__ import annotations

import json
import math
import zlib

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


@settings(max_examples=200)
@given(st.lists(points, max_size=20))
def test_batch_round_trip_keeps_every_point_and_type(pts):
    batch = wire.Batch("site-1", "gw-1", "b1", pts, 123)
    back = wire.decode_batch(wire.encode_batch(batch))
    assert (back.site, back.gateway, back.batch_id, back.sent_ns) == ("site-1", "gw-1", "b1", 123)
    assert back.bad_items == 0
    assert [p.to_wire() for p in back.points] == [p.to_wire() for p in pts]
    for a, b in zip(back.points, pts):
        for k in a.fields:  # int stays int, float stays float, bool stays bool
            assert type(a.fields[k]) is type(b.fields[k])


def test_raw_encoding_equals_model_encoding():
    pts = [Point("meter", {"site": "s", "device": "5幢1单元电表"}, {"voltage": 220.0, "n": 3}, 10)]
    a = wire.decode_batch(wire.encode_batch(wire.Batch("s", "g", "x", pts, 5)))
    b = wire.decode_batch(wire.encode_batch_raw("s", "g", "x", 5, [wire.point_json(p) for p in pts]))
    assert [p.to_wire() for p in a.points] == [p.to_wire() for p in b.points]


@pytest.mark.parametrize("payload, reason", [
    (b"not zlib", "not zlib"),
    (zlib.compress(b"{not json"), "not valid JSON"),
    (zlib.compress(b"[1,2]"), "JSON object"),
    (zlib.compress(b'{"v": 2, "site": "s", "gateway": "g", "batch": "b", "points": []}'), "wire version"),
    (zlib.compress(b'{"v": 1, "site": 1, "gateway": "g", "batch": "b", "points": []}'), "'site'"),
    (zlib.compress(b'{"v": 1, "site": "s", "gateway": "g", "batch": "b", "points": {}}'), "'points'"),
    (zlib.compress(b"\xff\xfe"), "not valid JSON"),
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
