"""What InfluxDB 1.x does with odd input, and what the collector does about it: a lone surrogate
(valid JSON, no UTF-8 form), a field named `time` or holding `\\"`, a partial-write answer whose
quoted field name contains "dropped=", a write past InfluxDB's max-body-size. Each is a counted
refusal of the points concerned, never a lost batch or a batch retried for ever. Found by a
review; each test failed on the code before the fix. Real InfluxDB 1.6.7 and Mosquitto."""

from __future__ import annotations

import asyncio
import json
import time
import zlib

import pytest

from collector.config import Influx1Sink as Influx1Config, Limits
from collector.sinks.influx1 import Influx1Sink
from collector.validate import LineMaker
from common import wire
from common.wire import columnar
from tests.test_collector_service import FakeEdge, _cfg, _serve

TAGS = {"site": "s1", "gateway": "g1", "device": "m1"}


def _payload(doc: dict) -> bytes:
    # The stdlib writes a lone surrogate as the JSON escape "\ud800": valid JSON text (RFC 8259
    # allows any \uXXXX escape), which orjson refuses and the collector's stdlib fallback reads.
    return zlib.compress(json.dumps(doc).encode())


def _items(now: int, bad: dict) -> list:
    return [["meter", TAGS, {"v": 1.0}, now],
            ["meter", bad.get("tags", TAGS), bad.get("fields", {"v": 2.0}), now + 1],
            ["meter", TAGS, {"v": 3.0}, now + 2]]


# -- a lone surrogate: a counted refusal, not a failed batch -----------------------------------

@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("bad", [{"fields": {"note": "\ud800"}}, {"tags": dict(TAGS, building="\udc80")},
                                 {"fields": {"k\ud800": 2.0}}], ids=["string_field", "tag_value", "field_key"])
def test_lone_surrogate_is_a_counted_refusal_and_the_good_points_stay(version, bad):
    now = time.time_ns()
    items = _items(now, bad)
    head = {"v": version, "site": "s1", "gateway": "g1", "batch": "b", "sent_ns": now}
    if version == 1:
        doc = dict(head, points=items)
    else:
        series, rows = columnar(items)
        doc = dict(head, series=series, rows=rows)
    batch = wire.decode_batch_items(_payload(doc))
    v = LineMaker(Limits()).check_batch(batch, now)  # raised UnicodeEncodeError before the fix
    assert len(v.lines) == 2 and sum(v.refused.values()) == 1


@pytest.mark.integration
def test_running_collector_acks_a_batch_holding_a_lone_surrogate(tmp_path, central_broker, influx, influx_db, spawn):
    """End to end: the batch is answered "ok" (2 written, 1 refused). Before the fix the checker
    raised, counted internal_errors and sent no ack at all: the edge resent the batch for ever
    and the two good points never reached InfluxDB."""
    cfg = _cfg(tmp_path, central_broker, influx.url, influx_db)
    _serve(cfg, spawn, ("g1", "s1"))
    now = time.time_ns()

    async def scenario():
        e = FakeEdge(central_broker.url, "s1", "g1")
        await e.start()
        await asyncio.sleep(1.5)
        doc = {"v": 2, "site": "s1", "gateway": "g1", "batch": "sur-1", "sent_ns": now}
        series, rows = columnar(_items(now, {"fields": {"note": "\ud800"}}))
        doc.update(series=series, rows=rows)
        await e.mqtt.publish(wire.up_topic("s1", "g1"), _payload(doc), timeout=10)
        acks = await e.wait_acks(["sur-1"], timeout=10)
        await e.mqtt.stop()
        return acks["sur-1"]

    acks = asyncio.run(scenario())
    assert acks, "no ack: the batch was dropped by an internal error and will be resent forever"
    assert acks[-1].status == "ok" and acks[-1].written == 2 and acks[-1].refused == 1
    assert influx.count("meter", influx_db, "v") == 2


# -- the sink reads InfluxDB's own "dropped=N", the last one in its answer --------------------

@pytest.mark.integration
def test_influx1_sink_counts_what_influxdb_dropped_not_a_number_in_a_field_name(influx, influx_db):
    """InfluxDB quotes the conflicting field's name (unescaped) before its own "dropped=N": a
    field called "dropped=0" made the sink report 0 dropped, so the collector acked "ok" with
    every point counted as written although InfluxDB dropped 3 of 4."""
    now = time.time_ns()
    lm = LineMaker(Limits())
    first = lm.check_items("s1", "g1", [["meter", TAGS, {"dropped=0": 1}, now]], now)  # an integer field
    later = lm.check_items("s1", "g1", [["meter", TAGS, {"v": 1.0}, now + 1]]
                           + [["meter", TAGS, {"dropped=0": 0.5 + i}, now + 2 + i] for i in range(3)], now)
    assert len(first.lines) == 1 and len(later.lines) == 4  # the collector accepts all of them

    async def go():
        sink = Influx1Sink(Influx1Config(url=influx.url, database=influx_db))
        try:
            await sink.write(b"\n".join(first.lines) + b"\n", 1)
            return await sink.write(b"\n".join(later.lines) + b"\n", 4)
        finally:
            await sink.close()

    res = asyncio.run(go())
    assert "dropped=3" in res.detail  # what InfluxDB said
    assert influx.count("meter", influx_db, "v") == 1  # and did: 1 written, 3 dropped
    assert (res.written, res.refused) == (1, 3), res


