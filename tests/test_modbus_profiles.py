"""Shipped Modbus profiles load, follow the normalised schema, and bad profiles are refused
with errors naming file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.yamlconf import ConfigError
from edge.modbus.plan import plan_reads
from edge.modbus.profile import NORMALISED_UNITS, base_field, load_all_profiles, load_modbus_profile

PROFILES = Path(__file__).resolve().parent.parent / "device_profiles"
SHIPPED = ["eastron-sdm120", "eastron-sdm630", "chint-ddsu666", "chint-dtsu666", "hiking-dds238-2",
           "acrel-adw300"]


@pytest.mark.parametrize("pid", SHIPPED)
def test_shipped_profile_loads_and_is_normalised(pid):
    p = load_modbus_profile(PROFILES / f"{pid}.yaml")
    assert p.id == pid and p.kind == "modbus" and p.sources
    assert p.serial is not None
    fields = {r.field for r in p.polled_registers()}
    for must in ("voltage", "current", "active_power", "energy_import"):
        assert any(base_field(f) == must for f in fields), (pid, must)
    for r in p.polled_registers():
        assert not r.field.startswith("cfg_"), "configuration registers must be poll: false"
        if base_field(r.field) in NORMALISED_UNITS:
            assert r.unit == NORMALISED_UNITS[base_field(r.field)]
    assert plan_reads(p)


def test_all_shipped_profiles_are_found():
    assert set(SHIPPED) <= set(load_all_profiles(PROFILES))


def test_quirks_of_the_models():
    sdm120 = load_modbus_profile(PROFILES / "eastron-sdm120.yaml")
    assert (sdm120.serial.baud, sdm120.limits.max_registers) == (2400, 80)
    assert sdm120.limits.even_address and sdm120.limits.even_count
    sdm630 = load_modbus_profile(PROFILES / "eastron-sdm630.yaml")
    assert sdm630.serial.baud == 9600 and sdm630.limits.even_count and sdm630.phases == 3
    dtsu = load_modbus_profile(PROFILES / "chint-dtsu666.yaml")
    assert dtsu.register("voltage_l1").address == 0x2006      # 0x2000 is Uab, not Ua
    assert dtsu.register("voltage_l1").scale == 0.1
    assert dtsu.register("current_l1").scale == 0.001
    assert dtsu.register("frequency").scale == 0.01
    ddsu = load_modbus_profile(PROFILES / "chint-ddsu666.yaml")
    assert ddsu.register("active_power").scale == 1000           # kW -> W
    dds = load_modbus_profile(PROFILES / "hiking-dds238-2.yaml")
    assert dds.register("reactive_power").type == "int16"
    assert len(plan_reads(dds)) == 1


GOOD = """\
id: {id}
kind: modbus
vendor: V
model: M
sources: [test]
limits: {{max_registers: 80, even_address: true, even_count: true}}
registers:
  - field: voltage
    address: 0x0000
    function: 4
    type: float32
    unit: V
{extra}"""


def write(tmp_path, extra="", id_="tp", name="tp"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(GOOD.format(id=id_, extra=extra), encoding="utf-8")
    return path


def error_of(path) -> str:
    with pytest.raises(ConfigError) as ei:
        load_modbus_profile(path)
    return str(ei.value)


def test_minimal_profile_defaults(tmp_path):
    p = load_modbus_profile(write(tmp_path))
    r = p.registers[0]
    assert (r.byte_order, r.word_order, r.scale, r.offset, r.poll) == ("big", "big", 1.0, 0.0, True)
    assert p.measurement == "meter" and p.limits.max_gap == 0 and p.defaults.unit_id == 1


def test_profile_orders_are_inherited_and_overridable(tmp_path):
    path = tmp_path / "tp.yaml"
    path.write_text(GOOD.format(id="tp", extra="""\
  - {field: current, address: 6, function: 4, type: float32, unit: A, word_order: big}
