"""TLS on a real Mosquitto: the bulk reader over TLS, client certificates, an edge and a collector
talking mqtts:// end to end, and every usual way a TLS connection goes wrong, each named in words
an installer can act on: in the client's last_error (status, logs), in the doctor's probe, and
when the config is loaded."""

from __future__ import annotations

import asyncio
import logging
import shutil
import ssl
import time

import pytest
import typer

from common.broker_config import TlsConfig, tls_section
from common.cli import run_until_signal
from common.mqtt import AsyncMqtt, MqttSetupError, MqttUrl, TlsFiles, probe
from common.points import Point, Priority
from common.yamlconf import ConfigError
from edge import config as edge_config
from edge.agent import Agent
from edge.config import EdgeConfig
from tests.conftest import run_cli, until, wait_for
from tests.servers import Mosquitto
from tests.test_mqtt_client import Inbox, assert_nothing_kept


@pytest.mark.integration
async def test_bulk_reader_over_tls_gets_every_message_once_in_order(tls_broker, pki):
    url, tls = MqttUrl.parse(tls_broker.tls_url), TlsFiles(ca_file=pki.file("ca.crt"))
    sub = AsyncMqtt(url, "sub-tls", persistent=True, manual_ack=True, tls=tls)
    inbox = Inbox(sub)
    take = sub._handler
    sub.on_messages(lambda batch: (take(batch), sub.ack_many(batch)))  # acked as they come: the
    await sub.subscribe("t/#", 1)                                      # broker holds 1000 in flight
    assert await sub.start()
    assert sub._client.bulk and isinstance(sub._client._sock, ssl.SSLSocket)  # the fast path, over TLS
    pub = AsyncMqtt(url, "pub-tls", tls=tls)
    assert await pub.start()
    # Large payloads span many TLS records and many reads; small ones share a record.
    sizes = [i % 5 * 4000 for i in range(2000)] + [700_000, 3, 1_500_000, 0]
    await asyncio.gather(*(pub.publish(f"t/{i}", i.to_bytes(4, "big") + b"x" * n, qos=1)
                           for i, n in enumerate(sizes)))
    msgs = await inbox.wait(len(sizes), timeout=60)
    assert [int.from_bytes(m.payload[:4], "big") for m in msgs] == list(range(len(sizes)))
    assert [len(m.payload) - 4 for m in msgs] == sizes
    await pub.stop()
    await sub.stop()
    # The same session again: what was acked over TLS is gone from the broker.
    await assert_nothing_kept(url, "sub-tls", manual_ack=True, tls=tls)


@pytest.mark.integration
async def test_a_client_certificate_the_broker_trusts_gets_in(tmp_path, pki):
    broker = Mosquitto(tmp_path / "mtls", extra_conf=pki.listener_conf(require_certificate=True)).start()
    try:
        url = MqttUrl.parse(broker.tls_url)
        tls = TlsFiles(pki.file("ca.crt"), pki.file("client.crt"), pki.file("client.key"))
        client = AsyncMqtt(url, "gw-01", tls=tls)
        inbox = Inbox(client)
        await client.subscribe("x", 1)
        assert await client.start(), client.last_error
        await client.publish("x", b"hello", qos=1)
        assert [m.payload for m in await inbox.wait(1)] == [b"hello"]
        await client.stop()
        assert await asyncio.to_thread(probe, url, None, None, tls, 5) is None
    finally:
        broker.stop()


# name: (broker's certificate or None for a plain listener, require a client certificate,
#        URL scheme, the client's TLS files, what the installer must read)
FAILURES = {
    "untrusted broker certificate": ("server", False, "mqtts", {"ca_file": "other.crt"},
                                     "the broker's certificate is not trusted"),
    "certificate for another host": ("named", False, "mqtts", {"ca_file": "ca.crt"},
                                     "not made out to 127.0.0.1"),
    "plain MQTT to a TLS port": ("server", False, "mqtt", None, "if it is a TLS port, use mqtts://"),
    "TLS to a plain port": (None, False, "mqtts", {"ca_file": "ca.crt"}, "if it is not a TLS port, use mqtt://"),
    "no client certificate": ("server", True, "mqtts", {"ca_file": "ca.crt"},
                              "wants a client certificate (TLSV13_ALERT_CERTIFICATE_REQUIRED); set tls.cert_file"),
    "client certificate of another CA": ("server", True, "mqtts",
                                         {"ca_file": "ca.crt", "cert_file": "other.crt", "key_file": "other.key"},
                                         "does not accept this client's certificate"),
}


