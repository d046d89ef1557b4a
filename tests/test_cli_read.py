"""Installer commands, run as real processes: `read`, `devices test`, `profiles list|show|plan|validate`."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import run_cli, wait_for
from tests.servers import free_port

NO_CONFIG = {"POPLAR_EDGE_CONFIG": "/nonexistent/edge.yaml"}


@pytest.fixture
def sim(spawn):
    port = free_port()
    proc = spawn("poplar-sim", "meter", "--profile", "chint-dtsu666", "--port", str(port), "--units", "1-3",
                 "--dead-units", "3")
    wait_for(lambda: "serving" in proc.output(), timeout=15, what="simulator up")
    return port


def edge(*args, check=True):
    return run_cli("poplar-edge", *args, env=NO_CONFIG, check=check)


def test_read_prints_every_field_with_its_unit_and_json(sim):
    out = edge("read", "--profile", "chint-dtsu666", "--tcp", f"127.0.0.1:{sim}", "--unit", "2").stdout
    assert re.search(r"^voltage_l1\s+2[12]\d\.\d+\s+V\s", out, re.M), out
    assert re.search(r"^frequency\s+(49|50)\.\d+\s+Hz", out, re.M)
    assert re.search(r"^energy_import\s+[\d.]+\s+kWh", out, re.M)
    doc = json.loads(edge("read", "--profile", "chint-dtsu666", "--tcp", f"127.0.0.1:{sim}", "--unit", "1",
                          "--json").stdout)
    assert 210 < doc["voltage_l2"] < 230 and doc["active_power"] > 0 and 49 < doc["frequency"] < 51
    assert all(isinstance(v, (int, float)) for v in doc.values())


def test_read_over_rtu_over_tcp_and_serial(spawn):
    port = free_port()
    proc = spawn("poplar-sim", "meter", "--profile", "eastron-sdm120", "--port", str(port), "--rtu-over-tcp",
                 "--serial", "pty", "--units", "5")
    wait_for(lambda: "RTU on" in proc.output(), timeout=15, what="simulator up")
    path = re.search(r"RTU on (/dev/\S+)", proc.output()).group(1)
    doc = json.loads(edge("read", "--profile", "eastron-sdm120", "--rtu-over-tcp", f"127.0.0.1:{port}",
                          "--unit", "5", "--json").stdout)
    assert 210 < doc["voltage"] < 230
    doc = json.loads(edge("read", "--profile", "eastron-sdm120", "--serial", path, "--baud", "9600",
                          "--parity", "N", "--unit", "5", "--json").stdout)
    assert 49 < doc["frequency"] < 51


def test_read_bad_input_is_explained(sim):
    r = edge("read", "--profile", "chint-dtsu666", "--tcp", f"127.0.0.1:{sim}", "--unit", "3", "--timeout",
             "0.3", check=False)
    assert r.returncode == 1 and "no answer" in r.stderr and "check the unit id" in r.stderr
    r = edge("read", "--profile", "eastron-sdm120", "--tcp", f"127.0.0.1:{sim}", "--unit", "1", check=False)
    assert r.returncode == 1 and "exception 1 (illegal function)" in r.stderr and "try another --profile" in r.stderr
    r = edge("read", "--profile", "chint-dtsu666", "--serial", "/dev/ttyUSB-none", "--unit", "1", check=False)
    assert r.returncode == 1 and "does not exist" in r.stderr
    r = edge("read", "--profile", "chint-dtsu666", "--tcp", "127.0.0.1:1", "--unit", "1", check=False)
    assert r.returncode == 1 and "cannot connect" in r.stderr
    for args, msg in ((["--tcp", "nohost"], "expected HOST:PORT"),
                      (["--tcp", "a:1", "--serial", "/dev/x"], "exactly one address"),
                      (["--tcp", "a:1", "--unit", "300"], "1 to 247"),
                      (["--serial", "/dev/x", "--parity", "X"], "use N, E or O")):
        r = edge("read", "--profile", "chint-dtsu666", *args, check=False)
        assert r.returncode == 2 and msg in r.stderr, (args, r.stderr)
    r = edge("read", "--profile", "nope", "--tcp", "a:1", check=False)
    assert r.returncode == 2 and "unknown profile 'nope'" in r.stderr


def test_devices_test_reads_a_registered_meter(sim, tmp_path):
    cfg = str(tmp_path / "edge.yaml")
    edge("init", "--config", cfg, "--site", "s", "--gateway", "g", "--state-dir", str(tmp_path / "st"),
         "--uplink", "mqtt://127.0.0.1:1883")
    edge("devices", "add", "3幢电表", "--profile", "chint-dtsu666", "--tcp", f"127.0.0.1:{sim}", "--unit", "2",
         "--config", cfg)
    out = edge("devices", "test", "3幢电表", "--config", cfg).stdout
    assert re.search(r"^active_power\s+[\d.]+\s+W", out, re.M)
    doc = json.loads(edge("devices", "test", "3幢电表", "--json", "--config", cfg).stdout)
    assert doc["energy_import"] > 0
    r = edge("devices", "test", "nobody", "--config", cfg, check=False)
    assert r.returncode == 1 and "no device named 'nobody'" in r.stderr


def test_profiles_commands():
    out = edge("profiles", "list").stdout
    for pid in ("eastron-sdm120", "eastron-sdm630", "chint-ddsu666", "chint-dtsu666", "hiking-dds238-2",
                "acrel-adw300"):
        assert pid in out
    docs = {d["id"]: d for d in json.loads(edge("profiles", "list", "--json").stdout)}
    assert docs["eastron-sdm120"]["requests_per_poll"] == 3 and docs["eastron-sdm120"]["serial"] == "2400 8N1"
    out = edge("profiles", "show", "eastron-sdm120").stdout
    assert "even start address only" in out and "max 80 registers" in out
    assert re.search(r"^voltage\s+4\s+0x0000\s+float32", out, re.M)
    out = edge("profiles", "plan", "eastron-sdm120").stdout
    assert "3 request(s)" in out and "0x0046" in out
    plan = json.loads(edge("profiles", "plan", "eastron-sdm120", "--max-gap", "0", "--json").stdout)
    assert len(plan) > 3 and all(r["address"] % 2 == 0 and r["count"] % 2 == 0 for r in plan)
    r = edge("profiles", "plan", "hikvision-isapi", check=False)
    assert r.returncode == 2 and "not a Modbus profile" in r.stderr


def test_profiles_validate_names_file_line_and_field(tmp_path):
    ok = edge("profiles", "validate", "device_profiles/chint-ddsu666.yaml").stdout
    assert "ok" in ok and "request(s) per poll" in ok
    bad = tmp_path / "bad-meter.yaml"
    bad.write_text("""id: bad-meter
kind: modbus
vendor: X
model: Y
sources: [test]
registers:
  - {field: voltage, address: 0x0000, function: 4, type: float32, unit: V}
  - {field: current, address: 0x0001, function: 4, type: float32, unit: A}
""")
    r = edge("profiles", "validate", str(bad), check=False)
    assert r.returncode == 1
    assert re.search(r"bad-meter.yaml:8: registers\[1\]\.address: current .* overlaps voltage", r.stderr), r.stderr
    bad.write_text(bad.read_text() + "  - {field: active_power, address: 0x1FFFF, function: 4, type: float32, unit: kW}\n")
    r = edge("profiles", "validate", str(bad), check=False)
    assert re.search(r"bad-meter.yaml:9: registers\[2\]\.address: .*0\.\.65535", r.stderr), r.stderr
    doc = json.loads(edge("profiles", "validate", str(bad), "--json", check=False).stdout)
    assert doc["ok"] is False and doc["errors"]
    r = edge("profiles", "validate", str(tmp_path / "missing.yaml"), check=False)
    assert r.returncode == 1 and "not found" in r.stderr