""").replace("\nregisters:", "\nword_order: little\nregisters:"), encoding="utf-8")
    p = load_modbus_profile(path)
    assert p.register("voltage").word_order == "little"
    assert p.register("current").word_order == "big"


def test_id_must_match_file_name(tmp_path):
    msg = error_of(write(tmp_path, id_="other"))
    assert msg.startswith(f"{tmp_path / 'tp.yaml'}:1: id:") and "'tp'" in msg


def test_overlap_names_both_fields_and_the_line(tmp_path):
    msg = error_of(write(tmp_path, extra="""\
  - field: current
    address: 0x0001
    function: 4
    type: float32
    unit: A
"""))
    assert ":14: registers[1].address:" in msg   # the line of the clashing address
    assert "current" in msg and "voltage" in msg and "overlaps" in msg


def test_same_address_in_another_function_is_no_overlap(tmp_path):
    load_modbus_profile(write(tmp_path, extra="  - {field: cfg_id, address: 0, function: 3, type: uint16, poll: false}\n"))


def test_duplicate_field_is_refused(tmp_path):
    msg = error_of(write(tmp_path, extra="  - {field: voltage, address: 8, function: 4, type: float32, unit: V}\n"))
    assert ":13: registers[1].field:" in msg and "used twice" in msg


@pytest.mark.parametrize("extra, where, words", [
    ("  - {field: x, address: 8, function: 4, type: float16}\n", "registers[1].type", "float16"),
    ("  - {field: x, address: 8, function: 1, type: uint16}\n", "registers[1]", "function 1 reads bits"),
    ("  - {field: x, address: 8, function: 3, type: uint16, bit: 2}\n", "registers[1]", "only for type bool"),
    ("  - {field: x, address: 8, function: 4, type: float32, count: 1}\n", "registers[1]", "takes 2 register"),
    ("  - {field: x, address: 8, function: 4, type: string}\n", "registers[1]", "needs count"),
    ("  - {field: x, address: 70000, function: 4, type: uint16}\n", "registers[1].address", "0..65535"),
    ("  - {field: x, address: 0xFFFF, function: 4, type: uint32}\n", "registers[1]", "runs past"),
    ("  - {field: x, address: 8, function: 5, type: uint16}\n", "registers[1].function", ""),
    ("  - {field: active_power, address: 8, function: 4, type: float32, unit: kW}\n", "registers[1]",
     "scale"),
    ("  - {field: x, address: 8, function: 4, type: string, count: 100}\n", "registers[1].count",
     "max_registers"),
    ("  - {field: voltage_l1, address: 8, function: 4, type: float32, unit: V}\n", "registers[1].field",
     "single-phase"),
    ("  - {field: x, address: 8, function: 4, type: uint16, scal: 2}\n", "registers[1].scal", "not a known"),
    ("  - {field: Bad-Name, address: 8, function: 4, type: uint16}\n", "registers[1].field", ""),
    ("  - {field: x, address: 8, function: 4, type: uint16, scale: 0}\n", "registers[1].scale", "not be 0"),
])
def test_bad_register_is_refused_with_file_line_and_field(tmp_path, extra, where, words):
    msg = error_of(write(tmp_path, extra=extra))
    assert msg.startswith(f"{tmp_path / 'tp.yaml'}:13: {where}"), msg
    assert words in msg


def test_bad_serial_and_limits(tmp_path):
    path = tmp_path / "tp.yaml"
    path.write_text(GOOD.format(id="tp", extra="").replace(
        "limits: {max_registers: 80, even_address: true, even_count: true}",
        "serial: {baud: 9600, parity: X}\nlimits: {max_registers: 200}"), encoding="utf-8")
    msg = error_of(path)
    assert ":6: serial.parity:" in msg
    assert ":7: limits.max_registers:" in msg


def test_missing_file_and_bad_yaml(tmp_path):
    assert "file not found" in error_of(tmp_path / "nope.yaml")
    bad = tmp_path / "tp.yaml"
    bad.write_text("id: tp\nregisters: [\n", encoding="utf-8")
    assert "not valid YAML" in error_of(bad)
