"""Simulated electricity meters served over Modbus TCP, RTU over TCP or an RTU serial line, from any
Modbus device profile.

Values are plausible and change: a residential daily load curve per unit (simulators/households.py),
about 220 V and 50 Hz, energy that only grows. The model's quirks are enforced as the real meter
would (odd address or count, too many registers: exception 2), and faults can be injected.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import struct
import time
from dataclasses import dataclass, field
from datetime import datetime

from simulators.households import Household

log = logging.getLogger(__name__)

ILLEGAL_FUNCTION = 1
ILLEGAL_ADDRESS = 2
ILLEGAL_VALUE = 3
DEVICE_FAILURE = 4


class ModbusError(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclass
class Faults:
    timeout_rate: float = 0.0      # share of requests never answered
    exception_rate: float = 0.0    # share answered with exception 4 (device failure)
    dead_units: set[int] = field(default_factory=set)  # units that never answer
    garble_rate: float = 0.0       # share answered with a broken frame (short answer, bad CRC)
    wrong_unit_rate: float = 0.0   # share answered under another unit id (two meters with one id)


class SimMeter:
    """One simulated meter (one unit id) of a given profile."""

    def __init__(self, profile, unit: int, seed: int | None = None, speedup: float = 1.0) -> None:
        self.profile = profile
        self.unit = unit
        self.rng = random.Random(seed if seed is not None else unit)
        self.household = Household(self.rng.randrange(1 << 30))
        self.energy_import = self.rng.uniform(200, 8000)
        self.energy_export = self.rng.uniform(0, 5)
        self.reactive_import = self.energy_import * 0.2
        self.pf = self.rng.uniform(0.90, 0.99)
        self.speedup = speedup
        self._t = time.time()
        self._image: dict[tuple[int, int], int] = {}
        self._image_t = 0.0
        regs = profile.polled_registers() if hasattr(profile, "polled_registers") else profile.registers
        self.specs = list(regs)
        self.max_addr = {fc: 0 for fc in (1, 2, 3, 4)}
        for s in self.specs:
            self.max_addr[s.function] = max(self.max_addr[s.function], s.end)

    def values(self, now: float) -> dict[str, float]:
        """Physical values in the normalised units (V, A, W, var, VA, Hz, kWh)."""
        dt_h = max(0.0, now - self._t) * self.speedup / 3600
        self._t = now
        phases = getattr(self.profile, "phases", 1)
        p_total = self.household.power_w(datetime.fromtimestamp(now), self.rng) * (3 if phases == 3 else 1)
        self.energy_import += p_total * dt_h / 1000
        self.reactive_import += p_total * math.tan(math.acos(self.pf)) * dt_h / 1000
        v = {}
        per_phase = []
        for i in range(phases):
            volt = self.rng.gauss(220.0, 1.5)
            p = p_total / phases * self.rng.uniform(0.8, 1.2) if phases > 1 else p_total
            s = p / self.pf
            q = math.sqrt(max(0.0, s * s - p * p))
            per_phase.append((volt, p, q, s, s / volt))
        if phases == 1:
            volt, p, q, s, i_ = per_phase[0]
            v.update(voltage=volt, current=i_, active_power=p, reactive_power=q, apparent_power=s)
        else:
            for n, (volt, p, q, s, i_) in enumerate(per_phase, 1):
                v.update({f"voltage_l{n}": volt, f"current_l{n}": i_, f"active_power_l{n}": p,
                          f"reactive_power_l{n}": q, f"apparent_power_l{n}": s, f"power_factor_l{n}": self.pf})
            v.update(active_power=sum(x[1] for x in per_phase), reactive_power=sum(x[2] for x in per_phase),
                     apparent_power=sum(x[3] for x in per_phase), current=sum(x[4] for x in per_phase) / 3,
                     voltage=sum(x[0] for x in per_phase) / 3)
            for a, b, n in ((1, 2, "l1_l2"), (2, 3, "l2_l3"), (3, 1, "l3_l1")):
                v[f"voltage_{n}"] = math.sqrt(3) * (per_phase[a - 1][0] + per_phase[b - 1][0]) / 2
        v.update(power_factor=self.pf, frequency=self.rng.gauss(50.0, 0.02),
                 energy_import=self.energy_import, energy_export=self.energy_export,
                 energy_total=self.energy_import + self.energy_export,
                 reactive_energy_import=self.reactive_import, reactive_energy_export=0.0,
                 reactive_energy_total=self.reactive_import)
        return v

    def _value_for(self, spec, vals: dict[str, float]):
        from edge.modbus.decode import encode_value
        name = spec.field
        base, phase = name[:-3], name[-3:]
        if name in vals:
            value = vals[name]
        elif phase in ("_l1", "_l2", "_l3") and base in vals and "energy" in base:
            value = vals[base] / 3  # per-phase energy: a third of the total, still only growing
        elif name.startswith("energy") or "energy" in name:
            value = vals["energy_import"]
        elif "demand" in name:
            value = vals.get("active_power", 0.0)
        else:
            value = 0
        kind = spec.type
        if kind == "string":
            value = f"SIM{self.unit:05d}"
        elif kind in ("bool", "bit"):
            value = bool(value)
        elif kind.startswith(("int", "uint")):
            # integer registers carry raw = (physical - offset) / scale
            value = (value - (spec.offset or 0)) / (spec.scale or 1) if isinstance(value, float) else value
            value = int(round(value)) * (spec.scale or 1) + (spec.offset or 0)
        return encode_value(spec, value)

    def refresh(self, now: float) -> None:
        if now - self._image_t < 0.5:
            return
        vals = self.values(now)
        image: dict[tuple[int, int], int] = {}
        for s in self.specs:
            try:
                regs = self._value_for(s, vals)
            except (ValueError, OverflowError, struct.error):
                continue  # a value out of the register's range stays 0
            for i, r in enumerate(regs):
                image[(s.function, s.address + i)] = int(r)
        self._image, self._image_t = image, now

    def read(self, function: int, address: int, count: int) -> list[int]:
        """Registers (or bits) for one request, or ModbusError with the real meter's exception code."""
        if function not in (1, 2, 3, 4) or not self.max_addr[function]:
            # A meter answers function codes its map does not use (e.g. coils on an Eastron) with 1.
            raise ModbusError(ILLEGAL_FUNCTION)
        limits = self.profile.limits
        max_count = 2000 if function in (1, 2) else min(125, limits.max_registers or 125)
        if count < 1 or count > max_count:
            raise ModbusError(ILLEGAL_ADDRESS if count > 0 else ILLEGAL_VALUE)
        if function in (3, 4) and ((getattr(limits, "even_address", False) and address % 2)
                                   or (getattr(limits, "even_count", False) and count % 2)):
            raise ModbusError(ILLEGAL_ADDRESS)
        if address + count > max(self.max_addr[function], 1) + 64 or address + count > 65536:
            raise ModbusError(ILLEGAL_ADDRESS)
        self.refresh(time.time())
        return [self._image.get((function, a), 0) for a in range(address, address + count)]


