"""A small asyncio layer over paho-mqtt 2.x, used by the edge, the collector and the simulators.

paho runs its network loop in its own thread (loop_start) and reconnects by itself; this module
hands messages to the asyncio loop in bulk and turns PUBACKs into awaitable futures.

Reading is paho's, but for PUBLISH packets of QoS 0 and 1 (`_Client`): paho's own read path
costs about 40 µs a message (three `recv` calls, a lock and a condition variable per message,
one PUBACK write each), so the box could not take 20,000 gate events a second. `_Client` reads
many packets per `recv`, decodes those PUBLISH packets with `common.mqtt_frames`, hands every
other packet to paho's own handlers, and writes acknowledgements many at a time.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import socket
import ssl
import threading
from dataclasses import dataclass
from typing import Callable
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from common.aio import wait_event
from common.mqtt_frames import PUBACK, FrameError, Message, pubacks, read_frames

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MqttUrl:
    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> "MqttUrl":
        """mqtt://[user[:password]@]host[:port] or mqtts://... ValueError with a plain message."""
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError("expected mqtt://HOST:PORT or mqtts://HOST:PORT")
        if not parts.hostname:
            raise ValueError("the URL has no host name (expected mqtt://HOST:PORT)")
        try:
            port = parts.port
        except ValueError:
            raise ValueError("the port must be a number from 1 to 65535") from None
        tls = parts.scheme == "mqtts"
        return cls(parts.hostname, port or (8883 if tls else 1883), tls,
                   unquote(parts.username) if parts.username else None,
                   unquote(parts.password) if parts.password else None)

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


@dataclass(frozen=True)
class TlsFiles:
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False


#: paho internals the bulk read path relies on (checked once; without them paho reads alone).
_PAHO_INTERNALS = ("_packet_read", "_packet_handle", "_packet_queue", "_sock_recv", "_in_packet",
                   "_msgtime_mutex", "_last_bytes_received", "_sock", "_protocol", "_transport",
                   "_manual_ack", "reconnect")
_READ_SIZE = 256 * 1024
_PAUSE_POLL_S = 0.05


def _in_packet(command: int = 0, body: bytes = b"") -> dict:
    """paho's record of the packet being read, as paho's own reader leaves it for its handlers."""
    return {"command": command, "have_remaining": 1 if command else 0, "remaining_count": [],
            "remaining_mult": 1, "remaining_length": len(body), "packet": bytearray(body),
            "to_process": 0, "pos": 0}


