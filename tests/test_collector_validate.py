"""Validation limits and authorisation, as pure functions (no servers)."""

from __future__ import annotations

import math
import time

from collector.config import Limits
from collector.validate import LineMaker, authorise, check_point
from common.points import Point
from common.wire import Batch

NOW = time.time_ns()
LIM = Limits(max_tags=5, max_fields=3, max_string_len=32)


def _p(measurement="meter", tags=None, fields=None, ts=NOW):
    t = {"site": "s", "gateway": "g", "device": "d"}
    t.update(tags or {})
    return Point(measurement, t, fields if fields is not None else {"v": 1.0}, ts)


def test_authorise():
    b = Batch("s", "g", "b1", [])
    assert authorise(b, "s", "g", "s") is None
    assert "not authorised" in authorise(b, "s", "g", None)
    assert "came on the topic" in authorise(b, "s", "other", "s")
    assert "came on the topic" in authorise(Batch("x", "g", "b", []), "s", "g", "s")
    assert "belongs to site 'elsewhere'" in authorise(b, "s", "g", "elsewhere")


def test_each_limit_refuses_one_point_with_its_reason():
    cases = {
        "unknown_measurement": _p("evil"),
        "tag_mismatch": _p(tags={"site": "x"}),
        "missing_device_tag": _p(tags={"device": ""}),
        "too_many_tags": _p(tags={"a": "1", "b": "2", "c": "3"}),
        "string_too_long": _p(tags={"device": "x" * 33}),
        "no_fields": _p(fields={}),
        "too_many_fields": _p(fields={"a": 1, "b": 2, "c": 3, "d": 4}),
        "nan_or_infinity": _p(fields={"v": math.nan}),
        "integer_out_of_range": _p(fields={"v": 2**64}),
        "bad_field": _p(fields={"v": [1, 2]}),
        "bad_tag": _p(tags={"building": 5}),
        "too_old": _p(ts=NOW - 40 * 86400 * 10**9),
        "in_the_future": _p(ts=NOW + 3600 * 10**9),
        "control_character_in_tag": _p(tags={"device": "a\nb"}),
        "control_character_in_field_key": _p(fields={"a\nb": 1}),
        "tag_unrepresentable": _p(tags={"device": "end\\"}),
    }
    for reason, p in cases.items():
        assert check_point(p, "s", "g", LIM, NOW) == reason, reason
    assert check_point(_p(fields={"v": -math.inf}), "s", "g", LIM, NOW) == "nan_or_infinity"
    assert check_point(_p(fields={"s": "y" * 33}), "s", "g", LIM, NOW) == "string_too_long"
    assert check_point(_p(tags={"building": ["x"]}), "s", "g", LIM, NOW) == "bad_tag"


def test_good_points_around_bad_ones_are_kept_and_cached_heads_stay_correct():
    maker = LineMaker(LIM)
    pts = [_p(fields={"v": 1.5, "n": 2, "ok": True}), _p(fields={"v": math.nan}), _p(fields={"s": 'a"b\\c'}, ts=NOW + 1),
           _p("evil"), _p(tags={"device": "5幢 A,B=C"}, ts=NOW + 2)]
    for _ in range(2):  # the second pass runs on the caches
        v = maker.check(Batch("s", "g", "b", pts, 0, bad_items=2), NOW)
        assert v.text_lines == [f"meter,device=d,gateway=g,site=s v=1.5,n=2i,ok=true {NOW}",
                           f'meter,device=d,gateway=g,site=s s="a\\"b\\\\c" {NOW + 1}',
                           f"meter,device=5幢\\ A\\,B\\=C,gateway=g,site=s v=1.0 {NOW + 2}"]
        assert v.refused == {"nan_or_infinity": 1, "unknown_measurement": 1, "malformed_point": 2}
        assert v.newest_ns == NOW + 2
    # the same tags under another batch's gateway are checked again, not taken from the cache
    v = maker.check(Batch("s", "other", "b", pts[:1]), NOW)
    assert v.refused == {"tag_mismatch": 1}


