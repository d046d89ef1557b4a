"""The meter simulator speaks real Modbus: read by mbpoll (Debian's Modbus client, written by no one
here) over Modbus TCP and over RTU on a virtual serial port, with the model's quirks and faults."""

from __future__ import annotations

import re
import subprocess


from tests.conftest import wait_for
from tests.servers import free_port

# mbpoll is installed by scripts/setup.sh (Debian package mbpoll): these tests always run.


def mbpoll(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mbpoll", *args], capture_output=True, text=True, timeout=20)


def values(out: str) -> dict[int, float]:
    return {int(r): float(v) for r, v in re.findall(r"^\[(\d+)\]:\s+(\S+)", out, re.M)}


def start(spawn, *args: str):
    proc = spawn("poplar-sim", "meter", *args)
    wait_for(lambda: "serving" in proc.output(), timeout=15, what="simulator up")
    return proc


def test_mbpoll_reads_plausible_values_over_tcp_and_the_quirks_are_real(spawn):
    port = free_port()
    start(spawn, "--profile", "eastron-sdm630", "--port", str(port), "--units", "1-5", "--dead-units", "4")
    base = ["-m", "tcp", "-p", str(port), "-1", "-o", "1"]
    # mbpoll references are 1-based: -r 1 is address 0x0000 (voltage L1..L3 as float32 ABCD)
    r = mbpoll(*base, "-a", "2", "-t", "3:float", "-B", "-r", "1", "-c", "3", "127.0.0.1")
    assert r.returncode == 0, r.stdout + r.stderr
    v = values(r.stdout)
    assert set(v) == {1, 3, 5} and all(210 < x < 230 for x in v.values())
    r = mbpoll(*base, "-a", "2", "-t", "3:float", "-B", "-r", "71", "-c", "1", "127.0.0.1")  # 0x0046 frequency
    assert 49.5 < values(r.stdout)[71] < 50.5
    # SDM quirk: an odd start address is refused with exception 2, as the real meter does
    r = mbpoll(*base, "-a", "2", "-t", "3:float", "-B", "-r", "2", "-c", "2", "127.0.0.1")
    assert "Illegal data address" in r.stdout + r.stderr
    # more than 80 registers in one request: refused too
    r = mbpoll(*base, "-a", "2", "-t", "3", "-r", "1", "-c", "82", "127.0.0.1")
    assert "Illegal data address" in r.stdout + r.stderr
    # coils are no Eastron function: exception 1
    r = mbpoll(*base, "-a", "2", "-t", "0", "-r", "1", "-c", "2", "127.0.0.1")
    assert "Illegal function" in r.stdout + r.stderr
    # a dead unit does not answer at all
    r = mbpoll(*base, "-a", "4", "-t", "3:float", "-B", "-r", "1", "-c", "2", "127.0.0.1")
    assert r.returncode != 0 and "timed out" in (r.stdout + r.stderr).lower()


def test_mbpoll_reads_rtu_on_a_virtual_serial_port(spawn):
    proc = start(spawn, "--profile", "hiking-dds238-2", "--serial", "pty", "--units", "1-3")
    path = re.search(r"RTU on (/dev/\S+)", proc.output()).group(1)
    base = ["-m", "rtu", "-b", "9600", "-P", "none", "-1", "-o", "1", "-a", "3", "-t", "4"]
    first = values(mbpoll(*base, "-r", "1", "-c", "18", path).stdout)
    assert len(first) == 18
    # DDS238-2: 0x000C voltage x0.1 V, 0x0011 frequency x0.01 Hz, 0x0000 total energy (uint32 x0.01 kWh)
    assert 2100 < first[13] < 2300 and 4950 < first[18] < 5050
    assert (int(first[1]) << 16 | int(first[2])) > 0


def test_simulated_day_has_a_load_curve_and_energy_only_grows():
    from edge.profiles import ProfileLibrary
    from simulators.meter import SimMeter
    m = SimMeter(ProfileLibrary().get("chint-dtsu666"), 7)
    start = 1_700_000_000 - 1_700_000_000 % 86400  # a UTC midnight
    m._t = start
    energy, by_hour = [], {}
    for k in range(0, 86400, 900):
        v = m.values(start + k)
        energy.append(v["energy_import"])
        by_hour.setdefault(k // 3600, []).append(v["active_power"])
        assert 210 < v["voltage_l1"] < 230 and 49.8 < v["frequency"] < 50.2
        assert abs(v["active_power"] - sum(v[f"active_power_l{n}"] for n in (1, 2, 3))) < 1e-6
    assert all(b >= a for a, b in zip(energy, energy[1:])) and energy[-1] > energy[0] + 1
    assert len({round(sum(p) / len(p)) for p in by_hour.values()}) > 12  # it varies over the day


def test_injected_faults_show_in_mbpoll(spawn):
    port = free_port()
    start(spawn, "--profile", "eastron-sdm120", "--port", str(port), "--units", "1", "--exception-rate", "1")
    r = mbpoll("-m", "tcp", "-p", str(port), "-1", "-o", "1", "-a", "1", "-t", "3", "-r", "1", "-c", "2",
               "127.0.0.1")
    assert "Slave device or server failure" in r.stdout + r.stderr


def test_simulator_rejects_bad_options_clearly(tmp_path):
    from tests.conftest import run_cli
    r = run_cli("poplar-sim", "meter", "--profile", "no-such", check=False)
    assert r.returncode == 2 and "unknown profile 'no-such'" in r.stderr
    r = run_cli("poplar-sim", "meter", "--profile", "eastron-sdm120", "--units", "0-300", check=False)
    assert r.returncode == 2 and "unit ids are 1 to 247" in r.stderr
    r = run_cli("poplar-sim", "meter", "--profile", "eastron-sdm120", "--timeout-rate", "2", check=False)
    assert r.returncode == 2 and "--timeout-rate" in r.stderr
    r = run_cli("poplar-sim", "meter", "--profile", "hikvision-isapi", check=False)
    assert r.returncode == 2 and "not a Modbus profile" in r.stderr
