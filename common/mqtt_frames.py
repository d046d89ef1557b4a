"""MQTT 3.1.1 packets read in bulk from a byte buffer (pure functions, no I/O).

paho-mqtt reads a packet with three `recv` calls and builds a message object with a lock and a
condition variable per PUBLISH: about 40 µs a message, more than the whole budget of a box that
ingests 20,000 gate events a second. `common.mqtt` keeps paho for the protocol (connect,
subscribe, keep-alive, reconnect, TLS, QoS 2) and reads with this instead: one `recv` of many
packets, PUBLISH packets of QoS 0 and 1 decoded here, every other packet handed back to paho.
"""

from __future__ import annotations

import struct

PUBLISH = 0x30
PUBACK = 0x40
_PUBACK = struct.Struct("!BBH")
MAX_REMAINING = 268_435_455  # the largest remaining length MQTT can encode (4 bytes)


class FrameError(ValueError):
    """The byte stream is not MQTT: the connection must be dropped."""


class Message:
    """One received PUBLISH: what Poplar reads of it (paho's MQTTMessage offers the same names).

    `conn` is the number of the connection it arrived on: an acknowledgement is only sent on that
    connection (after a reconnect the broker delivers an unacknowledged message again, and the
    packet id may already name another message)."""

    __slots__ = ("topic_bytes", "payload", "qos", "mid", "retain", "dup", "conn")

    def __init__(self, topic: bytes, payload: bytes, qos: int = 0, mid: int = 0, retain: bool = False,
                 dup: bool = False, conn: int = 0) -> None:
        self.topic_bytes = topic
        self.payload = payload
        self.qos = qos
        self.mid = mid
        self.retain = retain
        self.dup = dup
        self.conn = conn

    @property
    def topic(self) -> str:
        """The topic as text; UnicodeDecodeError if the sender put invalid UTF-8 in it (as paho)."""
        return self.topic_bytes.decode("utf-8")

    def __repr__(self) -> str:
        return (f"Message(topic={self.topic_bytes!r}, qos={self.qos}, mid={self.mid}, "
                f"{len(self.payload)} bytes)")


def read_frames(buf: bytes, conn: int = 0) -> tuple[list, int, int]:
    """The complete packets at the start of BUF, in order.

    Returns (packets, used, need): each packet is a Message (a PUBLISH of QoS 0 or 1) or a tuple
    (first byte, body) for anything else, QoS 2 PUBLISH included; `used` is how many bytes of BUF
    they took; `need` is the total size of the incomplete packet that follows, when its header
    is complete (0 when it is not), so a caller can wait for that many bytes before parsing again.
    Raises FrameError for a length that MQTT cannot encode."""
    out: list = []
    n = len(buf)
    pos = 0
    while n - pos >= 2:
        first = buf[pos]
        # Remaining length: 1 to 4 bytes, 7 bits each, least significant first.
        b = buf[pos + 1]
        if b < 128:
            length, i = b, pos + 2
        else:
            length, mult, i = b & 127, 128, pos + 2
            while True:
                if i >= n:
                    return out, pos, 0
                b = buf[i]
                i += 1
                length += (b & 127) * mult
                if b < 128:
                    break
                mult *= 128
                if mult > 128 ** 3:
                    raise FrameError("remaining length longer than 4 bytes")
        end = i + length
        if end > n:
            return out, pos, end - pos
        if first & 0xF0 == PUBLISH and not first & 0x04:  # QoS 0 or 1
            if length < 2:
                raise FrameError("PUBLISH without a topic")
            tlen = (buf[i] << 8) | buf[i + 1]
            t_end = i + 2 + tlen
            qos = (first >> 1) & 0x03
            p_start = t_end + 2 if qos else t_end
            if p_start > end:
                raise FrameError("PUBLISH shorter than its topic and packet id")
            mid = (buf[t_end] << 8) | buf[t_end + 1] if qos else 0
            out.append(Message(buf[i + 2:t_end], buf[p_start:end], qos, mid, bool(first & 0x01),
                               bool(first & 0x08), conn))
        else:
            out.append((first, buf[i:end]))
        pos = end
    return out, pos, 0


def pubacks(mids: list[int]) -> bytes:
    """PUBACK packets for these packet ids, back to back (one write for many acknowledgements)."""
    pack = _PUBACK.pack
    return b"".join([pack(PUBACK, 2, m) for m in mids])
