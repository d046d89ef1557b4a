"""common/mqtt.py on a real Mosquitto: the bulk read path delivers what paho would, acks only
what was acked, on the connection it came from, and paho's own path still works beside it."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import uuid

import pytest

from common.mqtt import AsyncMqtt, Message, MqttUrl
from tests.servers import free_port

pytestmark = pytest.mark.integration


def _url(broker) -> MqttUrl:
    return MqttUrl.parse(broker.url)


class Inbox:
    """Collects what a client receives; `wait(n)` until n messages are in."""

    def __init__(self, client: AsyncMqtt) -> None:
        self.msgs: list[Message] = []
        self._more = asyncio.Event()
        client.on_messages(self._on)

    def _on(self, msgs: list[Message]) -> None:
        self.msgs += msgs
        self._more.set()

    async def wait(self, n: int, timeout: float = 20) -> list[Message]:
        async with asyncio.timeout(timeout):
            while len(self.msgs) < n:
                self._more.clear()
                await self._more.wait()
        return self.msgs

    async def quiet(self, seconds: float = 1.0) -> list[Message]:
        await asyncio.sleep(seconds)
        return self.msgs


async def resume_session(url: MqttUrl, client_id: str, **client_kw) -> tuple[AsyncMqtt, Inbox]:
    """Another connection of a persistent session: what the broker kept for it arrives."""
    client = AsyncMqtt(url, client_id, persistent=True, **client_kw)
    inbox = Inbox(client)
    assert await client.start()
    return client, inbox


async def assert_nothing_kept(url: MqttUrl, client_id: str, **client_kw) -> None:
    """The broker holds nothing more for this session: every message was acknowledged."""
    client, inbox = await resume_session(url, client_id, **client_kw)
    assert await inbox.quiet(1.0) == []
    await client.stop()


async def _publisher(broker) -> AsyncMqtt:
    pub = AsyncMqtt(_url(broker), f"pub-{uuid.uuid4().hex[:6]}")
    assert await pub.start()
    return pub


class Connections:
    """Counts a client's (re)connections, so a test can wait for the next one."""

    def __init__(self, client: AsyncMqtt) -> None:
        self.client, self.ups, self.downs = client, 0, 0
        self._changed = asyncio.Event()
        client.on_connection_change = self._on

    def _on(self, up: bool) -> None:
        self.ups += up
        self.downs += not up
        self._changed.set()

    def drop(self) -> None:
        self.client._client._sock.shutdown(socket.SHUT_RDWR)

    async def drop_and_wait(self, timeout: float = 15) -> None:
        """Cut the TCP connection under paho, as a flaky network does, and wait until paho has
        reconnected by itself."""
        before = self.ups
        self.drop()
        async with asyncio.timeout(timeout):
            while self.ups == before:
                self._changed.clear()
                await self._changed.wait()


def test_the_bulk_read_path_is_on_with_the_pinned_paho(mosquitto):
    # If a paho upgrade removed what it relies on, the client would fall back to paho's slow
    # path silently; this says so instead.
    assert AsyncMqtt(_url(mosquitto), "x")._client.bulk


@pytest.mark.parametrize("bulk", [True, False], ids=["bulk", "paho-path"])
def test_every_size_and_qos_arrives_intact_and_in_order(mosquitto, bulk):
    # 0 to 2 MB: every width of MQTT's remaining length, and packets larger than one read
    sizes = [0, 1, 120, 127, 128, 16_380, 16_384, 70_000, 2_000_000]

    async def scenario():
        sub = AsyncMqtt(_url(mosquitto), "sub")
        sub._client.bulk = bulk
        inbox = Inbox(sub)
        await sub.subscribe("5幢/闸机/#", qos=1)
        assert await sub.start()
        pub = await _publisher(mosquitto)
        sent = []
        for i, size in enumerate(sizes * 2):
            qos = i % 2
            payload = bytes([i % 251]) * size
            sent.append((f"5幢/闸机/{i}", payload, qos))
            await pub.publish(f"5幢/闸机/{i}", payload, qos=qos)
        got = await inbox.wait(len(sent))
        assert [(m.topic, m.payload, m.qos) for m in got] == sent
        await pub.stop()
        await sub.stop()

    asyncio.run(scenario())