class _Client(paho.Client):
    """paho's client with a bulk read path (see the module doc) and connection-checked acks.

    `on_batch(messages)` is called in paho's network thread with the PUBLISH packets of one read,
    in order. Acknowledgements (`queue_acks`) only go out on the connection the messages came
    on: after a reconnect the broker sends unacknowledged messages again, and acking an old
    packet id on the new connection could acknowledge a different message.
    """

    def __init__(self, *args, on_batch: Callable[[list[Message]], None], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._on_batch = on_batch
        self.generation = 0  # connections so far; a Message's `conn`
        self._gen_lock = threading.Lock()
        self._chunks: list[bytes] = []
        self._have = 0
        self._need = 0
        self._rsock: object = None
        # Flow control (manual ack): past max_unacked messages delivered and not acknowledged,
        # stop reading until half of them are; 0 = no limit. See AsyncMqtt's max_unacked.
        self.max_unacked = 0
        self.unacked = 0
        self.pauses = 0
        self.reading = threading.Event()  # cleared: reading paused
        self.socket_error: OSError | None = None  # why the last connect or read failed
        self.reading.set()
        self.bulk = (all(hasattr(self, a) for a in _PAHO_INTERNALS) and self._protocol != paho.MQTTv5
                     and self._transport in ("tcp", "unix"))
        self.on_message = self._on_paho_message

    def reconnect(self) -> MQTTErrorCode:
        with self._gen_lock:  # from now on, acks of earlier messages are not sent
            self.generation += 1
        self.socket_error = None
        try:
            return super().reconnect()
        except OSError as exc:  # paho retries and drops the reason; keep it for the installer
            self.socket_error = exc
            raise

    def _sock_send(self, buf: bytes | bytearray) -> int:
        try:
            return super()._sock_send(buf)
        except BlockingIOError:
            raise
        except OSError as exc:  # paho drops the reason; a TLS alert can arrive while writing CONNECT
            self.socket_error = self._alert_behind(exc)
            raise

    def _alert_behind(self, exc: OSError) -> OSError:
        """A TLS broker that refuses our certificate sends an alert and closes; a write can fail
        on the closed socket before the alert is read. Read it: it says why."""
        sock = self._sock
        if isinstance(exc, (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError)) and isinstance(sock, ssl.SSLSocket):
            try:
                sock.recv(1)
            except (ssl.SSLEOFError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass
            except ssl.SSLError as alert:
                return alert
            except OSError:
                pass
        return exc

    def queue_acks(self, msgs: list[Message]) -> None:
        """Acknowledge received messages (QoS 1: PUBACK, one write for all; QoS 2: paho's PUBCOMP)."""
        with self._gen_lock:
            gen = self.generation
            mids = [m.mid for m in msgs if m.qos == 1 and m.conn == gen]
            if mids:
                self._packet_queue(PUBACK, pubacks(mids), 0, 0)
            if self._manual_ack:  # done with, whatever their connection
                self.unacked -= sum(1 for m in msgs if m.qos)
                if not self.reading.is_set() and self.unacked <= self.max_unacked // 2:
                    self.reading.set()
        for m in msgs:
            if m.qos == 2 and m.conn == gen:
                super().ack(m.mid, 2)

    def _on_paho_message(self, client, userdata, m: paho.MQTTMessage) -> None:
        # paho's own path: QoS 2, or everything when the bulk path is off
        self._deliver([Message(m._topic, m.payload, m.qos, m.mid, m.retain, m.dup, self.generation)],
                      paho_acks=True)

    def _packet_read(self) -> MQTTErrorCode:
        if not self.reading.is_set() and not self.reading.wait(_PAUSE_POLL_S):
            # Paused: what is not read stays in the socket, then at the broker (TCP flow
            # control). Back to paho's loop now and then, for acks, publishes and keep-alive.
            # We are called because bytes are waiting: the broker is alive, even though its
            # PINGRESP stays unread for now, so paho's keep-alive must not drop the connection.
            # The cost: a broker that hangs without closing is noticed only when reading resumes
            # (docs/profiles-mqtt.md, "Flow control"); what was not acked comes again.
            with self._msgtime_mutex:
                self._last_bytes_received = paho.time_func()
            return MQTTErrorCode.MQTT_ERR_AGAIN
        if not self.bulk:
            return super()._packet_read()
        sock = self._sock
        if sock is not self._rsock:  # a new connection: nothing buffered belongs to it
            self._rsock, self._chunks, self._have, self._need = sock, [], 0, 0
        try:
            data = self._sock_recv(min(max(_READ_SIZE, self._need - self._have), 16 * _READ_SIZE))
        except BlockingIOError:
            return MQTTErrorCode.MQTT_ERR_AGAIN
        except OSError as err:  # e.g. a TLS alert: the broker wants a client certificate
            log.debug("MQTT: failed to receive on socket: %s", err)
            self.socket_error = err
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        if not data:
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        with self._msgtime_mutex:
            self._last_bytes_received = paho.time_func()  # paho's keep-alive clock
        self._chunks.append(data)
        self._have += len(data)
        if self._have < self._need:  # a large packet still arriving: do not join and parse yet
            return MQTTErrorCode.MQTT_ERR_AGAIN
        buf = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        try:
            packets, used, self._need = read_frames(buf, self.generation)
        except FrameError as exc:
            log.warning("MQTT %s: the broker sent something that is not MQTT (%s); reconnecting", self._host, exc)
            return MQTTErrorCode.MQTT_ERR_PROTOCOL
        rest = buf[used:]
        self._chunks, self._have = ([rest], len(rest)) if rest else ([], 0)
        batch: list[Message] = []
        for p in packets:
            if type(p) is Message:
                batch.append(p)
                continue
            if batch:  # keep the order: a SUBACK or PUBACK after these messages is handled after them
                self._deliver(batch)
                batch = []
            rc = self._handle_other(*p)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or self._sock is not sock:
                return rc  # refused or closed: paho takes it from here
        if batch:
            self._deliver(batch)
        return MQTTErrorCode.MQTT_ERR_AGAIN

    def _deliver(self, batch: list[Message], paho_acks: bool = False) -> None:
        if self._manual_ack:
            if self.max_unacked:
                with self._gen_lock:
                    self.unacked += sum(1 for m in batch if m.qos)
                    # Here, in the network thread, before the next read: the limit holds exactly.
                    if self.unacked >= self.max_unacked and self.reading.is_set():
                        self.reading.clear()
                        self.pauses += 1
        self._on_batch(batch)
        if not self._manual_ack and not paho_acks:  # paho acks after the callback returned; so do we
            self.queue_acks(batch)

    def _handle_other(self, first: int, body: bytes) -> MQTTErrorCode:
        """A packet that is not a QoS 0/1 PUBLISH, through paho's own handler."""
        self._in_packet = _in_packet(first, body)
        try:
            return self._packet_handle()
        except paho.MalformedPacket as exc:
            log.debug("MQTT: malformed packet from the broker: %s", exc)
            return MQTTErrorCode.MQTT_ERR_PROTOCOL
        finally:
            self._in_packet = _in_packet()


class AsyncMqtt:
    """One MQTT connection. Call `start()`, then publish/subscribe; `stop()` to disconnect.

    persistent=True asks the broker for a persistent session (clean_session=False), so QoS 1
    messages published while we were away are kept for us. manual_ack=True means the broker is
    only told a message was received when `ack(msg)` is called; every message must then be
    acked once, even one that is dropped.

    max_unacked (with manual_ack): while that many messages wait for their ack, reading stops,
    and the rest stays at the broker until half of them are acked; acks, publishes and the
    keep-alive go on. A broker may push its whole queue at once (Mosquitto 2.0 does once acks
    flow, whatever its max_inflight_messages), and a box back after a day away has hundreds of
    thousands of messages queued. 0: no limit.
    """

    def __init__(self, url: MqttUrl, client_id: str, *, persistent: bool = False,
                 manual_ack: bool = False, username: str | None = None, password: str | None = None,
                 tls: TlsFiles | None = None, will: tuple[str, bytes, bool] | None = None,
                 max_inflight: int = 100, keepalive: int = 30, max_unacked: int = 0) -> None:
        self.url = url
        self.client_id = client_id
        self._client = _Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=not persistent,
                               protocol=paho.MQTTv311, manual_ack=manual_ack, on_batch=self._on_batch)
        _login_and_tls(self._client, url, username, password, tls)
        if will:
            self._client.will_set(will[0], will[1], qos=1, retain=will[2])
        self._client.max_inflight_messages_set(max_inflight)
        self._client.max_unacked = max_unacked if manual_ack else 0
        self._client.max_queued_messages_set(0)
        self._client.reconnect_delay_set(1, 30)
        self._keepalive = keepalive
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._client.on_subscribe = self._on_subscribe
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subs: dict[str, int] = {}
        self._handler: Callable[[list[Message]], None] | None = None
        self._inbox: collections.deque[Message] = collections.deque()
        self._drain_scheduled = False
        self._lock = threading.Lock()
        self._pub_futures: dict[int, asyncio.Future] = {}
        self._early_mids: set[int] = set()
        self._sub_futures: dict[int, asyncio.Future] = {}
        self._initial_subs: set[int] = set()  # SUBACKs awaited after (re)connecting
        self._online = False  # paho's connection is up (before `connected`: that waits for SUBACKs)
        self.connected = asyncio.Event()
        self.last_error: str = ""
        self.on_connection_change: Callable[[bool], None] | None = None

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self, wait: float | None = 10.0) -> bool:
        """Connect in the background. Waits up to `wait` s for the first connection; returns
        whether it is connected. paho keeps retrying after that, so a broker that is down at
        start is not fatal."""
        self._loop = asyncio.get_running_loop()
        self._client.connect_async(self.url.host, self.url.port, keepalive=self._keepalive)
        self._client.loop_start()
        if wait:
            await wait_event(self.connected, wait)
        return self.connected.is_set()

    async def stop(self) -> None:
        try:
            self._client.disconnect()
        except Exception:  # already gone
            pass
        await asyncio.to_thread(self._client.loop_stop)
        self.connected.clear()

    def on_messages(self, handler: Callable[[list[Message]], None]) -> None:
        """handler(messages) runs in the asyncio loop with every message that arrived since the
        last call, in arrival order."""
        self._handler = handler

    @property
    def reading_paused(self) -> bool:
        """True while max_unacked messages wait for their ack (see __init__)."""
        return not self._client.reading.is_set()

    @property
    def read_pauses(self) -> int:
        return self._client.pauses

    # -- paho callbacks (network thread) -----------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            hint = " (check the username and password)" if _login_refused(reason_code) else ""
            self.last_error = f"broker refused the connection: {reason_code}{hint}"
            log.warning("MQTT %s: %s", self.url, self.last_error)
            return
        self.last_error = ""  # connected: any earlier refusal is over
        with self._lock:  # subscribe() adds topics from the asyncio thread
            subs = list(self._subs.items())
            # Connected means subscribed too: a message published right after start() must not
            # miss a subscription the broker has not processed yet. `connected` is set when the
            # last of these SUBACKs is in (_on_subscribe), or now if the broker kept our session
            # (its subscriptions stand; a SUBACK may wait behind the backlog while reading pauses).
            self._initial_subs = {mid for rc, mid in (client.subscribe(t, q) for t, q in subs)
                                  if rc == paho.MQTT_ERR_SUCCESS}
            if getattr(flags, "session_present", False):
                self._initial_subs.clear()
            ready = not self._initial_subs
            self._online = True
        if ready and self._loop:
            self._loop.call_soon_threadsafe(self._set_connected, True)

    def _on_connect_fail(self, client, userdata) -> None:
        exc = self._client.socket_error
        self._set_error(connect_error_text(self.url, exc) if exc else "cannot connect")

    def _set_error(self, text: str) -> None:
        if text != self.last_error:  # once per kind of failure, not at every retry
            log.warning("MQTT %s: %s; retrying", self.url, text)
        self.last_error = text

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._lock:
            answered, self._online = self._online, False
        exc = self._client.socket_error
        # Keep a refusal (bad password, ACL) as the reason: "connection lost" after it would send
        # the installer looking at the network instead of the credentials.
        refused = self.last_error.startswith("broker refused")
        if exc is not None and not answered:  # the connection failed before the broker's CONNACK
            self._set_error(connect_error_text(self.url, exc))
        elif refused:
            pass
        elif not answered:
            self._set_error(_closed_before_connack(self.url))
        elif reason_code.is_failure or reason_code.value != 0:
            self.last_error = f"connection lost: {reason_code}"
        if self._loop and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._set_connected, False)

    def _set_connected(self, up: bool) -> None:
        (self.connected.set if up else self.connected.clear)()
        if self.on_connection_change:
            self.on_connection_change(up)

    def _on_batch(self, msgs: list[Message]) -> None:
        self._inbox.extend(msgs)
        if not self._drain_scheduled and self._loop:
            self._drain_scheduled = True
            self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        self._drain_scheduled = False
        batch = []
        while self._inbox:
            batch.append(self._inbox.popleft())
        if batch and self._handler:
            self._handler(batch)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._lock:
            fut = self._pub_futures.pop(mid, None)
            if fut is None:
                self._early_mids.add(mid)
        if fut is not None and self._loop:
            self._loop.call_soon_threadsafe(_resolve, fut, True)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        with self._lock:
            fut = self._sub_futures.pop(mid, None)
            ready = mid in self._initial_subs
            self._initial_subs.discard(mid)
            ready = ready and not self._initial_subs
        if any(rc.is_failure for rc in reason_codes) and fut is None:
            log.error("MQTT %s: the broker refused a subscription (check its ACL for client %s)",
                      self.url, self.client_id)
        if ready and self._loop:
            self._loop.call_soon_threadsafe(self._set_connected, True)
        if fut is not None and self._loop:
            ok = all(not rc.is_failure for rc in reason_codes)
            self._loop.call_soon_threadsafe(_resolve, fut, ok)

    # -- operations --------------------------------------------------------------------------
    def publish_nowait(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> asyncio.Future:
        """Queue a message; the returned future resolves when the broker acknowledged it
        (QoS 1) or it was written to the socket (QoS 0)."""
        assert self._loop is not None, "start() first"
        fut = self._loop.create_future()
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN) or (qos == 0 and info.rc != paho.MQTT_ERR_SUCCESS):
            # paho queues QoS 1 while disconnected, but drops QoS 0 (and never reports it)
            fut.set_exception(ConnectionError(f"publish failed: {paho.error_string(info.rc)}"))
            return fut
        with self._lock:
            if info.mid in self._early_mids:
                self._early_mids.discard(info.mid)
                fut.set_result(True)
            else:
                self._pub_futures[info.mid] = fut
        return fut

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
                      timeout: float | None = None) -> None:
        fut = self.publish_nowait(topic, payload, qos, retain)
        if timeout:
            async with asyncio.timeout(timeout):
                await fut
        else:
            await fut

    async def subscribe(self, topic: str, qos: int = 1, timeout: float = 10.0) -> None:
        """Subscribe now and wait for the broker's answer; before the connection is up, the
        topic is subscribed on connecting (and on every reconnect) and this returns at once.

        With manual_ack, at most QoS 1: paho answers a QoS 2 PUBLISH at once (PUBREC), and the
        broker then forgets the message before the app has it safe. At QoS 1 the broker hands
        QoS 2 publishes over as QoS 1, and sends them again until ack()."""
        if self._client._manual_ack:
            qos = min(qos, 1)
        with self._lock:  # the same lock as _on_connect: each topic is sent by one or the other
            self._subs[topic] = qos
            if not self._online or self._loop is None:
                return  # subscribed in _on_connect
            fut = self._loop.create_future()
            rc, mid = self._client.subscribe(topic, qos)
            if rc == paho.MQTT_ERR_SUCCESS:
                self._sub_futures[mid] = fut
        if rc != paho.MQTT_ERR_SUCCESS:
            return  # will be retried in _on_connect
        async with asyncio.timeout(timeout):
            ok = await fut
        if not ok:
            raise PermissionError(f"the broker refused the subscription to {topic!r} (check its ACL)")

    async def unsubscribe(self, topic: str) -> None:
        """Stop receiving a topic (and stop resubscribing to it on reconnect)."""
        with self._lock:
            self._subs.pop(topic, None)
            if self._online:
                self._client.unsubscribe(topic)

    def ack(self, msg: Message) -> None:
        """Acknowledge a message received with manual_ack=True."""
        self._client.queue_acks([msg])

    def ack_many(self, msgs: list[Message]) -> None:
        """Acknowledge many messages received with manual_ack=True, in one write."""
        self._client.queue_acks(msgs)


