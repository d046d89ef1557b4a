"""The bulk MQTT packet reader (common/mqtt_frames.py): pure, bytes in, packets out.

Packets are encoded here from the MQTT 3.1.1 specification (section 2.2 and 3.3), independently
of the reader, and fed to it cut at arbitrary places, as TCP delivers them.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.mqtt_frames import FrameError, Message, pubacks, read_frames


def remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (128 if n else 0))
        if not n:
            return bytes(out)


def publish(topic: bytes, payload: bytes, qos: int, mid: int, retain: bool, dup: bool) -> bytes:
    body = struct.pack("!H", len(topic)) + topic + (struct.pack("!H", mid) if qos else b"") + payload
    first = 0x30 | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
    return bytes([first]) + remaining_length(len(body)) + body


def other(first: int, body: bytes) -> bytes:
    return bytes([first]) + remaining_length(len(body)) + body


publishes = st.builds(
    lambda topic, payload, qos, mid, retain, dup: ("pub", topic, payload, qos, mid if qos else 0, retain, dup),
    st.binary(min_size=1, max_size=40), st.binary(max_size=300) | st.binary(min_size=16380, max_size=16390),
    st.sampled_from([0, 1]), st.integers(1, 65535), st.booleans(), st.booleans())
others = st.builds(lambda first, body: ("other", first, body),
                   st.sampled_from([0x20, 0x40, 0x90, 0xB0, 0xD0, 0x34, 0x62]),  # CONNACK PUBACK SUBACK UNSUBACK PINGRESP QoS2-PUBLISH PUBREL
                   st.binary(max_size=20))


def encode(p) -> bytes:
    return publish(*p[1:]) if p[0] == "pub" else other(p[1], p[2])


def as_tuple(x) -> tuple:
    if isinstance(x, Message):
        return ("pub", x.topic_bytes, x.payload, x.qos, x.mid, x.retain, x.dup)
    return ("other", x[0], x[1])


def feed(stream: bytes, cuts: list[int]) -> list:
    """Read STREAM as the client does: chunks arrive, what is left over waits for the next one."""
    got: list = []
    rest = b""
    edges = sorted({c % (len(stream) + 1) for c in cuts}) + [len(stream)]
    start = 0
    for end in edges:
        buf = rest + stream[start:end]
        start = end
        packets, used, need = read_frames(buf, conn=7)
        got += packets
        rest = buf[used:]
        assert need == 0 or need > len(rest)  # the size of the packet still arriving
    assert rest == b""
    return got


@settings(max_examples=300, deadline=None)
@given(st.lists(publishes | others, max_size=30), st.lists(st.integers(0, 10**6), max_size=20))
def test_packets_cut_anywhere_come_out_whole_and_in_order(packets, cuts):
    stream = b"".join(encode(p) for p in packets)
    got = feed(stream, cuts)
    assert [as_tuple(x) for x in got] == packets
    assert all(m.conn == 7 for m in got if isinstance(m, Message))


def test_remaining_length_boundaries():
    # 1, 2, 3 and 4 length bytes: 127/128, 16383/16384, 2097151/2097152
    for size in (0, 1, 125, 126, 16381, 16382, 2097149, 2097150):
        frame = publish(b"t", b"x" * size, 1, 9, False, False)
        packets, used, need = read_frames(frame)
        assert used == len(frame) and need == 0
        assert packets[0].payload == b"x" * size and packets[0].mid == 9


def test_an_incomplete_packet_says_how_many_bytes_it_needs():
    frame = publish(b"hikvision/gate-1/event", b"{}" * 5000, 1, 3, False, False)
    packets, used, need = read_frames(frame[:100])
    assert packets == [] and used == 0 and need == len(frame)
    packets, used, need = read_frames(frame[:1])  # not even the length yet
    assert packets == [] and used == 0 and need == 0


def test_topic_is_text_and_invalid_utf8_raises_as_paho_does():
    (m,), _, _ = read_frames(publish("5幢/闸机".encode(), b"{}", 0, 0, True, False))
    assert m.topic == "5幢/闸机" and m.retain and m.qos == 0
    (bad,), _, _ = read_frames(publish(b"\xff\xfe", b"{}", 0, 0, False, False))
    with pytest.raises(UnicodeDecodeError):
        bad.topic


@pytest.mark.parametrize("stream, why", [
    (b"\x30\xff\xff\xff\xff\x01", "longer than 4 bytes"),
    (b"\x30\x01\x00", "without a topic"),
    (b"\x32\x05\x00\x09abc", "shorter than its topic"),
])
def test_garbage_is_a_frame_error(stream, why):
    with pytest.raises(FrameError, match=why):
        read_frames(stream)


def test_pubacks_are_back_to_back_packets():
    blob = pubacks([1, 300, 65535])
    assert blob == b"\x40\x02\x00\x01" + b"\x40\x02\x01\x2c" + b"\x40\x02\xff\xff"
    packets, used, _ = read_frames(blob)
    assert used == len(blob) and [p[1] for p in packets] == [b"\x00\x01", b"\x01\x2c", b"\xff\xff"]