def test_retained_flag_and_auto_ack_without_manual_ack(mosquitto):
    async def scenario():
        pub = await _publisher(mosquitto)
        await pub.publish("state/gw-01", b'{"state":"online"}', qos=1, retain=True)
        sub = AsyncMqtt(_url(mosquitto), "sub-auto", persistent=True)  # paho acks by itself
        inbox = Inbox(sub)
        await sub.subscribe("state/#", qos=1)
        await sub.subscribe("live/#", qos=1)
        assert await sub.start()
        (m,) = await inbox.wait(1)
        assert m.retain and m.payload == b'{"state":"online"}'
        for i in range(50):
            await pub.publish(f"live/{i}", b"x", qos=1)
        await inbox.wait(51)
        await sub.stop()
        # Acked automatically: a new session of the same client gets nothing again but the retained state.
        await assert_nothing_kept(_url(mosquitto), "sub-auto")
        await pub.stop()

    asyncio.run(scenario())


def test_only_acknowledged_messages_are_not_delivered_again(mosquitto):
    async def scenario():
        sub = AsyncMqtt(_url(mosquitto), "edge", persistent=True, manual_ack=True)
        inbox = Inbox(sub)
        await sub.subscribe("gate/#", qos=1)
        assert await sub.start()
        pub = await _publisher(mosquitto)
        for i in range(300):
            pub.publish_nowait(f"gate/{i}", str(i).encode(), qos=1)
        got = await inbox.wait(300)
        sub.ack_many([m for m in got if int(m.payload) % 3 == 0])  # one write for these hundred
        sub.ack(got[1])  # and one by one
        await asyncio.sleep(0.5)
        await sub.stop()

        back, inbox2 = await resume_session(_url(mosquitto), "edge", manual_ack=True)
        expected = {i for i in range(300) if i % 3 and i != 1}
        again = await inbox2.wait(len(expected))
        assert {int(m.payload) for m in again} == expected
        assert all(m.dup or m.qos == 1 for m in again)
        back.ack_many(again)
        await asyncio.sleep(0.5)
        await back.stop()
        await assert_nothing_kept(_url(mosquitto), "edge", manual_ack=True)
        await pub.stop()

    asyncio.run(scenario())


def test_an_ack_from_an_earlier_connection_is_never_sent_on_a_later_one(mosquitto):
    # After a reconnect the broker delivers an unacked message again; the packet id of the first
    # delivery may by then name another message, so its ack must not go out on the new connection.
    async def scenario():
        sub = AsyncMqtt(_url(mosquitto), "edge", persistent=True, manual_ack=True)
        inbox = Inbox(sub)
        link = Connections(sub)
        await sub.subscribe("gate/#", qos=1)
        assert await sub.start()
        pub = await _publisher(mosquitto)
        await pub.publish("gate/1", b"open", qos=1)
        (first,) = await inbox.wait(1)
        await link.drop_and_wait()
        second = (await inbox.wait(2))[1]
        assert second.payload == b"open" and second.conn != first.conn
        sub.ack(first)  # from the dead connection: not sent
        await asyncio.sleep(0.5)  # (were it sent, the broker would have it by now)
        await link.drop_and_wait()
        third = (await inbox.wait(3))[2]  # so the broker still has it unacked
        assert third.payload == b"open"
        sub.ack(third)
        await asyncio.sleep(0.5)
        await link.drop_and_wait()
        assert len(await inbox.quiet(1.0)) == 3  # acked on its own connection: done
        await sub.stop()
        await pub.stop()

    asyncio.run(scenario())