def _resolve(fut: asyncio.Future, value: bool) -> None:
    if not fut.done():
        fut.set_result(value)


class MqttSetupError(ValueError):
    """The TLS files cannot be used. str() is the message for the installer."""


def _login_and_tls(client: paho.Client, url: MqttUrl, username: str | None, password: str | None,
                   tls: TlsFiles | None) -> None:
    user = username or url.username
    if user:
        client.username_pw_set(user, password or url.password)
    if url.tls or (tls and (tls.ca_file or tls.cert_file)):
        t = tls or TlsFiles()
        try:
            client.tls_set(ca_certs=t.ca_file, certfile=t.cert_file, keyfile=t.key_file,
                           cert_reqs=ssl.CERT_NONE if t.insecure else ssl.CERT_REQUIRED)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            files = ", ".join(f"{k} {v}" for k, v in (("ca_file", t.ca_file), ("cert_file", t.cert_file),
                                                      ("key_file", t.key_file)) if v) or "the system's CAs"
            reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
            raise MqttSetupError(f"cannot load the TLS files for {url} ({files}): {reason}; check the "
                                 "tls settings and that this user may read the files") from None
        if t.insecure:
            client.tls_insecure_set(True)


def _login_refused(reason_code: object) -> bool:
    """Whether a CONNACK refusal is about the username or password."""
    text = str(reason_code).lower()
    return "not authorized" in text or "bad user" in text


