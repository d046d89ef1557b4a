"""`poplar-edge doctor` against a real broker: passes when things work, says what to fix when not."""

from __future__ import annotations

import json

from tests.conftest import run_cli
from tests.servers import free_port


def test_doctor_passes_then_names_each_problem(tmp_path, mosquitto):
    cfg = str(tmp_path / "edge.yaml")
    run_cli("poplar-edge", "init", "--config", cfg, "--site", "s", "--gateway", "g", "--state-dir",
            str(tmp_path / "st"), "--local-broker", mosquitto.url, "--uplink", mosquitto.url)
    r = run_cli("poplar-edge", "doctor", "--config", cfg, check=False)
    assert r.returncode == 0, r.stdout
    assert "all checks passed" in r.stdout

    dead = free_port()
    run_cli("poplar-edge", "devices", "add", "m1", "--profile", "eastron-sdm120", "--tcp", f"127.0.0.1:{dead}",
            "--config", cfg)
    run_cli("poplar-edge", "devices", "add", "m2", "--profile", "eastron-sdm120", "--serial", "/dev/ttyNOPE9",
            "--config", cfg)
    mosquitto.stop()
    r = run_cli("poplar-edge", "doctor", "--json", "--config", cfg, check=False)
    assert r.returncode == 1
    doc = json.loads(r.stdout)
    by = {c["name"]: c for c in doc["checks"]}
    assert not by["uplink"]["ok"] and "nothing listens" in by["uplink"]["detail"]
    assert not by["box broker"]["ok"] and "Mosquitto" in by["box broker"]["hint"]
    assert not by["device m1"]["ok"] and "devices test" in by["device m1"]["hint"]
    assert not by["device m2"]["ok"] and "missing" in by["device m2"]["detail"]
    assert by["config"]["ok"] and by["profiles"]["ok"]


def test_doctor_on_a_broken_config(tmp_path):
    p = tmp_path / "edge.yaml"
    p.write_text("site: s\ngateway: g\nstate_dir: x\nuplink: {url: 'ftp://h'}\n")
    r = run_cli("poplar-edge", "doctor", "--config", str(p), check=False)
    assert r.returncode == 1 and "edge.yaml:4: uplink.url" in r.stdout
