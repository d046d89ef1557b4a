"""The collector reads wire v2 (columnar) exactly as it reads v1: the same points give the same
line protocol and the same refusal counters; malformed v2 input is counted, never a crash, and
the good rows around a bad one are still written (pure, no servers)."""

from __future__ import annotations

import json
import math
import time
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.config import Limits
from collector.validate import LineMaker
from common import wire
from common.points import Point

NOW = time.time_ns()
LIM = Limits(max_tags=5, max_fields=4, max_string_len=32)
DAY = 86400 * 10**9

_tag_values = st.one_of(
    st.sampled_from(["d", "5幢1单元电表", "a b,c=d", "end\\", "x\\y", "a\nb", "", "x" * 40, '"q"', "%s{0}"]),
    st.integers(0, 3),  # not a string: bad_tag
)
_tags = st.fixed_dictionaries(
    {"site": st.sampled_from(["s", "s", "s", "other"]), "gateway": st.just("g"),
     "device": st.sampled_from(["d", "5幢1单元电表", "", "a b,c=d", "end\\", "a\nb", "y" * 40])},
    optional={"building": _tag_values, "楼层": _tag_values, "k\\": _tag_values, "e": _tag_values, "f": _tag_values},
)
_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e308, -1e308, 0.0, -0.0, 1e-7, 2.5e-5, 1e16]),
    st.integers(-(2**63), 2**63 - 1), st.sampled_from([2**63, -(2**63) - 1, 2**64, 2**70, -(2**64)]),
    st.booleans(),
    st.text(max_size=40), st.sampled_from(['a"b\\c', "line1\nline2\r", "\\", '"', "温度\\n", "x" * 33]),
)
_field_keys = st.sampled_from(["voltage", "current", "n", "状态", "a b", "x,y=z", "%d", "{0}", "k\n", "q\\", ""])
_fields = st.dictionaries(_field_keys, _values, max_size=5)
_times = st.one_of(st.integers(NOW - DAY, NOW + DAY), st.sampled_from([NOW - 40 * DAY, NOW + 3600 * 10**9, 0]))
_points = st.builds(Point, st.sampled_from(["meter", "meter", "gate_event", "evil"]), _tags, _fields, _times)


def _verdicts(maker: LineMaker, payload: bytes):
    v = maker.check_batch(wire.decode_batch_items(payload), NOW)
    return v.lines, dict(v.refused), v.newest_ns


@pytest.mark.parametrize("escape_newlines", [False, True])
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pts=st.lists(_points, max_size=40), repeat=st.integers(1, 3))
def test_v1_and_v2_give_the_same_lines_and_refusals(escape_newlines, pts, repeat):
    pts = pts * repeat  # a series seen again in the same batch takes the fast paths
    batch = wire.Batch("s", "g", "b", pts, 5)
    v1, v2 = wire.encode_batch(batch, version=1), wire.encode_batch(batch, version=2)
    assert json.loads(zlib.decompress(v2))["v"] == 2
    one, two, shared = (LineMaker(LIM, escape_newlines=escape_newlines) for _ in range(3))
    for _ in range(2):  # cold caches, then warm ones
        expected = _verdicts(one, v1)
        assert _verdicts(two, v2) == expected
        assert _verdicts(shared, v2) == expected  # caches filled by v2 serve v1, and the other way
        assert _verdicts(shared, v1) == expected
    assert sum(expected[1].values()) + len(expected[0]) == len(pts)


@settings(max_examples=100, deadline=None)
@given(pts=st.lists(_points, max_size=30))
def test_the_edge_encoder_gives_the_collector_the_same_as_v1(pts):
    """The edge's path: outbox bodies (`point_json`, which refuses NaN) -> encode_batch_raw."""
    pts = [p for p in pts if all(type(v) is not float or math.isfinite(v) for v in p.fields.values())] * 2
    bodies = [wire.point_json(p) for p in pts]
    v1, v2 = (wire.encode_batch_raw("s", "g", "b", 5, bodies, version=v) for v in (1, 2))
    assert _verdicts(LineMaker(LIM), v2) == _verdicts(LineMaker(LIM), v1)


def _v2(series, rows) -> bytes:
    doc = {"v": 2, "site": "s", "gateway": "g", "batch": "b", "sent_ns": 5, "series": series, "rows": rows}
    return zlib.compress(json.dumps(doc, ensure_ascii=False).encode())


TAGS = {"site": "s", "gateway": "g", "device": "d"}
HEAD = "meter,device=d,gateway=g,site=s"