def _closed_before_connack(url: MqttUrl) -> str:
    where = f"{url.host}:{url.port}"
    if url.tls:
        return (f"{where} closed the connection before answering the login; if it is not a TLS port, use "
                f"mqtt://{where}; if it is, check that the broker takes this client's certificate")
    return (f"{where} closed the connection before answering the login; if it is a TLS port, use "
            f"mqtts://{where}")


def connect_error_text(url: MqttUrl, exc: BaseException) -> str:
    """Why connecting to `url` failed, in words an installer can act on."""
    where = f"{url.host}:{url.port}"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host name {url.host!r} (check the spelling and DNS)"
    if isinstance(exc, ConnectionRefusedError):
        return f"nothing listens on {where} (is the broker running? is the port right?)"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError)):
        return _closed_before_connack(url)  # e.g. TLS spoken to a plain port, or plain to a TLS one
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = exc.verify_message or exc.reason or str(exc)
        if "mismatch" in why.lower():
            return (f"TLS: the broker's certificate is not made out to {url.host} ({why}); use the host "
                    "name its certificate names, or ask central IT for a certificate that names this one")
        return (f"TLS: the broker's certificate is not trusted ({why}); set tls.ca_file to the CA "
                "certificate that signed it (ask central IT for it)")
    if isinstance(exc, ssl.SSLError):
        reason = str(exc.reason or exc)
        if "CERTIFICATE_REQUIRED" in reason:
            return (f"TLS: the broker wants a client certificate ({reason}); set tls.cert_file and "
                    "tls.key_file to this gateway's certificate and key")
        if "UNKNOWN_CA" in reason or "BAD_CERTIFICATE" in reason or "CERTIFICATE_UNKNOWN" in reason:
            return (f"TLS: the broker does not accept this client's certificate ({reason}); ask central "
                    "IT for a certificate signed by the CA the broker trusts")
        if "WRONG_VERSION_NUMBER" in reason or "RECORD_LAYER_FAILURE" in reason or "PACKET_LENGTH" in reason:
            return (f"TLS handshake failed ({reason}): {where} does not speak TLS; use mqtt://{where} "
                    "or the broker's TLS port (usually 8883)")
        return f"TLS handshake failed ({reason}); check tls.ca_file and the broker's certificate"
    if isinstance(exc, TimeoutError):
        return f"no answer from {where} (check the network, firewall, 4G modem)"
    if isinstance(exc, OSError):
        return f"cannot reach {where}: {exc.strerror or exc} (check the network, firewall, 4G modem)"
    return f"cannot connect to {where}: {exc}"