@pytest.mark.integration
@pytest.mark.parametrize("case", list(FAILURES))
async def test_a_tls_failure_says_what_to_do(case, tmp_path, pki, caplog):
    server, require, scheme, files, says = FAILURES[case]
    conf = pki.listener_conf(server, require) if server else ""
    broker = Mosquitto(tmp_path / "b", extra_conf=conf).start()
    try:
        url = MqttUrl.parse(f"{scheme}://127.0.0.1:{broker.port}")
        tls = TlsFiles(**{k: pki.file(v) for k, v in files.items()}) if files else None
        client = AsyncMqtt(url, "installer", tls=tls)
        attempts = 0
        original = client._client.reconnect

        def counted():
            nonlocal attempts
            attempts += 1
            return original()

        client._client.reconnect = counted  # paho's loop retries through this
        with caplog.at_level(logging.WARNING, logger="common.mqtt"):
            await client.start(wait=0)
            await until(lambda: attempts >= 2, 15, "a retry")
            await asyncio.sleep(0.3)  # the retry's failure is handled
            await client.stop()
        assert not client.connected.is_set()
        assert says in client.last_error, client.last_error
        logged = [r for r in caplog.records if says in r.getMessage()]
        assert len(logged) == 1, [r.getMessage() for r in caplog.records]  # once, not at every retry
        assert says in (await asyncio.to_thread(probe, url, None, None, tls, 5) or "")  # poplar-edge doctor
    finally:
        broker.stop()


def test_tls_files_that_cannot_be_used_fail_with_the_files_named(pki):
    url = MqttUrl.parse("mqtts://127.0.0.1:8883")
    with pytest.raises(MqttSetupError) as err:  # the key is not the certificate's (no config check before)
        AsyncMqtt(url, "x", tls=TlsFiles(pki.file("ca.crt"), pki.file("client.crt"), pki.file("other.key")))
    assert "cert_file " + pki.file("client.crt") in str(err.value) and "KEY_VALUES_MISMATCH" in str(err.value)
    assert probe(url, tls=TlsFiles(ca_file=pki.file("client.key"))).startswith("cannot load the TLS files")


def test_the_run_commands_turn_unusable_tls_files_into_a_message(capsys):
    async def main(stop):
        raise MqttSetupError("cannot load the TLS files for mqtts://h:8883 (key_file /k): PEM lib")

    with pytest.raises(typer.Exit) as exit_:
        run_until_signal(main)
    assert exit_.value.exit_code == 2
    assert "error: cannot load the TLS files for mqtts://h:8883 (key_file /k)" in capsys.readouterr().err


def _edge_yaml(tmp_path, tls: str) -> str:
    path = tmp_path / "edge.yaml"
    path.write_text("site: s1\ngateway: g1\nstate_dir: state\nuplink:\n  url: mqtts://central:8883\n"
                    f"  tls:\n{tls}")
    return str(path)


