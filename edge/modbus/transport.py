"""Modbus transports: one `Bus` per TCP endpoint or serial line, shared by the meters on it.

- Modbus TCP (`tcp`): up to `max_parallel` connections to one endpoint, one request in flight on each
  (pymodbus serialises requests per client), so a gateway in front of many meters is read in parallel.
- RTU over TCP (`rtu_over_tcp`, serial device servers) and RTU on a serial port (`serial`): one RS-485
  bus carries one transaction at a time, with the inter-frame gap (3.5 character times) between them.

Every failure becomes a `LinkError` subclass whose str() tells the installer what is wrong and what to do.
Live polls take the bus before probes of meters that stopped answering (`PriorityGate`), so a dead
meter never holds up the readings of the others on its bus for longer than one probe.
"""

from __future__ import annotations

import asyncio
import errno
import heapq
import itertools
import logging
import os
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from edge.registry import Transport

# pymodbus logs every timeout at ERROR; the poller logs what matters once per state change.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

LIVE = 0    # priority of a poll of a meter that answers
PROBE = 1   # priority of a probe of a meter that stopped answering

EXCEPTION_NAMES = {
    1: "illegal function", 2: "illegal data address", 3: "illegal data value", 4: "server device failure",
    5: "acknowledge", 6: "server device busy", 8: "memory parity error",
    10: "gateway path unavailable", 11: "gateway target device failed to respond",
}
#: Exception codes a TCP gateway sends on behalf of a meter that did not answer: the meter is silent.
GATEWAY_NO_ANSWER = frozenset({10, 11})


class LinkError(Exception):
    """A failed request; str() is for the installer. `kind` names the counter."""

    kind = "error"


class NoAnswer(LinkError):
    kind = "timeout"


class ConnectFailed(LinkError):
    kind = "connect"


class BadFrame(LinkError):
    kind = "bad_frame"


class WrongUnit(LinkError):
    kind = "wrong_unit"


class ExceptionReply(LinkError):
    kind = "exception"

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class SerialLine:
    """Settings of one RS-485 line; every meter on a bus must share them."""

    baud: int = 9600
    parity: str = "N"
    data_bits: int = 8
    stop_bits: int = 1

    def describe(self) -> str:
        return f"{self.baud} {self.data_bits}{self.parity}{self.stop_bits}"


def inter_frame_gap(line: SerialLine) -> float:
    """Seconds of silence between RTU frames: 3.5 character times; fixed 1.75 ms above 19200 baud
    (Modbus over serial line V1.02, 2.5.1.1)."""
    if line.baud > 19200:
        return 0.00175
    bits = 1 + line.data_bits + (0 if line.parity == "N" else 1) + line.stop_bits
    return 3.5 * bits / line.baud


def serial_line(transport: Transport, profile_serial=None) -> SerialLine:
    """The line settings of a device: its registration first, then its profile's factory defaults."""
    s = profile_serial
    return SerialLine(
        baud=transport.baud or (s.baud if s else 9600),
        parity=(transport.parity or (s.parity if s else "N")).upper(),
        data_bits=transport.data_bits or (s.data_bits if s else 8),
        stop_bits=transport.stop_bits or (s.stop_bits if s else 1),
    )


class PriorityGate:
    """A semaphore that hands free slots to the lowest priority number first, FIFO within one."""

    def __init__(self, slots: int) -> None:
        self._free = slots
        self._waiters: list[tuple[int, int, asyncio.Future]] = []
        self._seq = itertools.count()

    @property
    def waiting(self) -> int:
        return sum(1 for *_, f in self._waiters if not f.done())

    @asynccontextmanager
    async def hold(self, priority: int = LIVE) -> AsyncIterator[None]:
        if self._free > 0 and not self.waiting:
            self._free -= 1
        else:
            fut = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiters, (priority, next(self._seq), fut))
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self._release()  # we were handed the slot just as we were cancelled
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        while self._waiters:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(None)
                return
        self._free += 1


def _serial_problem(device: str) -> str:
    """Why a serial port cannot be opened, in words an installer can act on."""
    if not os.path.exists(device):
        return (f"serial port {device} does not exist: check the USB-RS485 adapter is plugged in and the name "
                "(ls /dev/ttyUSB* /dev/ttyS* /dev/serial/by-id/)")
    try:
        import serial  # pyserial, a dependency of pymodbus' serial client
        port = serial.Serial(device, exclusive=True, timeout=0)
        port.close()
    except (OSError, ValueError) as exc:  # serial.SerialException is an OSError
        text = str(exc)
        if "lock" in text.lower() or getattr(exc, "errno", None) in (errno.EAGAIN, errno.EBUSY):
            return (f"serial port {device} is busy: another program holds it (a running poplar-edge agent, "
                    "mbpoll, a terminal?); stop it and try again")
        if getattr(exc, "errno", None) == errno.EACCES or "permission" in text.lower():
            return f"no permission to open serial port {device}: add this user to the dialout group"
        return f"cannot open serial port {device}: {text}"
    return f"cannot open serial port {device} (it opened on a second try; retrying)"