def test_qos2_with_manual_ack_is_taken_at_qos1_and_delivered_again_until_acked(mosquitto):
    # paho answers a QoS 2 PUBLISH with PUBREC at once; the broker would then forget the message
    # before the app had it safe. So manual-ack subscriptions are QoS 1 at most: QoS 2 publishes
    # arrive as QoS 1 and come again, after a restart, until acked.
    async def scenario():
        sub = AsyncMqtt(_url(mosquitto), "edge2", persistent=True, manual_ack=True)
        inbox = Inbox(sub)
        await sub.subscribe("lift/#", qos=2)
        assert await sub.start()
        pub = await _publisher(mosquitto)
        for i in range(5):
            await pub.publish(f"lift/{i}", f"floor {i}".encode(), qos=2)
            await pub.publish(f"lift/{i}/q1", b"status", qos=1)
        got = await inbox.wait(10)
        assert {m.qos for m in got} == {1}
        await sub.stop()  # nothing acked: the app stopped before its commit
        back, inbox2 = await resume_session(_url(mosquitto), "edge2", manual_ack=True)
        again = await inbox2.wait(10)
        assert sorted(m.payload for m in again) == sorted(m.payload for m in got)
        back.ack_many(again)
        await asyncio.sleep(0.5)
        await back.stop()
        await assert_nothing_kept(_url(mosquitto), "edge2", manual_ack=True)
        await pub.stop()

    asyncio.run(scenario())


def test_qos2_without_manual_ack_goes_through_paho(mosquitto):
    async def scenario():
        sub = AsyncMqtt(_url(mosquitto), "plain2")
        inbox = Inbox(sub)
        await sub.subscribe("lift/#", qos=2)
        assert await sub.start()
        pub = await _publisher(mosquitto)
        for i in range(5):
            await pub.publish(f"lift/{i}", f"floor {i}".encode(), qos=2)
        got = await inbox.wait(5)
        assert [(m.qos, m.payload) for m in got] == [(2, f"floor {i}".encode()) for i in range(5)]
        await sub.stop()
        await pub.stop()

    asyncio.run(scenario())


def test_a_qos0_publish_while_disconnected_fails_at_once(mosquitto):
    # paho queues QoS 1 while disconnected but drops QoS 0 without a word; waiting for it would
    # hang for ever.
    async def scenario():
        client = AsyncMqtt(MqttUrl("127.0.0.1", free_port()), "nobody")  # nothing listens
        assert not await client.start(wait=0.5)
        fut = client.publish_nowait("x/y", b"z", qos=0)
        assert fut.done() and isinstance(fut.exception(), ConnectionError)
        queued = client.publish_nowait("x/y", b"z", qos=1)
        assert not queued.done()  # QoS 1 waits for the connection
        await client.stop()

    asyncio.run(scenario())


async def _gate_stream(broker, client_id: str, n: int, **client_kw):
    """A manual-ack subscriber to gate/# and a publisher that has sent it n QoS 1 messages."""
    sub = AsyncMqtt(_url(broker), client_id, persistent=True, manual_ack=True, **client_kw)
    inbox, link = Inbox(sub), Connections(sub)
    await sub.subscribe("gate/#", qos=1)
    assert await sub.start()
    pub = await _publisher(broker)
    for i in range(n):
        await pub.publish(f"gate/{i}", str(i).encode(), qos=1)
    return sub, inbox, link, pub


def test_keep_alive_notices_a_hung_broker(mosquitto):
    # The broker hangs (SIGSTOP: no PINGRESP, no FIN, as a dead host or a cut 4G link): paho's
    # keep-alive, through the bulk reader, notices within about 1.5 keep-alives.
    async def scenario():
        sub, inbox, link, pub = await _gate_stream(mosquitto, "edge-hung", 30, keepalive=1)
        await inbox.wait(30)
        os.kill(mosquitto.proc.pid, signal.SIGSTOP)
        try:
            for _ in range(80):  # 8 s: eight keep-alive periods
                if link.downs:
                    break
                await asyncio.sleep(0.1)
        finally:
            os.kill(mosquitto.proc.pid, signal.SIGCONT)
        noticed = link.downs
        await pub.stop()
        await sub.stop()
        assert noticed, "the hung broker was never noticed"

    asyncio.run(scenario())


def test_a_read_pause_does_not_drop_the_connection_by_keep_alive(mosquitto):
    # While reading is paused (the outbox cannot commit: maybe minutes), paho's PINGRESP stays
    # unread behind the backlog; the connection must stay up all the same.
    async def scenario():
        sub, inbox, link, pub = await _gate_stream(mosquitto, "edge-ka", 30, max_unacked=10, keepalive=1)
        got = await inbox.wait(10)
        assert sub.reading_paused
        await asyncio.sleep(5)  # five keep-alive periods, paused
        downs, gen = link.downs, sub._client.generation
        sub.ack_many(list(got))
        await inbox.wait(20)  # the outbox is back: the rest flows
        await pub.stop()
        await sub.stop()
        assert downs == 0 and gen == 1, f"{downs} disconnects, {gen} connections while paused"

    asyncio.run(scenario())