def test_the_config_checks_the_tls_files_on_load(tmp_path, pki):
    ca, crt, key = pki.file("ca.crt"), pki.file("client.crt"), pki.file("client.key")
    ok = edge_config.load(_edge_yaml(tmp_path, f"    ca_file: {ca}\n    cert_file: {crt}\n    key_file: {key}\n"))
    assert ok.uplink.tls_files() == TlsFiles(ca, crt, key)
    bad = {
        f"    ca_file: {tmp_path}/nope.pem\n": ":7: uplink.tls.ca_file: " f"{tmp_path}/nope.pem does not exist",
        f"    ca_file: {key}\n": "holds no usable CA certificate",
        f"    ca_file: {tmp_path}\n": "is not a file",
        f"    cert_file: {crt}\n": "uplink.tls: cert_file is set but key_file is not",
        f"    cert_file: {crt}\n    key_file: {pki.file('other.key')}\n": "do not make a certificate and its key",
    }
    for tls, says in bad.items():
        with pytest.raises(ConfigError) as err:
            edge_config.load(_edge_yaml(tmp_path, tls))
        assert says in str(err.value) and "edge.yaml" in str(err.value), str(err.value)


def test_init_checks_the_tls_options(pki, tmp_path):
    assert tls_section(None, None, None, "--") is None
    assert tls_section(pki.file("ca.crt"), None, None, "--uplink-") == {"ca_file": pki.file("ca.crt")}
    with pytest.raises(ValueError, match="^--uplink-key-file is set but --uplink-cert-file is not"):
        tls_section(None, None, pki.file("client.key"), "--uplink-")
    r = run_cli("poplar-collector", "init", "--config", str(tmp_path / "c.yaml"), "--broker", "mqtts://h:8883",
                "--influx-url", "http://h:8086", "--database", "d", "--ca-file", str(tmp_path / "missing.pem"),
                check=False)
    assert r.returncode == 2 and "--ca-file: " in r.stderr and "does not exist" in r.stderr, r.stderr
    assert not (tmp_path / "c.yaml").exists()
    assert TlsConfig(ca_file=pki.file("ca.crt")).files().ca_file == pki.file("ca.crt")


@pytest.mark.integration
async def test_edge_to_influxdb_over_mqtts_with_client_certificates(tmp_path, pki, influx, influx_db, spawn):
    """The central broker takes only TLS with client certificates; the edge and the collector
    each have their own, set up with their `init` options."""
    central = Mosquitto(tmp_path / "central", extra_conf=pki.listener_conf(require_certificate=True)).start()
    try:
        coll = tmp_path / "collector.yaml"
        run_cli("poplar-collector", "init", "--config", str(coll), "--broker", central.tls_url,
                "--influx-url", influx.url, "--database", influx_db, "--ca-file", pki.file("ca.crt"),
                "--cert-file", pki.file("client.crt"), "--key-file", pki.file("client.key"))
        run_cli("poplar-collector", "gateways", "add", "gw-tls", "--site", "s-tls", "--config", str(coll))
        proc = spawn("poplar-collector", "run", "--config", str(coll), name="collector")
        wait_for(lambda: "subscribed to" in proc.output(), 15, what="the collector to subscribe")
        edge_yaml = tmp_path / "edge.yaml"
        run_cli("poplar-edge", "init", "--config", str(edge_yaml), "--site", "s-tls", "--gateway", "gw-tls",
                "--state-dir", str(tmp_path / "state"), "--uplink", central.tls_url,
                "--uplink-ca-file", pki.file("ca.crt"), "--uplink-cert-file", pki.file("client.crt"),
                "--uplink-key-file", pki.file("client.key"))
        cfg = edge_config.load(edge_yaml)
        assert isinstance(cfg, EdgeConfig) and cfg.uplink.tls_files().cert_file == pki.file("client.crt")
        agent = Agent(cfg)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        try:
            await until(lambda: agent.outbox._db is not None and agent.uplink.connected, 15, "the uplink over TLS")
            tags = {"site": "s-tls", "gateway": "gw-tls", "device": "5幢电表"}
            await agent.emit([Point("meter", dict(tags), {"energy_kwh": 10.0 + i}, time.time_ns() + i,
                                    Priority.TELEMETRY) for i in range(50)])
            await until(lambda: influx.count("meter", influx_db, "energy_kwh") == 50, 30, "50 rows in InfluxDB")
        finally:
            stop.set()
            await task
        assert proc.stop() == 0, proc.output()[-2000:]
    finally:
        central.stop()
        shutil.rmtree(tmp_path / "central", ignore_errors=True)
