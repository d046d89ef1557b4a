"""Where the collector writes: InfluxDB 1.x (/write) or 2.x/3.x (/api/v2/write)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class SinkUnavailable(Exception):
    """The sink cannot take writes now (down, overloaded, 5xx): do not ack; the edge resends."""


@dataclass
class WriteResult:
    written: int
    refused: int = 0
    detail: str = ""


class Sink(Protocol):
    async def write(self, lines: str, count: int) -> WriteResult: ...
    async def ping(self) -> bool: ...
    async def close(self) -> None: ...


def make_sink(cfg) -> Sink:
    if cfg.type == "influxdb1":
        from collector.sinks.influx1 import Influx1Sink
        return Influx1Sink(cfg)
    from collector.sinks.influx2 import Influx2Sink
    return Influx2Sink(cfg)
