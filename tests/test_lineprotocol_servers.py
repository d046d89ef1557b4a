"""Line protocol escaping, verified against the real servers: InfluxDB 1.6.7 (/write) and
VictoriaMetrics (/api/v2/write through influxdb-client). Awkward names arrive intact and inject
nothing; names no server can store unambiguously are refused and counted, never mangled."""

from __future__ import annotations

import asyncio
import json
import math
import time
import urllib.parse
import urllib.request

import pytest

from collector.config import Influx1Sink as Influx1Config, Influx2Sink as Influx2Config, Limits
from collector.sinks.influx1 import Influx1Sink
from collector.sinks.influx2 import Influx2Sink
from collector.validate import LineMaker
from common.lineprotocol import tag_problem, to_line
from common.points import Point
from common.wire import Batch

pytestmark = pytest.mark.integration

NAMES = [
    "a,b=c d x",
    'a,b=c d\\x "q" = 5幢',          # a backslash before an ordinary character is fine
    "5幢1单元电表",
    "it's \"quoted\"",
    "x=y",
    " lead and trail ",
    "C:\\meters\\1",
]
STRINGS = ['q"x\\y\nz', "\\", "end\\", '"', "多行\n文本\r\n", "a,b=c d", ""]
UNREPRESENTABLE = ["end\\", "a\\,b", "a\\\\b", "a\\ b", "a\\=b", "a\nb", "tab\there", "nul\x00"]


def _points(now: int) -> list[Point]:
    pts = []
    for i, name in enumerate(NAMES):
        pts.append(Point("meter", {"site": "s1", "gateway": "g1", "device": name, "building": "5幢, A=1"},
                         {"voltage": 220.5 + i, "note": STRINGS[i % len(STRINGS)], "n": i}, now + i))
    return pts


def _batch(points: list[Point]) -> Batch:
    return Batch("s1", "g1", "b1", points)


def test_tag_problem_rules():
    for name in NAMES:
        assert tag_problem(name) is None, name
    for name in UNREPRESENTABLE:
        assert tag_problem(name) is not None, name
    assert tag_problem("") == "empty"


def test_no_line_can_be_injected():
    for name in NAMES + UNREPRESENTABLE:
        line = to_line(Point("meter", {"site": "s", "gateway": "g", "device": name + "\nevil v=1"},
                             {"f" + name: name + "\nevil,site=x v=1 1"}, 1))
        head, _, _ = line.partition(" ")
        assert "\n" not in head  # newlines survive only inside a quoted string field


def test_awkward_names_and_strings_arrive_intact_in_influxdb1(influx, influx_db):
    now = time.time_ns() - 10**9
    maker = LineMaker(Limits())
    bad = [Point("meter", {"site": "s1", "gateway": "g1", "device": n}, {"voltage": 1.0}, now + 100 + i)
           for i, n in enumerate(UNREPRESENTABLE)]
    good = _points(now)
    verdict = maker.check(_batch(good[:3] + bad + good[3:]), time.time_ns())
    assert verdict.written == len(good)
    assert verdict.refused == {"tag_unrepresentable": 5, "control_character_in_tag": 3}

    sink = Influx1Sink(Influx1Config(url=influx.url, database=influx_db))
    res = asyncio.run(_write_close(sink, "\n".join(verdict.text_lines) + "\n", verdict.written))
    assert (res.written, res.refused) == (len(good), 0)

    rows = influx.rows("SELECT * FROM meter", influx_db)
    assert len(rows) == len(good)
    by_n = {r["n"]: r for r in rows}
    for i, name in enumerate(NAMES):
        r = by_n[i]
        assert r["device"] == name
        assert r["building"] == "5幢, A=1"
        assert r["note"] == STRINGS[i % len(STRINGS)]
        assert r["voltage"] == 220.5 + i
        assert r["site"] == "s1" and r["gateway"] == "g1"
    # nothing injected: one measurement, one series per name, the expected tag keys only
    ms = influx.query("SHOW MEASUREMENTS", influx_db)["results"][0]["series"][0]["values"]
    assert ms == [["meter"]]
    keys = {v[0] for v in influx.query("SHOW TAG KEYS FROM meter", influx_db)["results"][0]["series"][0]["values"]}
    assert keys == {"site", "gateway", "device", "building"}
    fkeys = {v[0] for v in influx.query("SHOW FIELD KEYS FROM meter", influx_db)["results"][0]["series"][0]["values"]}
    assert fkeys == {"voltage", "note", "n"}


async def _write_close(sink, body: str, count: int):
    try:
        return await sink.write(body, count)
    finally:
        await sink.close()


