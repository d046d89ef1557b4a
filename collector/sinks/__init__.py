"""Where the collector writes: InfluxDB 1.x (/write) or 2.x/3.x (/api/v2/write).

Both sinks send from one worker thread of their own, over one kept-alive connection: writes
handed to a sink while it is busy wait in that thread's queue and go out the moment the one
before is answered, without waiting for the event loop (which is busy checking the next
batches), so InfluxDB never waits for the collector between two writes and never gets two at
once (on a shared host InfluxDB 1.x ingests no faster with two writes, and spends more CPU).
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Protocol, TypeVar

T = TypeVar("T")


class SinkUnavailable(Exception):
    """The sink cannot take writes now (down, overloaded, 5xx): do not ack; the edge resends."""


class BodyTooLarge(Exception):
    """The sink refuses a body this large (HTTP 413, InfluxDB's max-body-size): retrying the
    same body never helps; write it in parts."""


@dataclass
class WriteResult:
    written: int
    refused: int = 0
    detail: str = ""
    #: How long the HTTP request took (not the wait behind the write before it).
    seconds: float = 0.0


class Sink(Protocol):
    async def write(self, lines: str | bytes, count: int) -> WriteResult: ...
    async def ping(self) -> bool: ...
    async def close(self) -> None: ...


def make_sink(cfg) -> Sink:
    if cfg.type == "influxdb1":
        from collector.sinks.influx1 import Influx1Sink
        return Influx1Sink(cfg)
    from collector.sinks.influx2 import Influx2Sink
    return Influx2Sink(cfg)


class Sender:
    """The one worker thread a sink sends from (see the module doc)."""

    def __init__(self, name: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def run(self, fn: Callable[..., T], *args) -> tuple[T, float]:
        """fn(*args) in the sender thread, after the calls queued before it; and its duration."""
        def timed() -> tuple[T, float]:
            t = time.monotonic()
            return fn(*args), time.monotonic() - t
        return await asyncio.get_running_loop().run_in_executor(self._pool, timed)

    async def close(self, fn: Callable[[], object]) -> None:
        await self.run(fn)
        self._pool.shutdown(wait=False)


def body_bytes(lines: str | bytes) -> bytes:
    """The HTTP body: the collector hands over bodies ready to send; tests and tools pass text."""
    return lines if isinstance(lines, bytes) else lines.encode()
