"""Read one meter once: run its plan on a bus, retry what is worth retrying, keep what was read.

Used by the poller on every poll and by `poplar-edge read` / `devices test`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from common.points import clean_fields
from edge.modbus.decode import Value
from edge.modbus.plan import ReadRequest, decode_reads
from edge.modbus.transport import LIVE, BadFrame, Bus, ConnectFailed, ExceptionReply, LinkError, NoAnswer

#: Pause before retry n (1-based) of one request: short, so a retry stays inside the poll interval.
RETRY_BACKOFF_S = (0.05, 0.2, 0.5)


@dataclass
class Reading:
    values: dict[str, Value] = field(default_factory=dict)
    requests: int = 0                                    # requests sent, retries included
    problems: list[LinkError] = field(default_factory=list)
    answered: bool = False                               # the meter answered at least one request

    @property
    def complete(self) -> bool:
        return self.answered and not self.problems


def clean_values(values: dict[str, Value]) -> dict[str, Value]:
    """Drop what no InfluxDB field can hold (NaN/inf from an unset float register)."""
    return clean_fields(values)[0]


async def read_meter(bus: Bus, unit: int, plan: Sequence[ReadRequest], retries: int = 1,
                     priority: int = LIVE) -> Reading:
    """Run every request of PLAN. Never raises for the meter's faults: they land in Reading.problems.

    A timeout or garbled answer is retried up to RETRIES times (the bus is released in between, so
    other meters go first). An exception reply is the meter's answer and is not retried; the other
    requests still run, so one refused block does not lose the rest. If the meter has answered
    nothing and a request gets no answer, the poll stops: the remaining requests would only spend
    bus time that live meters need.
    """
    out = Reading()
    for req in plan:
        attempt = 0
        while True:
            out.requests += 1
            try:
                data = await bus.read(unit, req.function, req.address, req.count, priority)
                try:
                    out.values.update(decode_reads(req, data))
                except ValueError as exc:
                    raise BadFrame(f"unit {unit} ({bus.describe()}): {exc}") from None
                out.answered = True
                break
            except ExceptionReply as exc:
                out.answered = True
                out.problems.append(exc)
                break
            except LinkError as exc:
                if isinstance(exc, BadFrame):
                    out.answered = True  # something answered, if garbled
                if attempt >= retries:
                    out.problems.append(exc)
                    if isinstance(exc, (NoAnswer, ConnectFailed)) and not out.answered:
                        return out
                    break
                await asyncio.sleep(RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)])
                attempt += 1
    out.values = clean_values(out.values)
    return out
