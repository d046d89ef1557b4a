"""Request planning: read a meter in as few Modbus requests as its register map allows.

Pure functions. `plan_reads` merges the polled registers of a profile into requests, honouring
the meter's quirks (max registers per request, even start address / count); `decode_reads`
decodes one response; `describe_plan` prints the plan for `poplar-edge profiles plan`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .decode import Value, decode_bits, decode_value
from .profile import BIT_FUNCTIONS, ModbusProfile, RegisterSpec

_TOP = 0x10000  # one past the last Modbus address


@dataclass(frozen=True)
class ReadRequest:
    function: int
    address: int
    count: int
    registers: tuple[RegisterSpec, ...]

    @property
    def end(self) -> int:
        return self.address + self.count


def _aligned(start: int, end: int, function: int, profile: ModbusProfile) -> tuple[int, int]:
    """The (address, count) the meter accepts for the span [start, end).

    Eastron meters answer exception 2 to an odd start or odd count, so widen by one register
    (down for the start, up for the count; down if up would pass 0xFFFF). Bits have no such quirk.
    """
    lim = profile.limits
    if function in BIT_FUNCTIONS:
        return start, end - start
    if lim.even_address and start % 2:
        start -= 1
    count = end - start
    if lim.even_count and count % 2:
        if end < _TOP:
            count += 1
        else:  # only reachable with an odd start; widening down keeps inside the address space
            start -= 1
            count += 1
    return start, count


def _max_count(function: int, profile: ModbusProfile) -> int:
    return profile.limits.max_bits if function in BIT_FUNCTIONS else profile.limits.max_registers


def plan_reads(profile: ModbusProfile, max_gap: int | None = None) -> list[ReadRequest]:
    """Merge the polled registers into the fewest requests the profile allows.

    Registers of one function code are sorted by address and merged greedily while the run of
    unneeded registers between them is at most MAX_GAP (profile limits.max_gap if None) and the
    aligned request stays within the limit. A value is never split across requests. Greedy is
    optimal here: any sub-run of a feasible run is feasible, so extending the current request as
    far as possible never costs a request later.
    """
    gap_limit = profile.limits.max_gap if max_gap is None else max_gap
    if gap_limit < 0:
        raise ValueError("max_gap must be >= 0")
    by_fc: dict[int, list[RegisterSpec]] = {}
    for reg in profile.polled_registers():
        by_fc.setdefault(reg.function, []).append(reg)
    plan: list[ReadRequest] = []
    for fc in sorted(by_fc):
        regs = sorted(by_fc[fc], key=lambda r: (r.address, r.end, r.bit or 0))
        limit = _max_count(fc, profile)
        group: list[RegisterSpec] = [regs[0]]
        start, end = regs[0].address, regs[0].end
        for reg in regs[1:]:
            new_end = max(end, reg.end)
            if reg.address - end <= gap_limit and _aligned(start, new_end, fc, profile)[1] <= limit:
                group.append(reg)
                end = new_end
                continue
            plan.append(_request(fc, start, end, group, profile))
            group, start, end = [reg], reg.address, reg.end
        plan.append(_request(fc, start, end, group, profile))
    return plan


def _request(fc: int, start: int, end: int, group: list[RegisterSpec], profile: ModbusProfile) -> ReadRequest:
    address, count = _aligned(start, end, fc, profile)
    return ReadRequest(fc, address, count, tuple(group))


def decode_reads(request: ReadRequest, values: Sequence[int | bool]) -> dict[str, Value]:
    """Decode every value of REQUEST from its response (registers, or bits for fc 1/2).

    Raises ValueError on a response of the wrong length: decoding it would shift every value.
    Bit responses may carry up to 7 padding bits (pymodbus returns whole bytes).
    """
    n = len(values)
    if request.function in BIT_FUNCTIONS:
        if not request.count <= n < request.count + 8:
            raise ValueError(f"fc {request.function} at 0x{request.address:04X}: expected {request.count} "
                             f"bits, got {n}")
    elif n != request.count:
        raise ValueError(f"fc {request.function} at 0x{request.address:04X}: expected {request.count} "
                         f"registers, got {n}")
    out: dict[str, Value] = {}
    for spec in request.registers:
        i = spec.address - request.address
        chunk = values[i:i + spec.width]
        if request.function in BIT_FUNCTIONS:
            out[spec.field] = decode_bits(spec, chunk)
        else:
            out[spec.field] = decode_value(spec, chunk)  # type: ignore[arg-type]
    return out


def describe_plan(profile: ModbusProfile, plan: Sequence[ReadRequest]) -> str:
    """Human-readable table of the requests of PLAN."""
    fields = sum(len(r.registers) for r in plan)
    words = sum(r.count for r in plan if r.function not in BIT_FUNCTIONS)
    lines = [f"{profile.id} ({profile.vendor} {profile.model}): {len(plan)} request(s) for "
             f"{fields} field(s), {words} register(s) read; {', '.join(profile.limits.describe())}",
             f"{'fc':>3}  {'start':<6}  {'end':<6}  {'count':>5}  fields"]
    for r in plan:
        names = ", ".join(s.field for s in r.registers)
        lines.append(f"{r.function:>3}  0x{r.address:04X}  0x{r.end - 1:04X}  {r.count:>5}  {names}")
    return "\n".join(lines)