def probe(url: MqttUrl, username: str | None = None, password: str | None = None, tls: TlsFiles | None = None,
          timeout: float = 5.0) -> str | None:
    """Try one MQTT connection (blocking). None if the broker accepted it, else why not, in words
    an installer can act on."""
    import time as _time

    result: dict = {}
    # Our client, not plain paho's: it keeps why a read failed (a TLS alert after the handshake).
    client = _Client(CallbackAPIVersion.VERSION2, client_id=f"poplar-probe-{os.getpid()}", clean_session=True,
                     on_batch=lambda batch: None)
    try:
        _login_and_tls(client, url, username, password, tls)
    except MqttSetupError as exc:
        return str(exc)
    client.on_connect = lambda c, u, f, rc, p: result.setdefault("rc", rc)
    client.on_disconnect = lambda c, u, f, rc, p: result.setdefault("closed", rc)
    try:
        client.connect(url.host, url.port, keepalive=10)
    except OSError as exc:
        return connect_error_text(url, exc)
    deadline = _time.monotonic() + timeout
    while "rc" not in result and "closed" not in result and _time.monotonic() < deadline:
        client.loop(0.1)
    client.disconnect()
    rc = result.get("rc")
    if rc is None:
        if client.socket_error is not None:
            return connect_error_text(url, client.socket_error)
        if "closed" in result:
            return _closed_before_connack(url)
        return f"{url.host}:{url.port} accepted TCP but sent no MQTT answer within {timeout:.0f} s (is it an MQTT port?)"
    if rc.is_failure:
        if _login_refused(rc):
            return f"the broker refused the login ({rc}): check username and password"
        return f"the broker refused the connection: {rc}"
    return None
