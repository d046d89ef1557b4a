"""Modbus device profiles: one YAML file per meter model, validated once on load.

A profile says where each value lives (function code, address, type, byte and word order),
how to turn the raw number into a normalised physical value (scale, offset, unit), and which
request quirks the meter has (max registers per request, even start address and count).
The schema is documented for profile authors in docs/profiles-modbus.md.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from common.yamlconf import ConfigError, format_loc, load_yaml_with_lines, validation_problems

RegisterType = Literal["int16", "uint16", "int32", "uint32", "int64", "uint64",
                       "float32", "float64", "string", "bool"]
Order = Literal["big", "little"]

#: Registers a value of each type occupies; strings take `count`, bools one register or one bit.
TYPE_WIDTH: dict[str, int] = {
    "int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "int64": 4, "uint64": 4,
    "float32": 2, "float64": 4, "bool": 1,
}
INTEGER_TYPES = frozenset({"int16", "uint16", "int32", "uint32", "int64", "uint64"})
FLOAT_TYPES = frozenset({"float32", "float64"})
BIT_FUNCTIONS = frozenset({1, 2})          # read coils / discrete inputs
REGISTER_FUNCTIONS = frozenset({3, 4})     # read holding / input registers

#: Normalised fields and their units, so central IT can sum across meter models.
#: Three-phase per-phase values add _l1/_l2/_l3 (line-to-line voltages: voltage_l1_l2 ...).
NORMALISED_UNITS: dict[str, str] = {
    "voltage": "V", "current": "A", "active_power": "W", "reactive_power": "var",
    "apparent_power": "VA", "power_factor": "", "frequency": "Hz",
    "energy_import": "kWh", "energy_export": "kWh", "energy_total": "kWh",
}
_PHASE_SUFFIX = re.compile(r"(_l[123])+$")
_FIELD_NAME = r"^[a-z][a-z0-9_]*$"

# Modbus application protocol limits per request (PDU of 253 bytes).
MAX_REGISTERS_PER_READ = 125
MAX_BITS_PER_READ = 2000


def base_field(name: str) -> str:
    """`voltage_l1` -> `voltage`; `voltage_l1_l2` -> `voltage`."""
    return _PHASE_SUFFIX.sub("", name)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SerialSettings(_Strict):
    baud: int = Field(gt=0, le=921600)
    parity: Literal["N", "E", "O"] = "N"
    data_bits: Literal[7, 8] = 8
    stop_bits: Literal[1, 2] = 1


class PollDefaults(_Strict):
    unit_id: int = Field(1, ge=1, le=247)
    interval_s: float = Field(60, gt=0)


class Limits(_Strict):
    #: Largest register count one fc 3/4 request may ask for.
    max_registers: int = Field(MAX_REGISTERS_PER_READ, ge=1, le=MAX_REGISTERS_PER_READ)
    #: Largest bit count one fc 1/2 request may ask for.
    max_bits: int = Field(MAX_BITS_PER_READ, ge=1, le=MAX_BITS_PER_READ)
    #: Meter refuses (exception 2) register reads starting at an odd address / of odd length.
    even_address: bool = False
    even_count: bool = False
    #: Largest run of undeclared registers the planner may read through to save a request.
    #: 0 by default: some meters answer exception 2 for holes in their map.
    max_gap: int = Field(0, ge=0, le=MAX_REGISTERS_PER_READ)

    def describe(self) -> list[str]:
        """The quirks in words, for `profiles show` and `profiles plan`."""
        out = [f"max {self.max_registers} registers per request", f"reads through gaps of up to {self.max_gap}"]
        if self.even_address:
            out.append("even start address only")
        if self.even_count:
            out.append("even register count only")
        return out

    @model_validator(mode="after")
    def _even_limit(self) -> "Limits":
        if self.even_count and self.max_registers < 2:
            raise ValueError("max_registers must be at least 2 when even_count is true")
        return self


class RegisterSpec(_Strict):
    field: str = Field(pattern=_FIELD_NAME)
    address: int
    function: Literal[1, 2, 3, 4]
    type: RegisterType
    count: int | None = Field(None, ge=1, le=MAX_REGISTERS_PER_READ)
    bit: int | None = Field(None, ge=0, le=15)
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""
    description: str = ""
    byte_order: Order = "big"
    word_order: Order = "big"
    poll: bool = True

    @field_validator("address", mode="before")
    @classmethod
    def _parse_address(cls, v: Any) -> Any:
        # YAML already reads 0x2000 as an int; accept a quoted "0x2000" too.
        if isinstance(v, str):
            try:
                return int(v, 0)
            except ValueError:
                raise ValueError("expected an address like 0x2000 or 8192") from None
        return v

    @field_validator("address")
    @classmethod
    def _address_range(cls, v: int) -> int:
        if not 0 <= v <= 0xFFFF:
            raise ValueError("address must be 0..65535 (0x0000..0xFFFF), the 0-based PDU address")
        return v

    @field_validator("scale")
    @classmethod
    def _scale_nonzero(cls, v: float) -> float:
        if v == 0:
            raise ValueError("scale must not be 0 (physical = raw * scale + offset)")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "RegisterSpec":
        t, fc = self.type, self.function
        if fc in BIT_FUNCTIONS and t != "bool":
            raise ValueError(f"function {fc} reads bits; type must be bool, got {t}")
        if fc in BIT_FUNCTIONS and self.bit is not None:
            raise ValueError(f"bit: only for a bool inside a register (function 3/4), not function {fc}")
        if self.bit is not None and t != "bool":
            raise ValueError(f"bit: only for type bool, got type {t}")
        if t == "string":
            if self.count is None:
                raise ValueError("count: a string needs count (the number of registers)")
        elif self.count is not None and self.count != TYPE_WIDTH[t]:
            raise ValueError(f"count: {t} takes {TYPE_WIDTH[t]} register(s), got count {self.count}")
        if t in ("string", "bool") and (self.scale != 1 or self.offset != 0):
            raise ValueError(f"scale/offset make no sense for type {t}")
        if self.address + self.width > 0x10000:
            raise ValueError(f"address 0x{self.address:04X} + {self.width} registers runs past 0xFFFF")
        base = base_field(self.field)
        if base in NORMALISED_UNITS and self.unit != NORMALISED_UNITS[base]:
            want = NORMALISED_UNITS[base] or "'' (dimensionless)"
            raise ValueError(f"unit: {self.field} is a normalised field in {want}; got {self.unit!r} "
                             "(convert the meter's unit with scale)")
        return self

    @property
    def is_quantity(self) -> bool:
        """A measured quantity (normalised field, or any field with a physical unit) is always a
        float: InfluxDB keeps one type per field, and another meter model stores the same field as
        a float; an integer here would make InfluxDB refuse one of them (field type conflict)."""
        return base_field(self.field) in NORMALISED_UNITS or self.unit not in ("", "-", "code", "count")

    @property
    def width(self) -> int:
        """Registers (fc 3/4) or bits (fc 1/2) the value occupies."""
        if self.type == "string":
            return self.count or 0
        return TYPE_WIDTH[self.type]

    @property
    def end(self) -> int:
        """One past the last address occupied."""
        return self.address + self.width

    def span(self) -> str:
        return f"0x{self.address:04X}..0x{self.end - 1:04X}"


class RegisterConflict(ValueError):
    """A problem between registers; carries the location of the offending register."""

    def __init__(self, message: str, loc: tuple) -> None:
        super().__init__(message)
        self.loc = loc


class ModbusProfile(_Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    kind: Literal["modbus"]
    vendor: str
    model: str
    description: str = ""
    sources: list[str] = Field(min_length=1)
    measurement: str = "meter"
    phases: Literal[1, 3] = 1
    serial: SerialSettings | None = None
    defaults: PollDefaults = PollDefaults()
    limits: Limits = Limits()
    byte_order: Order = "big"
    word_order: Order = "big"
    registers: list[RegisterSpec] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _inherit_orders(cls, data: Any) -> Any:
        # Profile-level byte/word order is the default of every register that names none.
        if not isinstance(data, dict) or not isinstance(data.get("registers"), list):
            return data
        inherit = {k: data[k] for k in ("byte_order", "word_order") if k in data}
        if not inherit:
            return data
        regs = [{**inherit, **r} if isinstance(r, dict) else r for r in data["registers"]]
        return {**data, "registers": regs}

    @model_validator(mode="after")
    def _cross_checks(self) -> "ModbusProfile":
        seen: dict[str, int] = {}
        for i, reg in enumerate(self.registers):
            if reg.field in seen:
                raise RegisterConflict(
                    f"field name {reg.field!r} is used twice (registers[{seen[reg.field]}] and [{i}])",
                    ("registers", i, "field"))
            seen[reg.field] = i
            if self.phases == 1 and _PHASE_SUFFIX.search(reg.field):
                raise RegisterConflict(f"{reg.field}: a single-phase profile has no _l1/_l2/_l3 fields",
                                       ("registers", i, "field"))
            self._check_fits_request(i, reg)
        self._check_overlaps()
        return self

    def _check_fits_request(self, i: int, reg: RegisterSpec) -> None:
        if reg.function in BIT_FUNCTIONS:
            return
        lim = self.limits
        start = reg.address - (reg.address % 2 if lim.even_address else 0)
        count = reg.end - start
        count += count % 2 if lim.even_count else 0
        if count > lim.max_registers:
            raise RegisterConflict(
                f"{reg.field} needs a {count}-register read, more than limits.max_registers "
                f"({lim.max_registers})", ("registers", i, "count" if reg.type == "string" else "address"))

    def _check_overlaps(self) -> None:
        # Two values in the same register are a typo, except distinct bits of one status word.
        order = sorted(range(len(self.registers)),
                       key=lambda k: (self.registers[k].function, self.registers[k].address))
        active: list[int] = []
        for k in order:
            reg = self.registers[k]
            active = [j for j in active if self.registers[j].function == reg.function
                      and self.registers[j].end > reg.address]
            for j in active:
                other = self.registers[j]
                if reg.bit is not None and other.bit is not None and reg.bit != other.bit:
                    continue
                raise RegisterConflict(
                    f"{reg.field} ({reg.span()}) overlaps {other.field} ({other.span()}, "
                    f"registers[{j}]) in function {reg.function}", ("registers", k, "address"))
            active.append(k)

    def polled_registers(self) -> list[RegisterSpec]:
        """The registers read on every poll (configuration registers are `poll: false`)."""
        return [r for r in self.registers if r.poll]

    def register(self, field: str) -> RegisterSpec:
        for r in self.registers:
            if r.field == field:
                return r
        raise KeyError(field)


class _Errors:
    """Duck-types ValidationError.errors() for yamlconf.validation_problems on a subset."""

    def __init__(self, errors: list) -> None:
        self._errors = errors

    def errors(self) -> list:
        return self._errors


def _line(lines: dict[tuple, int], loc: tuple) -> int | None:
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return lines.get(())


def load_modbus_profile(path: str | Path) -> ModbusProfile:
    """Read and validate one profile. Raises ConfigError naming file, line and field."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{source}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read: {exc}") from None
    data, lines = load_yaml_with_lines(text, source)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of settings at the top level")
    try:
        profile = ModbusProfile.model_validate(data)
    except ValidationError as exc:
        problems: list[str] = []
        plain = []
        for err in exc.errors():
            cause = (err.get("ctx") or {}).get("error")
            if isinstance(cause, RegisterConflict):
                line = _line(lines, cause.loc)
                where = f"{source}:{line}" if line else source
                problems.append(f"{where}: {format_loc(cause.loc)}: {cause}")
            else:
                plain.append(err)
        problems = validation_problems(_Errors(plain), source, lines) + problems  # type: ignore[arg-type]
        raise ConfigError("\n".join(problems), problems) from None
    if profile.id != path.stem:
        line = lines.get(("id",))
        raise ConfigError(f"{source}:{line}: id: must equal the file name {path.stem!r}, got {profile.id!r}")
    return profile


def load_all_profiles(directory: str | Path) -> dict[str, ModbusProfile]:
    """Every `kind: modbus` profile in DIRECTORY, by id. Other kinds are skipped."""
    out: dict[str, ModbusProfile] = {}
    for p in sorted(Path(directory).glob("*.yaml")):
        data, _ = load_yaml_with_lines(p.read_text(encoding="utf-8"), str(p))
        if isinstance(data, dict) and data.get("kind") == "modbus":
            out[p.stem] = load_modbus_profile(p)
    return out
