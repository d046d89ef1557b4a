"""Request planning: coverage, limits, alignment, minimality, and decoding responses."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.modbus.decode import encode_value
from edge.modbus.plan import ReadRequest, decode_reads, describe_plan, plan_reads
from edge.modbus.profile import ModbusProfile, load_modbus_profile

PROFILES = Path(__file__).resolve().parent.parent / "device_profiles"


def make_profile(regs: list[dict], **limits) -> ModbusProfile:
    return ModbusProfile.model_validate({
        "id": "t", "kind": "modbus", "vendor": "v", "model": "m", "sources": ["test"],
        "limits": limits, "registers": regs})


def test_sdm120_plan_is_a_handful_of_aligned_requests():
    p = load_modbus_profile(PROFILES / "eastron-sdm120.yaml")
    plan = plan_reads(p)
    assert [(r.function, r.address, r.count) for r in plan] == [
        (4, 0x0000, 32), (4, 0x0046, 26), (4, 0x0156, 4)]
    assert {s.field for r in plan for s in r.registers} == {s.field for s in p.polled_registers()}
    assert "cfg_baud" not in {s.field for r in plan for s in r.registers}


def test_sdm630_respects_80_registers():
    p = load_modbus_profile(PROFILES / "eastron-sdm630.yaml")
    plan = plan_reads(p)
    assert max(r.count for r in plan) == 80
    assert plan[0].address == 0 and plan[0].count == 80


def test_gap_zero_reads_no_unneeded_register():
    p = load_modbus_profile(PROFILES / "eastron-sdm120.yaml")
    plan = plan_reads(p, max_gap=0)
    assert sum(r.count for r in plan) == 2 * len(p.polled_registers())


def test_even_quirk_widens_odd_start_and_count():
    p = make_profile([{"field": "a", "address": 3, "function": 3, "type": "uint16"},
                      {"field": "b", "address": 5, "function": 3, "type": "uint16"}],
                     even_address=True, even_count=True, max_gap=1, max_registers=80)
    (req,) = plan_reads(p)
    assert (req.address, req.count) == (2, 4)


def test_even_count_at_the_top_of_the_address_space_widens_down():
    p = make_profile([{"field": "a", "address": 0xFFFF, "function": 3, "type": "uint16"}], even_count=True)
    (req,) = plan_reads(p)
    assert (req.address, req.count) == (0xFFFE, 2)


def test_bits_are_planned_separately_from_registers():
    p = make_profile([{"field": "a", "address": 0, "function": 1, "type": "bool"},
                      {"field": "b", "address": 1, "function": 1, "type": "bool"},
                      {"field": "c", "address": 0, "function": 3, "type": "uint16"}], even_count=True)
    plan = plan_reads(p)
    assert [(r.function, r.address, r.count) for r in plan] == [(1, 0, 2), (3, 0, 2)]


def test_bits_of_one_status_word_share_a_request():
    p = make_profile([{"field": "alarm", "address": 7, "function": 3, "type": "bool", "bit": 0},
                      {"field": "door", "address": 7, "function": 3, "type": "bool", "bit": 3}])
    (req,) = plan_reads(p)
    assert (req.address, req.count) == (7, 1)
    assert decode_reads(req, [0b1000]) == {"alarm": False, "door": True}


def test_decode_reads_sdm120_response():
    p = load_modbus_profile(PROFILES / "eastron-sdm120.yaml")
    req = plan_reads(p)[0]
    regs = [0] * req.count
    regs[0:2] = [0x4366, 0x3334]
    regs[6:8] = encode_value(p.register("current"), 1.26)
    regs[0x0C:0x0E] = encode_value(p.register("active_power"), -196.3)
    out = decode_reads(req, regs)
    assert out["voltage"] == 230.20001
    assert out["current"] == 1.26
    assert out["active_power"] == -196.3
    assert set(out) == {s.field for s in req.registers}


def test_decode_reads_dtsu666_applies_scale():
    p = load_modbus_profile(PROFILES / "chint-dtsu666.yaml")
    req = next(r for r in plan_reads(p) if r.address == 0x2000)
    spec_raw = p.register("voltage_l1").model_copy(update={"scale": 1.0})
    regs = [0] * req.count
    regs[6:8] = encode_value(spec_raw, 2301.0)
    assert decode_reads(req, regs)["voltage_l1"] == 230.1


def test_wrong_length_response_is_a_clear_error():
    p = load_modbus_profile(PROFILES / "eastron-sdm120.yaml")
    req = plan_reads(p)[0]
    with pytest.raises(ValueError, match=r"expected 32 registers, got 31"):
        decode_reads(req, [0] * 31)
    bits = ReadRequest(1, 0, 3, ())
    assert decode_reads(bits, [False] * 8) == {}  # pymodbus pads bits to whole bytes
    with pytest.raises(ValueError, match="expected 3 bits"):
        decode_reads(bits, [False] * 2)


def test_describe_plan_lists_requests():
    p = load_modbus_profile(PROFILES / "eastron-sdm120.yaml")
    text = describe_plan(p, plan_reads(p))
    assert "3 request(s)" in text
    assert "0x0046" in text and "0x005F" in text
    assert "energy_total, reactive_energy_total" in text
    assert "even start address" in text


# --- property tests over random register maps ------------------------------------------------------

@st.composite
def register_maps(draw):
    n = draw(st.integers(1, 25))
    regs, addr = [], draw(st.integers(0, 200))
    for i in range(n):
        addr += draw(st.integers(0, 12))
        type_ = draw(st.sampled_from(["uint16", "int32", "float32", "float64", "uint64"]))
        width = {"uint16": 1, "int32": 2, "float32": 2, "float64": 4, "uint64": 4}[type_]
        if addr + width > 0x10000:
            break
        fc = draw(st.sampled_from([3, 4]))
        regs.append({"field": f"f{i}", "address": addr, "function": fc, "type": type_})
        addr += width
    limits = {"max_registers": draw(st.integers(6, 125)), "even_address": draw(st.booleans()),
              "even_count": draw(st.booleans()), "max_gap": draw(st.integers(0, 10))}
    if draw(st.booleans()):  # push some maps to the top of the address space
        shift = 0x10000 - (regs[-1]["address"] + 4) - draw(st.integers(0, 3))
        for r in regs:
            r["address"] += max(shift, 0)
    return regs, limits


@settings(max_examples=300, deadline=None)
@given(register_maps(), st.one_of(st.none(), st.integers(0, 12)))
def test_plan_properties(case, gap):
    regs, limits = case
    p = make_profile(regs, **limits)
    plan = plan_reads(p, max_gap=gap)
    lim = p.limits
    seen = [s.field for r in plan for s in r.registers]
    assert sorted(seen) == sorted(r["field"] for r in regs)          # every register exactly once
    for r in plan:
        assert 1 <= r.count <= lim.max_registers
        assert 0 <= r.address and r.address + r.count <= 0x10000
        if lim.even_address:
            assert r.address % 2 == 0
        if lim.even_count:
            assert r.count % 2 == 0
        for s in r.registers:                                         # never split a value
            assert s.function == r.function
            assert r.address <= s.address and s.end <= r.address + r.count
        # gap bound: consecutive values in a request are at most max_gap apart
        g = lim.max_gap if gap is None else gap
        ordered = sorted(r.registers, key=lambda s: s.address)
        for a, b in zip(ordered, ordered[1:]):
            assert b.address - a.end <= g


def _min_requests(regs, limits):
    """Independent DP over sorted runs: the fewest requests any split into runs can achieve."""
    total = 0
    for fc in (3, 4):
        rs = sorted((r for r in regs if r["function"] == fc), key=lambda r: r["address"])
        widths = {"uint16": 1, "int32": 2, "float32": 2, "float64": 4, "uint64": 4}

        def ok(i, j):  # can rs[i:j] be one request at gap 0?
            for a, b in zip(rs[i:j], rs[i + 1:j]):
                if b["address"] != a["address"] + widths[a["type"]]:
                    return False
            start, end = rs[i]["address"], rs[j - 1]["address"] + widths[rs[j - 1]["type"]]
            if limits["even_address"] and start % 2:
                start -= 1
            count = end - start
            if limits["even_count"] and count % 2:
                count += 1
            return count <= limits["max_registers"]

        best = [0] + [10**9] * len(rs)
        for j in range(1, len(rs) + 1):
            for i in range(j):
                if best[i] + 1 < best[j] and ok(i, j):
                    best[j] = best[i] + 1
        total += best[len(rs)]
    return total


@settings(max_examples=300, deadline=None)
@given(register_maps())
def test_plan_is_minimal_for_gap_zero(case):
    regs, limits = case
    p = make_profile(regs, **limits)
    assert len(plan_reads(p, max_gap=0)) == _min_requests(regs, limits)
