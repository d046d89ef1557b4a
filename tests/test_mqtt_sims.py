"""The gate and elevator simulators speak real MQTT (checked with Debian's mosquitto_sub), count
exactly, and refuse bad options with a clear message."""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest

from tests.conftest import run_cli
from tests.servers import free_port

pytestmark = pytest.mark.integration


def _sub(broker_port: int, topic: str, n: int) -> subprocess.Popen:
    p = subprocess.Popen(["mosquitto_sub", "-p", str(broker_port), "-t", topic, "-v", "-q", "1", "-C", str(n),
                          "-W", "30"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(0.3)  # subscribed before the simulator starts
    return p


def test_facegate_publishes_exactly_count_events_seen_by_mosquitto_sub(mosquitto):
    sub = _sub(mosquitto.port, "hikvision/#", 150)
    r = run_cli("poplar-sim", "facegate", "--broker", mosquitto.url, "--dialect", "hikvision-isapi", "--gates", "5",
                "--rate", "2000", "--count", "150", "--traffic", "flat", "--heartbeat-s", "3600",
                "--id-prefix", "door-")
    assert re.search(r"^sent 150 events \(0 malformed", r.stdout) and "0 not acknowledged" in r.stdout
    out, _ = sub.communicate(timeout=30)
    lines = out.decode().splitlines()
    assert len(lines) == 150
    ids = {ln.split("/")[1] for ln in lines}
    assert ids <= {f"door-{n}" for n in range(1, 6)} and len(ids) >= 4
    doc = json.loads(lines[0].split(" ", 1)[1])
    assert doc["eventType"] in ("AccessControllerEvent", "videoloss")


def test_elevator_sim_trips_floor_by_floor_and_malformed_extra(mosquitto):
    sub = _sub(mosquitto.port, "elevator/#", 60)
    r = run_cli("poplar-sim", "elevator", "--broker", mosquitto.url, "--elevators", "1", "--rate", "40",
                "--count", "60", "--traffic", "flat", "--malformed-rate", "0.0", "--heartbeat-s", "3600")
    assert r.stdout.startswith("sent 60 events")
    out, _ = sub.communicate(timeout=30)
    docs = [json.loads(ln.split(" ", 1)[1]) for ln in out.decode().splitlines() if "/status " in ln]
    assert docs and all(d["registration_code"] == "lift-1" for d in docs)
    floors = [int(d["car_position"].replace("B", "-")) for d in docs]
    # consecutive reports never jump more than the floors a car can travel between them
    assert all(abs(a - b) <= 2 or (a < 0) != (b < 0) for a, b in zip(floors, floors[1:]))


def test_malformed_rate_adds_bad_messages_beyond_the_count(mosquitto):
    r = run_cli("poplar-sim", "facegate", "--broker", mosquitto.url, "--gates", "2", "--rate", "2000",
                "--count", "100", "--malformed-rate", "0.5", "--traffic", "flat", "--heartbeat-s", "3600")
    m = re.search(r"sent 100 events \((\d+) malformed", r.stdout)
    assert m and 20 < int(m.group(1)) < 80


@pytest.mark.parametrize("args,message", [
    (["facegate", "--dialect", "zkteco"], "--dialect 'zkteco'"),
    (["facegate", "--gates", "0"], "--gates 0"),
    (["facegate", "--malformed-rate", "2"], "--malformed-rate 2"),
    (["elevator", "--floors", "5..3"], "--floors '5..3'"),
    (["elevator", "--rate", "-1"], "--rate -1"),
])
def test_bad_options_are_refused_clearly(args, message):
    r = run_cli("poplar-sim", *args, "--broker", "mqtt://127.0.0.1:1", check=False)
    assert r.returncode == 2 and message in r.stderr, r.stderr


def test_unreachable_broker_is_a_clear_error():
    r = run_cli("poplar-sim", "facegate", "--broker", f"mqtt://127.0.0.1:{free_port()}", "--count", "1",
                "--connect-timeout", "1", check=False)
    assert r.returncode == 1 and "cannot connect to the broker" in r.stderr and "Traceback" not in r.stderr