def test_reading_resumes_after_a_reconnect_during_a_pause(mosquitto):
    # Paused, the connection drops; once the app acks what it holds (of the dead connection),
    # reading resumes, the CONNACK is read and the backlog flows; acked means gone.
    async def scenario():
        sub, inbox, link, pub = await _gate_stream(mosquitto, "edge-pr", 100, max_unacked=10)
        await inbox.wait(10)
        assert sub.reading_paused
        link.drop()
        await asyncio.sleep(2.5)  # paho reconnects; its CONNACK waits behind the pause
        acked = 0
        async with asyncio.timeout(30):
            while True:
                todo = inbox.msgs[acked:]
                acked = len(inbox.msgs)
                sub.ack_many(todo)
                if len({m.payload for m in inbox.msgs}) == 100 and not sub._client._out_packet:
                    break
                await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        await sub.stop()
        await assert_nothing_kept(_url(mosquitto), "edge-pr", manual_ack=True)
        await pub.stop()

    asyncio.run(scenario())


@pytest.mark.parametrize("size", [4 * 1024 * 1024 + 3, 9_000_000, 30_000_000])
def test_packets_larger_than_one_read_cap(mosquitto, size):
    # One read takes at most 4 MB (16 x 256 KB); bigger packets are put together over many reads.
    async def scenario():
        sub = AsyncMqtt(_url(mosquitto), "big", manual_ack=True, persistent=True, max_unacked=2)
        inbox = Inbox(sub)
        await sub.subscribe("big/#", qos=1)
        assert await sub.start()
        pub = await _publisher(mosquitto)
        payloads = [bytes([i]) * (size + i) for i in range(3)]
        for i, p in enumerate(payloads):
            pub.publish_nowait(f"big/{i}", p, qos=1)
            pub.publish_nowait(f"big/s{i}", b"small", qos=1)
        got: list[Message] = []
        async with asyncio.timeout(60):
            while len(got) < 6:
                await inbox.wait(len(got) + 1)
                new = inbox.msgs[len(got):]
                got += new
                sub.ack_many(new)
        assert [m.payload for m in got] == [x for p in payloads for x in (p, b"small")]
        await pub.stop()
        await sub.stop()

    asyncio.run(scenario())


def test_subscribing_while_a_stream_flows(mosquitto):
    # SUBACKs arrive between PUBLISH packets in the same read: paho's handler must still get them.
    async def scenario():
        sub = AsyncMqtt(_url(mosquitto), "sub-late")
        inbox = Inbox(sub)
        await sub.subscribe("a/#", qos=1)
        assert await sub.start()
        pub = await _publisher(mosquitto)
        flood = [pub.publish_nowait(f"a/{i}", b"x" * 100, qos=1) for i in range(3000)]
        for k in range(5):
            await sub.subscribe(f"b{k}/#", qos=1)  # raises TimeoutError if the SUBACK is lost
        await asyncio.gather(*flood)
        await pub.publish("b4/z", b"late", qos=1)
        got = await inbox.wait(3001)
        assert got[-1].payload == b"late"
        await pub.stop()
        await sub.stop()

    asyncio.run(scenario())


def test_start_returns_once_the_broker_has_the_subscriptions(mosquitto):
    # A message published the moment start() returns must find the subscription in place
    # (without waiting for the SUBACKs, one start in a few dozen lost it on a busy machine).
    async def scenario():
        pub = await _publisher(mosquitto)
        for k in range(30):
            sub = AsyncMqtt(_url(mosquitto), f"fresh-{k}")  # a new, clean session each time
            inbox = Inbox(sub)
            for t in range(5):
                await sub.subscribe(f"s{k}/{t}/#", qos=1)
            assert await sub.start()
            await pub.publish(f"s{k}/4/x", b"first", qos=1)
            assert [m.payload for m in await inbox.wait(1, timeout=5)] == [b"first"]
            await sub.stop()
        await pub.stop()

    asyncio.run(scenario())