def test_malformed_series_and_rows_are_counted_and_the_good_rows_around_them_written():
    series = [["meter", TAGS, ["v", "n"]],       # 0 good
              "junk",                             # 1 not a list
              ["meter", TAGS],                    # 2 too short
              ["meter", TAGS, "vn"],              # 3 keys not a list
              ["meter", TAGS, ["v", 1]],          # 4 a key not a string: bad_field, as in v1
              ["meter", TAGS, ["v", "v"]],        # 5 the same key twice
              [7, TAGS, ["v"]],                   # 6 measurement not a string
              ["meter", ["site", "s"], ["v"]],    # 7 tags not an object
              ["evil", TAGS, ["v"]],              # 8 unknown measurement
              ["meter", {**TAGS, "site": "x"}, ["v"]],  # 9 tag mismatch
              ["meter", TAGS, []],                # 10 no fields
              ["meter", TAGS, ["a", "b", "c", "d", "e"]],  # 11 too many fields
              ["meter", TAGS, ["k\n"]],           # 12 control character in a field key
              ["meter", {**TAGS, "building": None}, ["v"]]]  # 13 a null tag
    good = [0, NOW, 1.5, 2]
    rows = [good,
            [1, NOW, 1.0], [2, NOW, 1.0], [3, NOW, 1.0, 2], [4, NOW, 1.0, 2], [5, NOW, 1.0, 2], [6, NOW, 1.0],
            [7, NOW, 1.0], [8, NOW, 1.0], [9, NOW, 1.0], [10, NOW], [11, NOW, 1, 2, 3, 4, 5], [12, NOW, 1],
            [13, NOW, 1.0],
            [0, NOW, 1.5], [0, NOW, 1.5, 2, 3],                  # wrong number of values
            [14, NOW, 1.5, 2], [-1, NOW, 1.5, 2], [99, NOW, 1.5, 2],  # series index out of range
            ["0", NOW, 1.5, 2], [0.0, NOW, 1.5, 2], [True, NOW, 1.5, 2], [None, NOW, 1.5, 2],  # not an int
            "row", None, 5, {"0": 1}, [], [0],                    # rows not lists, or too short
            [0, NOW, None, 2], [0, NOW, 1.5, None],               # null is not a value
            [0, str(NOW), 1.5, 2], [0, float(NOW), 1.5, 2], [0, None, 1.5, 2], [0, True, 1.5, 2],  # bad times
            [0, NOW - 40 * DAY, 1.5, 2], [0, NOW + DAY, 1.5, 2],
            [0, NOW, "nan", 2], [0, NOW, [1], 2], [0, NOW, {"x": 1}, 2], [0, NOW, 1.5, 2**63],
            [0, NOW + 1, 2.5, 3]]
    maker = LineMaker(LIM)
    for _ in range(2):  # cold and warm caches
        v = maker.check_batch(wire.decode_batch_items(_v2(series, rows)), NOW)
        assert v.text_lines == [f"{HEAD} v=1.5,n=2i {NOW}", f'{HEAD} v="nan",n=2i {NOW}',
                                f"{HEAD} v=2.5,n=3i {NOW + 1}"]
        assert v.refused == {"malformed_point": 25, "unknown_measurement": 1, "tag_mismatch": 1, "no_fields": 1,
                             "too_many_fields": 1, "control_character_in_field_key": 1, "bad_tag": 1,
                             "bad_field": 5, "too_old": 1, "in_the_future": 1, "integer_out_of_range": 1}
        assert v.written + v.refused_total == len(rows)
        assert v.newest_ns == NOW + 1


def test_a_series_used_by_no_row_costs_nothing_and_refuses_nothing():
    v = LineMaker(LIM).check_batch(wire.decode_batch_items(_v2(["junk", ["meter", TAGS, ["v"]]], [[1, NOW, 1.0]])), NOW)
    assert v.text_lines == [f"{HEAD} v=1.0 {NOW}"] and not v.refused


def test_nan_and_big_integers_in_v2_rows_are_refused_by_name():
    rows = [[0, NOW, 1.0], [0, NOW + 1, float("nan")], [0, NOW + 2, float("inf")], [0, NOW + 3, 2**64],
            [0, NOW + 4, -(2**63) - 1], [0, NOW + 5, 2.0]]
    v = LineMaker(LIM).check_batch(wire.decode_batch_items(_v2([["meter", TAGS, ["v"]]], rows)), NOW)
    assert v.text_lines == [f"{HEAD} v=1.0 {NOW}", f"{HEAD} v=2.0 {NOW + 5}"]
    assert v.refused == {"nan_or_infinity": 2, "integer_out_of_range": 2}
