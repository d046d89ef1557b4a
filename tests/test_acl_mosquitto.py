"""The shipped Mosquitto ACL (configs/mosquitto/poplar.acl) on a real Mosquitto with a password
file made by mosquitto_passwd: each gateway is confined to its own topics."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import uuid

import pytest

from common import wire
from common.mqtt import AsyncMqtt, MqttUrl
from tests.conftest import REPO
from tests.servers import Mosquitto

pytestmark = pytest.mark.integration

USERS = {"poplar-collector": "c-secret", "gw-01": "secret-1", "gw-02": "secret-2"}


@pytest.fixture
def acl_broker(tmp_path):
    passwd = tmp_path / "poplar.passwd"
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    for i, (user, pw) in enumerate(USERS.items()):
        subprocess.run([tool, *(["-c"] if i == 0 else []), "-b", str(passwd), user, pw], check=True)
    acl = REPO / "configs" / "mosquitto" / "poplar.acl"
    srv = Mosquitto(tmp_path / "acl-broker", name="aclbroker",
                    extra_conf=f"allow_anonymous false\npassword_file {passwd}\nacl_file {acl}\n"
                    # as root, mosquitto would drop to user mosquitto, who cannot read the temp folder
                    + ("user root\n" if os.geteuid() == 0 else "")).start()
    yield srv
    srv.stop()


def _client(srv, user, pw):
    return AsyncMqtt(MqttUrl.parse(srv.url), f"{user}-{uuid.uuid4().hex[:6]}", username=user, password=pw)


async def _collect(client, topic, into: list):
    client.on_messages(lambda msgs: into.extend((m.topic, m.payload) for m in msgs))
    await client.subscribe(topic)


def test_gateways_are_confined_to_their_own_topics(acl_broker):
    async def scenario():
        coll = _client(acl_broker, "poplar-collector", USERS["poplar-collector"])
        gw1 = _client(acl_broker, "gw-01", USERS["gw-01"])
        gw2 = _client(acl_broker, "gw-02", USERS["gw-02"])
        for c in (coll, gw1, gw2):
            assert await c.start(), c.last_error
        ups, gw1_acks, gw2_acks = [], [], []
        await _collect(coll, f"$share/poplar-collectors/{wire.UP_SUBSCRIPTION}", ups)
        await _collect(gw1, "poplar/v1/+/+/ack", gw1_acks)        # tries to read everyone's acks
        await _collect(gw2, wire.ack_topic("sunny", "gw-02"), gw2_acks)
        await asyncio.sleep(0.3)
        await gw1.publish(wire.up_topic("sunny", "gw-01"), b"own", timeout=5)
        await gw1.publish(wire.up_topic("sunny", "gw-02"), b"forged", timeout=5)  # another gateway's topic
        await gw1.publish(wire.state_topic("sunny", "gw-01"), b"online", timeout=5)
        await gw1.publish(wire.ack_topic("sunny", "gw-02"), b"fake ack", timeout=5)  # may not write acks
        await coll.publish(wire.ack_topic("sunny", "gw-01"), b"ack-1", timeout=5)
        await coll.publish(wire.ack_topic("sunny", "gw-02"), b"ack-2", timeout=5)
        await asyncio.sleep(1.0)
        bad = _client(acl_broker, "gw-01", "wrong")
        bad_ok = await bad.start(wait=2)
        err = bad.last_error
        await bad.stop()
        for c in (coll, gw1, gw2):
            await c.stop()
        return ups, gw1_acks, gw2_acks, bad_ok, err

    ups, gw1_acks, gw2_acks, bad_ok, err = asyncio.run(scenario())
    assert ups == [(wire.up_topic("sunny", "gw-01"), b"own")]   # the forged batch never reached a collector
    assert gw1_acks == [(wire.ack_topic("sunny", "gw-01"), b"ack-1")]  # not gw-02's ack
    assert gw2_acks == [(wire.ack_topic("sunny", "gw-02"), b"ack-2")]  # and not gw-01's fake one
    assert not bad_ok, err  # a wrong password is refused ("Not authorized")
