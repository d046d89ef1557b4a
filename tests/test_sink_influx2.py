"""The influxdb2 sink (influxdb-client, /api/v2/write) against Debian's VictoriaMetrics, alone and
behind a running collector; and what it says when the server is not there."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
import urllib.request

import pytest

from collector.config import Influx2Sink as Influx2Config
from collector.sinks import SinkUnavailable
from collector.sinks.influx2 import Influx2Sink
from common import wire
from common.mqtt import AsyncMqtt, MqttUrl
from common.points import Point
from tests.conftest import run_cli, wait_for
from tests.servers import free_port

pytestmark = pytest.mark.integration


def _query(vm_url: str, q: str) -> list:
    urllib.request.urlopen(f"{vm_url}/internal/force_flush").read()
    with urllib.request.urlopen(f"{vm_url}/api/v1/query?" + urllib.parse.urlencode({"query": q})) as r:
        return json.loads(r.read())["data"]["result"]


def test_unreachable_server_is_sink_unavailable():
    cfg = Influx2Config(type="influxdb2", url=f"http://127.0.0.1:{free_port()}", org="o", bucket="b", token="t",
                        timeout_s=2)

    async def go():
        s = Influx2Sink(cfg)
        try:
            assert await s.ping() is False
            with pytest.raises(SinkUnavailable, match="unreachable"):
                await s.write("meter,site=s v=1 1\n", 1)
        finally:
            await s.close()

    asyncio.run(go())


def test_collector_writes_through_v2_api_into_victoriametrics(tmp_path, central_broker, victoria, spawn):
    cfg = str(tmp_path / "c.yaml")
    run_cli("poplar-collector", "init", "--config", cfg, "--broker", central_broker.url, "--sink", "influxdb2",
            "--influx-url", victoria.url, "--org", "district", "--bucket", "poplar", "--token", "secret-token")
    assert "type: influxdb2" in open(cfg).read() and "bucket: poplar" in open(cfg).read()
    run_cli("poplar-collector", "gateways", "add", "gw1", "--site", "sunny", "--config", cfg)
    spawn("poplar-collector", "run", "--config", cfg)
    now = time.time_ns() - 5 * 10**9

    async def send():
        acks = []
        mq = AsyncMqtt(MqttUrl.parse(central_broker.url), "fake-gw1")
        mq.on_messages(lambda ms: acks.extend(wire.decode_ack(m.payload) for m in ms))
        await mq.start()
        await mq.subscribe(wire.ack_topic("sunny", "gw1"))
        await asyncio.sleep(1.5)
        pts = [Point("meter", {"site": "sunny", "gateway": "gw1", "device": f"5幢 电表,{i}"},
                     {"voltage": 220.0 + i, "energy_import": 10.5 * i}, now + i * 10**6) for i in range(20)]
        await mq.publish(wire.up_topic("sunny", "gw1"),
                         wire.encode_batch(wire.Batch("sunny", "gw1", "b1", pts, time.time_ns())), timeout=5)
        deadline = time.monotonic() + 15
        while not acks and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await mq.stop()
        return acks

    acks = asyncio.run(send())
    assert [(a.status, a.written) for a in acks] == [("ok", 20)]
    res = wait_for(lambda: _query(victoria.url, 'meter_voltage{site="sunny"}'), timeout=15, what="points in VM")
    assert len(res) == 20
    by_dev = {r["metric"]["device"]: float(r["value"][1]) for r in res}
    assert by_dev["5幢 电表,7"] == 227.0
    assert all(set(r["metric"]) == {"__name__", "site", "gateway", "device"} for r in res)  # org/bucket ignored
