"""Pure value codecs for Modbus: 16-bit registers in, physical values out, and back.

`decode_value` turns the registers pymodbus returns into a physical value; `encode_value` is its
exact inverse (used by the meter simulator and the property tests). Also the RTU helpers (CRC)
the simulator and frame tests need. No I/O here.

Result types: integer types with scale 1 and offset 0 stay int (counters stay exact);
any other numeric result is a float; bool is bool; string is str.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

from .profile import FLOAT_TYPES, INTEGER_TYPES, RegisterSpec

Value = float | int | bool | str

_STRUCT = {"int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "int64": ">q",
           "uint64": ">Q", "float32": ">f", "float64": ">d"}


def _check_regs(regs: Sequence[int], n: int, what: str) -> None:
    if len(regs) != n:
        raise ValueError(f"{what}: expected {n} register(s), got {len(regs)}")
    for r in regs:
        if not isinstance(r, int) or isinstance(r, bool) or not 0 <= r <= 0xFFFF:
            raise ValueError(f"{what}: register value {r!r} is not a 16-bit unsigned integer")


def regs_to_bytes(regs: Sequence[int], byte_order: str = "big", word_order: str = "big") -> bytes:
    """Registers as they sit in the meter -> big-endian bytes of the value (ABCD)."""
    words = list(regs)[::-1] if word_order == "little" else list(regs)
    order = "little" if byte_order == "little" else "big"
    return b"".join(w.to_bytes(2, order) for w in words)


def bytes_to_regs(data: bytes, byte_order: str = "big", word_order: str = "big") -> list[int]:
    """Inverse of regs_to_bytes."""
    if len(data) % 2:
        raise ValueError("register data must have an even number of bytes")
    order = "little" if byte_order == "little" else "big"
    words = [int.from_bytes(data[i:i + 2], order) for i in range(0, len(data), 2)]
    return words[::-1] if word_order == "little" else words


def _shortest_float32(x: float) -> float:
    """The shortest decimal that is the same float32: 230.2, not 230.20001220703125.

    The meter meant 230.2; the extra digits are float32 noise that would only confuse
    readers of InfluxDB. The bits are unchanged, so encode_value gives back the same registers.
    """
    if not math.isfinite(x):
        return x
    packed = struct.pack(">f", x)
    for digits in range(6, 10):
        y = float(f"{x:.{digits}g}")
        if struct.pack(">f", y) == packed:
            return y
    return x


def _decimal_inverse(scale: float) -> int | None:
    """10 for scale 0.1. Dividing by 10 gives the correctly rounded 230.1, times 0.1 gives 230.10000000000002."""
    inv = 1.0 / scale
    r = round(inv)
    return r if r != 0 and abs(inv - r) < 1e-9 * abs(inv) else None


def apply_scale(raw: float | int, scale: float, offset: float) -> float:
    inv = _decimal_inverse(scale)
    value = raw / inv if inv is not None and abs(inv) > 1 else raw * scale
    return value + offset if offset else float(value)


def unapply_scale(value: float, scale: float, offset: float) -> float:
    inv = _decimal_inverse(scale)
    value = value - offset
    return value * inv if inv is not None and abs(inv) > 1 else value / scale


def decode_value(spec: RegisterSpec, regs: Sequence[int]) -> Value:
    """Decode the registers of one value (exactly spec.width of them) into its physical value."""
    _check_regs(regs, spec.width, spec.field)
    if spec.type == "bool":
        if spec.bit is not None:
            return bool((regs[0] >> spec.bit) & 1)
        return regs[0] != 0
    if spec.type == "string":
        # Word order does not apply to text: characters run from the first register onwards.
        raw = b"".join(r.to_bytes(2, spec.byte_order) for r in regs)  # type: ignore[arg-type]
        return raw.split(b"\x00", 1)[0].decode("utf-8", errors="replace").strip()
    (raw,) = struct.unpack(_STRUCT[spec.type], regs_to_bytes(regs, spec.byte_order, spec.word_order))
    if spec.type == "float32":
        raw = _shortest_float32(raw)
    if spec.type in INTEGER_TYPES and spec.scale == 1 and spec.offset == 0 and not spec.is_quantity:
        return int(raw)  # codes and counters stay integers
    return apply_scale(raw, spec.scale, spec.offset)


def encode_value(spec: RegisterSpec, value: Value) -> list[int]:
    """Physical value -> the registers the meter would hold. Inverse of decode_value.

    Raises ValueError when the value does not fit the register type.
    """
    if spec.type == "bool":
        on = bool(value)
        return [(1 << spec.bit) if on else 0] if spec.bit is not None else [int(on)]
    if spec.type == "string":
        data = str(value).encode("utf-8")
        size = spec.width * 2
        if len(data) > size:
            raise ValueError(f"{spec.field}: {value!r} is longer than {size} bytes")
        data = data.ljust(size, b"\x00")
        return [int.from_bytes(data[i:i + 2], spec.byte_order) for i in range(0, size, 2)]  # type: ignore[arg-type]
    if isinstance(value, (bool, str)):
        raise ValueError(f"{spec.field}: expected a number for type {spec.type}, got {value!r}")
    raw: float | int = unapply_scale(value, spec.scale, spec.offset) \
        if (spec.scale != 1 or spec.offset != 0) else value
    fmt = _STRUCT[spec.type]
    if spec.type in INTEGER_TYPES:
        if isinstance(raw, float):
            if not math.isfinite(raw):
                raise ValueError(f"{spec.field}: {value!r} cannot be stored as {spec.type}")
            raw = round(raw)
        bits = struct.calcsize(fmt) * 8
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if spec.type[0] == "i" else (0, (1 << bits) - 1)
        if not lo <= raw <= hi:
            raise ValueError(f"{spec.field}: {value!r} is out of range for {spec.type} "
                             f"(raw {raw}, scale {spec.scale}, offset {spec.offset})")
    elif spec.type in FLOAT_TYPES:
        raw = float(raw)
        if spec.type == "float32" and math.isfinite(raw) and abs(raw) > 3.4028234663852886e38:
            raise ValueError(f"{spec.field}: {value!r} overflows float32")
    return bytes_to_regs(struct.pack(fmt, raw), spec.byte_order, spec.word_order)


def decode_bits(spec: RegisterSpec, bits: Sequence[bool | int]) -> bool:
    """Decode a fc 1/2 value: one coil or discrete input."""
    if len(bits) != 1:
        raise ValueError(f"{spec.field}: expected 1 bit, got {len(bits)}")
    return bool(bits[0])


def unpack_bits(data: bytes, count: int) -> list[bool]:
    """Coil/discrete-input response bytes -> bits; the first bit is the LSB of the first byte."""
    if len(data) * 8 < count:
        raise ValueError(f"{len(data)} byte(s) cannot hold {count} bits")
    return [bool(data[i // 8] >> (i % 8) & 1) for i in range(count)]


def pack_bits(bits: Sequence[bool | int]) -> bytes:
    """Inverse of unpack_bits; the last byte is padded with zeros as the protocol says."""
    out = bytearray((len(bits) + 7) // 8)
    for i, b in enumerate(bits):
        if b:
            out[i // 8] |= 1 << (i % 8)
    return bytes(out)


def crc16(data: bytes) -> int:
    """Modbus RTU CRC-16 (poly 0xA001 reflected, init 0xFFFF). Sent low byte first."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def add_crc(frame: bytes) -> bytes:
    """Append the CRC to an RTU frame (unit id + PDU), low byte first."""
    return frame + crc16(frame).to_bytes(2, "little")


def check_crc(frame: bytes) -> bool:
    """True if the last two bytes of FRAME are the CRC of the rest."""
    return len(frame) >= 4 and crc16(frame[:-2]) == int.from_bytes(frame[-2:], "little")
