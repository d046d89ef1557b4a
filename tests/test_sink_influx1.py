"""The influxdb1 sink (HTTP /write, written from a worker thread) against Debian's InfluxDB 1.x:
plain and gzip bodies, a body bigger than a socket buffer, partial writes, a missing database and
an absent server."""

from __future__ import annotations

import asyncio
import time

import pytest

from collector.config import Influx1Sink as Influx1Config
from collector.sinks import SinkUnavailable
from collector.sinks.influx1 import Influx1Sink
from tests.servers import free_port

pytestmark = pytest.mark.integration


def _lines(n: int, t0: int, device: str = "d") -> str:
    return "".join(f"meter,device={device},gateway=g,site=s v={i}.5,n={i}i {t0 + i}\n" for i in range(n))


@pytest.mark.parametrize("use_gzip", [False, True])
def test_writes_arrive_plain_and_gzipped(influx, influx_db, use_gzip):
    cfg = Influx1Config(url=influx.url, database=influx_db, gzip=use_gzip)
    t0 = time.time_ns() - 10**12

    async def go():
        s = Influx1Sink(cfg)
        try:
            assert await s.ping()
            # 30,000 lines (~1.7 MB): more than one socket buffer, sent while the loop stays free
            res = await s.write(_lines(30_000, t0), 30_000)
            assert (res.written, res.refused) == (30_000, 0)
            res = await s.write(_lines(10, t0, device="e"), 10)  # same kept-alive connection
            assert res.written == 10
        finally:
            await s.close()

    asyncio.run(go())
    assert influx.count("meter", influx_db, "v") == 30_010
    assert influx.count("meter", influx_db, "n", where="WHERE device='e'") == 10


def test_partial_write_is_counted_not_retried(influx, influx_db):
    cfg = Influx1Config(url=influx.url, database=influx_db)
    t0 = time.time_ns() - 10**12

    async def go():
        s = Influx1Sink(cfg)
        try:
            assert (await s.write(f"meter,device=x,gateway=g,site=s v=1.5 {t0}\n", 1)).written == 1
            # v is a float in this series now: an integer v is a type conflict InfluxDB drops
            body = f"meter,device=x,gateway=g,site=s v=2i {t0 + 1}\nmeter,device=x,gateway=g,site=s v=2.5 {t0 + 2}\n"
            return await s.write(body, 2)
        finally:
            await s.close()

    res = asyncio.run(go())
    assert (res.written, res.refused) == (1, 1) and "partial write" in res.detail
    assert influx.count("meter", influx_db, "v") == 2


def test_missing_database_and_absent_server_are_sink_unavailable(influx):
    async def go(cfg, match):
        s = Influx1Sink(cfg)
        try:
            with pytest.raises(SinkUnavailable, match=match):
                await s.write("meter,device=x,gateway=g,site=s v=1.5 1\n", 1)
        finally:
            await s.close()

    asyncio.run(go(Influx1Config(url=influx.url, database="no_such_db_here"), "init-db"))
    asyncio.run(go(Influx1Config(url=f"http://127.0.0.1:{free_port()}", database="x", timeout_s=2), "unreachable"))


def test_writes_handed_over_together_go_out_one_after_another(influx, influx_db):
    """The collector keeps two writes in flight; the sink sends the second the moment the first is
    answered, never both at once (InfluxDB 1.x ingests no faster that way on a shared host)."""
    cfg = Influx1Config(url=influx.url, database=influx_db)
    t0 = time.time_ns() - 10**12

    async def go():
        s = Influx1Sink(cfg)
        try:
            await s.write(_lines(10, t0, device="warm"), 10)  # the database and the connection exist
            start = time.monotonic()
            a, b = await asyncio.gather(s.write(_lines(20_000, t0, device="a"), 20_000),
                                        s.write(_lines(20_000, t0, device="b").encode(), 20_000))
            return a, b, time.monotonic() - start
        finally:
            await s.close()

    a, b, wall = asyncio.run(go())
    assert (a.written, b.written) == (20_000, 20_000)
    assert a.seconds > 0 and b.seconds > 0
    assert a.seconds + b.seconds <= wall  # had they overlapped, their times would add up to more
    assert influx.count("meter", influx_db, "v", where="WHERE device='b'") == 20_000