def _vm_export(url: str, match: str) -> list[dict]:
    urllib.request.urlopen(f"{url}/internal/force_flush").read()
    q = urllib.parse.urlencode({"match[]": match})
    with urllib.request.urlopen(f"{url}/api/v1/export?{q}") as r:
        return [json.loads(line) for line in r.read().decode().splitlines() if line.strip()]


def test_awkward_names_arrive_intact_in_victoriametrics_v2_write(victoria):
    now = time.time_ns() - 10**9
    good = _points(now)
    # VictoriaMetrics reads a raw newline as a line end even inside quotes: string_newlines: escape
    good[0].fields["note"] = "x\nevil,site=s1,gateway=g1,device=d v=1 " + str(now)
    cfg = Influx2Config(type="influxdb2", url=victoria.url, org="district", bucket="poplar",
                        token="any-token", string_newlines="escape")
    verdict = LineMaker(Limits(), escape_newlines=True).check(_batch(good), time.time_ns())
    sink = Influx2Sink(cfg)
    res = asyncio.run(_write_close(sink, "\n".join(verdict.text_lines) + "\n", verdict.written))
    assert res.written == len(good)

    def exported():
        return _vm_export(victoria.url, '{__name__="meter_n"}')

    from tests.conftest import wait_for
    series = wait_for(lambda: len(exported()) == len(NAMES) and exported(), timeout=15, what="series in VM")
    devices = {s["metric"]["device"]: s["values"][0] for s in series}
    assert devices == {name: i for i, name in enumerate(NAMES)}
    for s in series:
        # org, bucket and token are accepted and ignored by VictoriaMetrics: no extra labels
        assert set(s["metric"]) == {"__name__", "site", "gateway", "device", "building"}
        assert s["metric"]["building"] == "5幢, A=1"
    names = {s["metric"]["__name__"] for s in _vm_export(victoria.url, '{__name__=~".+"}')}
    assert names == {"meter_voltage", "meter_n", "meter_note"}  # nothing injected


# Floats as the collector writes them (format_float: orjson's shortest text, which spells some
# exponents otherwise than repr: 1e-7, 0.00001): every server must read back the very same float.
FLOATS = [1e-7, 2.5e-5, 1e-5, 0.0001234, 1e16, 1.2345678901234567e19, 1e22, 5e-324, 1.7976931348623157e308,
          -0.0, -3.936145966292681e-08, 220.1, 1000.001, 0.98]


def _float_batch(now: int) -> Batch:
    return _batch([Point("meter", {"site": "s1", "gateway": "g1", "device": f"f{i}"}, {"x": v, "n": i}, now + i)
                   for i, v in enumerate(FLOATS)])


def test_floats_read_back_exact_from_influxdb1(influx, influx_db):
    now = time.time_ns() - 10**9
    verdict = LineMaker(Limits()).check(_float_batch(now), time.time_ns())
    assert "x=1e-7," in verdict.text_lines[0] and "x=0.000025," in verdict.text_lines[1]  # not repr's spelling
    res = asyncio.run(_write_close(Influx1Sink(Influx1Config(url=influx.url, database=influx_db)),
                                   "\n".join(verdict.text_lines) + "\n", verdict.written))
    assert (res.written, res.refused) == (len(FLOATS), 0)
    # float(): InfluxDB's JSON may write a large float without its exponent
    got = {r["n"]: float(r["x"]) for r in influx.rows("SELECT x, n FROM meter", influx_db)}
    assert got == dict(enumerate(FLOATS))


def test_floats_read_back_exact_from_victoriametrics(victoria):
    now = time.time_ns() - 10**9
    verdict = LineMaker(Limits()).check(_float_batch(now), time.time_ns())
    cfg = Influx2Config(type="influxdb2", url=victoria.url, org="district", bucket="poplar", token="t")
    res = asyncio.run(_write_close(Influx2Sink(cfg), "\n".join(verdict.text_lines) + "\n", verdict.written))
    assert res.written == len(FLOATS)
    from tests.conftest import wait_for
    series = wait_for(lambda: len(s := _vm_export(victoria.url, '{__name__="meter_x"}')) == len(FLOATS) and s,
                      timeout=15, what="the floats in VM")
    got = {int(s["metric"]["device"][1:]): s["values"][0] for s in series}
    # VictoriaMetrics keeps about 12 significant digits (and no subnormals): the same value to that
    for i, v in enumerate(FLOATS):
        assert math.isclose(got[i], v, rel_tol=1e-11, abs_tol=1e-300), (v, got[i])