# -- field keys: InfluxDB 1.x undoes \" in a field key -----------------------------------------

@pytest.mark.integration
def test_field_key_with_backslash_quote_is_refused_or_stored_intact(influx, influx_db):
    """tag_problem (used for field keys) lets a backslash before a double quote through, as for
    tags. In a field key InfluxDB 1.6.7 turns \\" into ": the field `a\\"b` is stored as `a"b`,
    the same field as another device's `a"b` (mangled, and a collision)."""
    now = time.time_ns()
    key = 'a\\"b'
    # InfluxDB's side of it, so the rule below stays needed: the key it stores is not the one sent.
    res = asyncio.run(_write(influx, influx_db, [f'meter,device=m1 {key}=1.5 {now}'.encode()]))
    keys = [r["fieldKey"] for r in influx.rows("SHOW FIELD KEYS FROM meter", influx_db)]
    assert res.refused == 0 and keys == ['a"b']
    v = LineMaker(Limits()).check_items("s1", "g1", [["meter", TAGS, {key: 1.5, "n": 1}, now],
                                                      ["meter", TAGS, {'a"b': 1.5}, now + 1]], now)
    assert dict(v.refused) == {"field_key_unrepresentable": 1} and len(v.lines) == 1


# -- a field named "time" is silently thrown away by InfluxDB ----------------------------------

@pytest.mark.integration
def test_field_named_time_is_refused_or_stored(influx, influx_db):
    """InfluxDB 1.x skips a field called "time" without a word when the point has other fields
    (204, nothing dropped): the collector acks the point as written and the value is lost. (A
    tag called "time" at least comes back as a partial write; a point whose only field is "time"
    too.)"""
    now = time.time_ns()
    res = asyncio.run(_write(influx, influx_db, [f"meter,device=m1 time=42,v=1 {now}".encode()]))
    stored = [r["fieldKey"] for r in influx.rows("SHOW FIELD KEYS FROM meter", influx_db)]
    assert res.refused == 0 and stored == ["v"]  # InfluxDB's side: 204, and `time` is gone
    v = LineMaker(Limits()).check_items("s1", "g1", [["meter", TAGS, {"time": 42.0, "v": 1.0}, now],
                                                      ["meter", dict(TAGS, time="x"), {"v": 1.0}, now],
                                                      ["meter", TAGS, {"v": 1.0}, now]], now)
    assert dict(v.refused) == {"reserved_key": 2} and len(v.lines) == 1


async def _write(influx, db, lines):
    sink = Influx1Sink(Influx1Config(url=influx.url, database=db))
    try:
        return await sink.write(b"\n".join(lines) + b"\n", len(lines))
    finally:
        await sink.close()


# -- a write over InfluxDB's max-body-size is split, not retried for ever ---------------------

@pytest.fixture
def influx_default_body_limit(tmp_path):
    """InfluxDB 1.6.7 with its shipped default [http] max-body-size (25,000,000 bytes); the
    shared fixture sets 0 (no limit), which hides this."""
    from tests.servers import InfluxDB1
    srv = InfluxDB1(tmp_path / "influx-default")
    conf = tmp_path / "influx-default" / "influxdb.conf"
    conf.write_text(conf.read_text().replace("max-body-size = 0", "max-body-size = 25000000"))
    srv.start()
    yield srv
    srv.stop()


@pytest.mark.integration
def test_a_group_larger_than_influxdb_max_body_size_is_written_not_retried_forever(
        tmp_path, central_broker, influx_default_body_limit, spawn):
    """One legal batch (5,000 points, 6 string fields of 1,000 characters: inside every
    collector limit) makes an HTTP body of ~30 MB; InfluxDB answers 413, which the sink treats as
    "InfluxDB down": the edge gets "retry" for ever, and every other batch sharing the group
    with it too. The collector must split the write (or refuse what can never fit)."""
    influx = influx_default_body_limit
    db = "big"
    influx.create_db(db)
    cfg = _cfg(tmp_path, central_broker, influx.url, db)
    _serve(cfg, spawn, ("g1", "s1"))
    now = time.time_ns()
    text = "说明" * 500  # 1,000 characters, 3,000 bytes
    items = [["gate_event", TAGS, {f"s{k}": text for k in range(6)}, now + i] for i in range(5000)]
    v = LineMaker(Limits()).check_items("s1", "g1", items, now)
    assert len(v.lines) == 5000 and sum(map(len, v.lines)) > 25_000_000

    async def scenario():
        e = FakeEdge(central_broker.url, "s1", "g1")
        await e.start()
        await asyncio.sleep(1.5)
        doc = {"v": 1, "site": "s1", "gateway": "g1", "batch": "big-1", "sent_ns": now, "points": items}
        await e.mqtt.publish(wire.up_topic("s1", "g1"), zlib.compress(json.dumps(doc, ensure_ascii=False).encode(), 1), timeout=20)
        acks = await e.wait_acks(["big-1"], timeout=60)
        await e.mqtt.stop()
        return acks["big-1"]

    acks = asyncio.run(scenario())
    assert acks, "no ack at all"
    assert acks[-1].status == "ok", f"{acks[-1].status}: {acks[-1].reason}"
    assert acks[-1].written == 5000 and acks[-1].refused == 0
    assert influx.count("gate_event", db, "s0") == 5000