def test_escape_newlines_mode():
    v = LineMaker(LIM, escape_newlines=True).check(Batch("s", "g", "b", [_p(fields={"s": 'x\ny"\\'})]), NOW)
    assert v.text_lines == [f'meter,device=d,gateway=g,site=s s="x\\ny\\"\\\\" {NOW}']
    assert "\n" not in v.text_lines[0]


# -- the fast path (cached field-set templates) formats and refuses exactly as the full checks --

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


class _FullChecksOnly(LineMaker):
    def _template(self, fields):  # every point through the full checks
        return None


_numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e308, -1e308, 2**63 - 1, -2**63]),
                     st.integers(min_value=-2**64, max_value=2**64), st.booleans(), st.text(max_size=40))
_keys = st.sampled_from(["v", "a{b}", "{0}", "%s", "%%", "c d", "x,y=z", "长", "", "k\n", "q\\"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.dictionaries(_keys, _numbers, max_size=4), st.sampled_from(["d", "e", "f g", "{x}", "a%sb%", "%%"])), max_size=30))
def test_fast_path_equals_full_checks(rows):
    items = [["meter", {"site": "s", "gateway": "g", "device": dev}, fields, NOW + i] for i, (fields, dev) in enumerate(rows)]
    fast, full = LineMaker(LIM), _FullChecksOnly(LIM)
    for _ in range(2):  # the second pass runs on warm caches
        a, b = fast.check_items("s", "g", items, NOW), full.check_items("s", "g", items, NOW)
        assert (a.lines, a.refused, a.newest_ns) == (b.lines, b.refused, b.newest_ns)


def test_fast_path_edge_cases():
    maker = LineMaker(LIM)
    tags = {"site": "s", "gateway": "g", "device": "5%s{0}"}  # format characters in names stay literal
    items = [["meter", tags, {"a{b}%d": 1.5, "{0}": 2}, NOW],
             ["meter", tags, {"a{b}%d": 1e308, "{0}": 1}, NOW],    # fine
             ["meter", tags, {"a{b}%d": 1e308, "x": 1e308}, NOW],  # finite, but the sum overflows
             ["meter", tags, {"a{b}%d": 1.0, "{0}": 2**63}, NOW],  # integer out of range
             ["meter", tags, {"a{b}%d": math.inf, "{0}": 1}, NOW],
             ["meter", tags, {"a{b}%d": 1.0, "{0}": True}, NOW],   # a bool is not an int here
             ["meter", tags, {"a{b}%d": 1.0, "{0}": 1}, NOW - 40 * 86400 * 10**9]]
    head = "meter,device=5%s{0},gateway=g,site=s"
    for _ in range(3):  # cold, then warm caches
        v = maker.check_items("s", "g", items, NOW)
        assert v.text_lines == [f"{head} a{{b}}%d=1.5,{{0}}=2i {NOW}", f"{head} a{{b}}%d=1e+308,{{0}}=1i {NOW}",
                           f"{head} a{{b}}%d=1e+308,x=1e+308 {NOW}", f"{head} a{{b}}%d=1.0,{{0}}=true {NOW}"]
        assert v.refused == {"integer_out_of_range": 1, "nan_or_infinity": 1, "too_old": 1}


def test_malformed_items_are_judged_by_the_point_model():
    good = ["meter", {"site": "s", "gateway": "g", "device": "d"}, {"v": 1.0}, NOW]
    items = [good, good[:3], "junk", ["meter", {}, {}, "x"], ["meter", {}, {}, True], [1, {}, {"a": 1}, NOW], None, good]
    v = LineMaker(LIM).check_items("s", "g", items, NOW)
    assert v.text_lines == [f"meter,device=d,gateway=g,site=s v=1.0 {NOW}"] * 2
    assert v.refused == {"malformed_point": 6}