class Link:
    """One pymodbus client (one connection or one open serial port), one request at a time."""

    def __init__(self, transport: Transport, timeout: float, line: SerialLine | None) -> None:
        self.transport = transport
        self.timeout = timeout
        self._units_seen: list[int] = []
        self._failed_at = -1e9
        self._last_problem = ""
        framer = FramerType.SOCKET if transport.kind == "tcp" else FramerType.RTU
        self._unit_at = 6 if framer == FramerType.SOCKET else 0  # where the unit id sits in a frame
        if transport.kind == "serial":
            assert line is not None and transport.device
            self.client = AsyncModbusSerialClient(
                transport.device, framer=FramerType.RTU, baudrate=line.baud, bytesize=line.data_bits,
                parity=line.parity, stopbits=line.stop_bits, timeout=timeout, retries=0, reconnect_delay=0,
                trace_packet=self._trace)
        else:
            self.client = AsyncModbusTcpClient(
                transport.host or "", port=transport.port or 502, framer=framer, timeout=timeout, retries=0,
                reconnect_delay=0, trace_packet=self._trace)

    def _trace(self, sending: bool, data: bytes) -> bytes:
        # Remember which unit ids answered, to tell "wrong unit answering" from "no answer".
        if not sending and len(data) > self._unit_at:
            self._units_seen.append(data[self._unit_at])
        return data

    async def ensure(self) -> None:
        if self.client.connected:
            return
        # Many meters share a link: after a failed connect, fail fast for a moment instead of
        # letting each of them wait a full connect timeout on the same dead endpoint.
        if time.monotonic() - self._failed_at < min(self.timeout, 1.0):
            raise ConnectFailed(self._last_problem)
        ok = False
        try:
            async with asyncio.timeout(self.timeout + 1):
                ok = await self.client.connect()
        except (TimeoutError, OSError, ModbusException):
            ok = False
        if ok and self.client.connected:
            return
        self.client.close()
        self._failed_at = time.monotonic()
        t = self.transport
        if t.kind == "serial":
            self._last_problem = _serial_problem(t.device or "")
        else:
            what = "Modbus TCP device" if t.kind == "tcp" else "serial device server"
            self._last_problem = (f"cannot connect to {what} {t.host}:{t.port}: check the address, the network "
                                  "cable and that it is powered")
        raise ConnectFailed(self._last_problem)

    async def read(self, unit: int, function: int, address: int, count: int) -> list:
        await self.ensure()
        c = self.client
        fn = {1: c.read_coils, 2: c.read_discrete_inputs, 3: c.read_holding_registers,
              4: c.read_input_registers}[function]
        where = f"unit {unit} ({self.transport.describe()})"
        what = f"fc {function} address 0x{address:04X} x{count}"
        self._units_seen.clear()
        try:
            async with asyncio.timeout(self.timeout * 2 + 1):  # a guard; pymodbus times out first
                rr = await fn(address, count=count, device_id=unit)
        except (ModbusIOException, TimeoutError) as exc:
            others = sorted({u for u in self._units_seen if u != unit})
            if others:
                raise WrongUnit(f"{where}: unit {others[0]} answered a request for unit {unit} ({what}); two "
                                "meters on this bus may share a unit id: give each its own (or this port "
                                "does not speak Modbus: check the port number)") from None
            if self._units_seen:
                raise BadFrame(f"{where}: answer to {what} could not be decoded ({exc}); check wiring, "
                               "termination and line settings") from None
            raise NoAnswer(f"{where}: no answer to {what} within {self.timeout:g} s; check the unit id, the "
                           "wiring (A/B) and that the meter is powered") from None
        except ConnectionException:
            self.client.close()
            raise ConnectFailed(f"{where}: connection lost during {what}") from None
        except (ModbusException, ValueError, IndexError, KeyError) as exc:  # pymodbus could not parse the frame
            raise BadFrame(f"{where}: garbled answer to {what}: {exc}") from None
        if rr.isError():
            code = int(getattr(rr, "exception_code", 0) or 0)
            name = EXCEPTION_NAMES.get(code, "unknown exception")
            if code in GATEWAY_NO_ANSWER:
                raise NoAnswer(f"{where}: the gateway says the meter did not answer {what} (exception {code}, "
                               f"{name}); check the unit id and the RS-485 wiring behind the gateway")
            raise ExceptionReply(f"{where}: the meter refused {what} with Modbus exception {code} ({name})", code)
        if getattr(rr, "dev_id", unit) not in (unit, 0):
            raise WrongUnit(f"{where}: unit {rr.dev_id} answered a request for unit {unit}")
        return list(rr.bits[:count]) if function in (1, 2) else list(rr.registers)

    def close(self) -> None:
        self.client.close()


class Bus:
    """The meters behind one TCP endpoint or on one serial line, and the rules of talking to them."""

    def __init__(self, transport: Transport, timeout: float, parallel: int = 1,
                 line: SerialLine | None = None) -> None:
        self.transport = transport
        self.key = transport.endpoint()
        self.line = line
        serial_bus = transport.kind in ("serial", "rtu_over_tcp")
        # One RS-485 line carries one transaction at a time, whatever the configured parallelism.
        n = 1 if serial_bus else max(1, parallel)
        self.gap = inter_frame_gap(line) if serial_bus and line else 0.0
        self._free = [Link(transport, timeout, line) for _ in range(n)]
        self._links = list(self._free)
        self.gate = PriorityGate(n)
        self._last_end = 0.0
        self.requests = 0

    def describe(self) -> str:
        extra = f" {self.line.describe()}" if self.line and self.transport.kind == "serial" else ""
        return f"{self.transport.describe()}{extra}"

    async def read(self, unit: int, function: int, address: int, count: int, priority: int = LIVE) -> list:
        async with self.gate.hold(priority):
            link = self._free.pop()
            try:
                if self.gap:
                    wait = self._last_end + self.gap - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                self.requests += 1
                return await link.read(unit, function, address, count)
            finally:
                self._last_end = time.monotonic()
                self._free.append(link)

    def close(self) -> None:
        for link in self._links:
            link.close()