def parse_units(text: str) -> list[int]:
    """'1-10,15' -> [1..10, 15]; unit ids must be 1..247."""
    units: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        a, b = int(lo), int(hi or lo)
        if not (1 <= a <= b <= 247):
            raise ValueError(f"unit range {part!r}: unit ids are 1 to 247")
        units.update(range(a, b + 1))
    if not units:
        raise ValueError("no unit ids given")
    return sorted(units)


def pdu_response(meters: dict[int, SimMeter], unit: int, pdu: bytes, faults: Faults,
                 rng: random.Random) -> bytes | None:
    """Answer one request PDU for a unit. None means: stay silent (dead unit or injected timeout)."""
    if unit in faults.dead_units or unit not in meters:
        return None
    if faults.timeout_rate and rng.random() < faults.timeout_rate:
        return None
    if len(pdu) < 5:
        return bytes([pdu[0] | 0x80 if pdu else 0x80, ILLEGAL_VALUE])
    fc = pdu[0]
    if faults.exception_rate and rng.random() < faults.exception_rate:
        return bytes([fc | 0x80, DEVICE_FAILURE])
    address, count = struct.unpack(">HH", pdu[1:5])
    try:
        data = meters[unit].read(fc, address, count)
    except ModbusError as exc:
        return bytes([fc | 0x80, exc.code])
    if fc in (1, 2):
        out = bytearray((count + 7) // 8)
        for i, bit in enumerate(data):
            if bit:
                out[i // 8] |= 1 << (i % 8)
        return bytes([fc, len(out)]) + bytes(out)
    return bytes([fc, 2 * count]) + struct.pack(f">{count}H", *data)


def _short(resp: bytes) -> bytes:
    """A well-framed answer with one register (or byte) missing: the byte count agrees, the length is wrong."""
    if len(resp) < 4 or resp[0] & 0x80:
        return resp
    drop = 2 if resp[0] in (3, 4) else 1
    body = resp[2:-drop]
    return bytes([resp[0], len(body)]) + body


class RtuDeframer:
    """Cuts RTU request frames out of a byte stream (serial line or RTU over TCP).

    Read requests (fc 1-4) are 8 bytes with a CRC; a stream that does not start with a valid frame
    loses its first byte until it does (line noise, a partial frame after opening the port).
    """

    def __init__(self) -> None:
        self.buf = bytearray()
        self.dropped = 0

    def feed(self, data: bytes) -> list[bytes]:
        from edge.modbus.decode import check_crc
        self.buf += data
        frames = []
        while len(self.buf) >= 8:
            if check_crc(bytes(self.buf[:8])):
                frames.append(bytes(self.buf[:8]))
                del self.buf[:8]
            else:
                del self.buf[0]
                self.dropped += 1
        return frames


class MeterServer:
    """Serves a set of simulated units: Modbus TCP (MBAP framing) or RTU frames over TCP."""

    def __init__(self, meters: dict[int, SimMeter], faults: Faults | None = None, seed: int = 0,
                 framing: str = "tcp") -> None:
        if framing not in ("tcp", "rtu"):
            raise ValueError("framing is tcp or rtu")
        self.meters = meters
        self.faults = faults or Faults()
        self.rng = random.Random(seed)
        self.framing = framing
        self.requests = 0
        #: When set to a list, every RTU transaction is recorded as (request arrived, answer sent, unit):
        #: tests use it to prove one transaction at a time on a line, with the inter-frame gap.
        self.trace: list[tuple[float, float, int]] | None = None
        self._server: asyncio.base_events.Server | None = None

    def answer(self, unit: int, pdu: bytes) -> tuple[int, bytes, bool] | None:
        """(unit to answer as, response PDU, garble?) or None for silence; applies the faults."""
        self.requests += 1
        if unit == 0:
            return None  # broadcast: never answered
        resp = pdu_response(self.meters, unit, pdu, self.faults, self.rng)
        if resp is None:
            return None
        f = self.faults
        if f.wrong_unit_rate and self.rng.random() < f.wrong_unit_rate:
            unit = unit % 247 + 1
        garble = bool(f.garble_rate) and self.rng.random() < f.garble_rate
        return unit, resp, garble

    def rtu_reply(self, frame: bytes) -> bytes | None:
        """The RTU answer to one request frame (CRC already checked), or None."""
        from edge.modbus.decode import add_crc
        got = self.answer(frame[0], frame[1:-2])
        if got is None:
            return None
        unit, resp, garble = got
        out = add_crc(bytes([unit]) + resp)
        if garble:  # a bit flipped on the line: the CRC no longer matches
            out = out[:-1] + bytes([out[-1] ^ 0x5A])
        return out

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self.framing == "rtu":
                await self._rtu_client(reader, writer)
                return
            while True:
                head = await reader.readexactly(7)
                tid, proto, length, unit = struct.unpack(">HHHB", head)
                if length < 2 or length > 256:
                    break  # garbage: drop the connection like a real device would
                pdu = await reader.readexactly(length - 1)
                got = self.answer(unit, pdu)
                if got is None:
                    continue
                unit, resp, garble = got
                if garble:
                    resp = _short(resp)
                writer.write(struct.pack(">HHHB", tid, proto, len(resp) + 1, unit) + resp)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _rtu_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        deframer = RtuDeframer()
        while True:
            data = await reader.read(512)
            if not data:
                return
            for frame in deframer.feed(data):
                t_in = time.monotonic()
                out = self.rtu_reply(frame)
                if out is not None:
                    writer.write(out)
                    await writer.drain()
                    if self.trace is not None:
                        self.trace.append((t_in, time.monotonic(), frame[0]))

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._client, host, port)
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server:
            self._server.close()
            await self._server.wait_closed()


class SerialMeterServer:
    """Serves RTU on a serial port, or on a new pseudo-terminal (`device="pty"`) for tests.

    With a pty the simulator keeps the other end open, so a client can open and close the path it
    prints as often as it likes, like a USB-RS485 adapter.
    """

    def __init__(self, server: MeterServer, device: str, baud: int = 9600, parity: str = "N",
                 data_bits: int = 8, stop_bits: int = 1) -> None:
        self.server = server
        self.device = device
        self.settings = (baud, parity, data_bits, stop_bits)
        self.path = device
        self._fd = -1
        self._keep: list = []
        self._deframer = RtuDeframer()

    def start(self) -> str:
        import os
        import tty
        loop = asyncio.get_running_loop()
        if self.device == "pty":
            master, slave = os.openpty()
            tty.setraw(slave)
            self.path = os.ttyname(slave)
            self._fd = master
            self._keep.append(slave)
        else:
            import serial
            baud, parity, data_bits, stop_bits = self.settings
            port = serial.Serial(self.device, baudrate=baud, parity=parity, bytesize=data_bits,
                                 stopbits=stop_bits, timeout=0, exclusive=True)
            self._keep.append(port)
            self._fd = port.fileno()
        os.set_blocking(self._fd, False)
        loop.add_reader(self._fd, self._readable)
        return self.path

    def _readable(self) -> None:
        import os
        try:
            data = os.read(self._fd, 512)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return  # EIO on a pty while no one has the other end open
        for frame in self._deframer.feed(data):
            out = self.server.rtu_reply(frame)
            if out is not None:
                try:
                    os.write(self._fd, out)
                except OSError:
                    pass

    def stop(self) -> None:
        import os
        if self._fd >= 0:
            asyncio.get_running_loop().remove_reader(self._fd)
        for k in self._keep:
            if isinstance(k, int):
                os.close(k)
            else:
                k.close()
        if self.device == "pty" and self._fd >= 0:
            os.close(self._fd)
        self._fd = -1
