"""The device registry and `poplar-edge init` / `devices ...` as property staff use them."""

from __future__ import annotations

import json

import pytest
import yaml

from edge.registry import Device, Registry, RegistryError, Transport, check_device_id
from tests.conftest import run_cli


@pytest.fixture
def edge_cfg(tmp_path):
    cfg = tmp_path / "edge.yaml"
    run_cli("poplar-edge", "init", "--config", str(cfg), "--site", "sunny-garden", "--gateway", "gw-01",
            "--state-dir", str(tmp_path / "state"), "--local-broker", "mqtt://127.0.0.1:1883",
            "--uplink", "mqtt://127.0.0.1:1884")
    return str(cfg)


def test_names_accept_chinese_and_punctuation_but_not_control_characters():
    for ok in ("5幢1单元电表", "a,b=c d", 'quote"s', "back\\slash", "x" * 128):
        assert check_device_id(ok) == ok
    for bad in ("", "  ", "a\nb", "tab\there", "x" * 129, " lead", "ends\\", "a\\,b"):
        with pytest.raises(RegistryError):
            check_device_id(bad)


def test_registry_add_get_rename_remove(tmp_path):
    reg = Registry(tmp_path / "r.db")
    dev = Device("电表-1", "eastron-sdm120", Transport("tcp", host="10.0.0.5", port=502), unit=3,
                 tags={"building": "5幢"})
    reg.add(dev)
    with pytest.raises(RegistryError, match="already registered"):
        reg.add(dev)
    assert reg.get("电表-1").to_doc() == dev.to_doc()
    other = Registry(tmp_path / "r.db")
    v = other.data_version()
    reg.rename("电表-1", "电表-2")
    assert other.data_version() != v  # a running agent notices
    assert other.get("电表-2").unit == 3 and other.get("电表-1") is None
    twin = Device("电表-3", "eastron-sdm120", Transport("tcp", host="10.0.0.5", port=502), unit=3)
    with pytest.raises(RegistryError, match="already registered as '电表-2'"):
        reg.add(twin)  # the same meter under a second name
    twin.unit = 4
    reg.add(twin)  # another unit behind the same gateway is another meter
    with pytest.raises(RegistryError, match="unknown location tag"):
        reg.add(Device("x", "p", Transport("tcp", host="h", port=1), tags={"room": "1"}))
    reg.remove("电表-2")
    with pytest.raises(RegistryError, match="no device named"):
        reg.remove("电表-2")


def test_cli_add_list_move_disable_export_import(edge_cfg, tmp_path):
    run_cli("poplar-edge", "devices", "add", "5幢1单元电表", "--profile", "eastron-sdm120", "--tcp", "127.0.0.1:5020",
            "--unit", "7", "--building", "5幢", "--unit-no", "1单元", "--floor", "3", "--interval", "15",
            "--config", edge_cfg)
    run_cli("poplar-edge", "devices", "add", "bus-meter", "--profile", "eastron-sdm630", "--serial", "/dev/ttyUSB0",
            "--config", edge_cfg)
    devs = {d["id"]: d for d in json.loads(run_cli("poplar-edge", "devices", "list", "--json", "--config", edge_cfg).stdout)}
    assert devs["5幢1单元电表"]["tags"] == {"building": "5幢", "unit_no": "1单元", "floor": "3"}
    assert devs["5幢1单元电表"]["unit"] == 7 and devs["5幢1单元电表"]["interval_s"] == 15
    # serial settings default to the profile's (SDM630: 9600 8N1)
    assert devs["bus-meter"]["transport"]["baud"] == 9600 and devs["bus-meter"]["transport"]["parity"] == "N"
    text = run_cli("poplar-edge", "devices", "list", "--config", edge_cfg).stdout
    assert "5幢1单元电表" in text and "tcp 127.0.0.1:5020" in text

    run_cli("poplar-edge", "devices", "move", "5幢1单元电表", "--building", "6幢", "--floor", "", "--config", edge_cfg)
    run_cli("poplar-edge", "devices", "disable", "bus-meter", "--config", edge_cfg)
    devs = {d["id"]: d for d in json.loads(run_cli("poplar-edge", "devices", "list", "--json", "--config", edge_cfg).stdout)}
    assert devs["5幢1单元电表"]["tags"] == {"building": "6幢", "unit_no": "1单元"}
    assert devs["bus-meter"]["enabled"] is False

    out = tmp_path / "devices.yaml"
    run_cli("poplar-edge", "devices", "export", str(out), "--config", edge_cfg)
    assert len(yaml.safe_load(out.read_text())["devices"]) == 2
    run_cli("poplar-edge", "devices", "remove", "bus-meter", "--config", edge_cfg)
    r = run_cli("poplar-edge", "devices", "import", str(out), "--config", edge_cfg, check=False)
    assert r.returncode == 1 and "already registered" in r.stderr  # stops at the duplicate, says so
    run_cli("poplar-edge", "devices", "import", str(out), "--replace", "--config", edge_cfg)
    assert len(json.loads(run_cli("poplar-edge", "devices", "list", "--json", "--config", edge_cfg).stdout)) == 2


@pytest.mark.parametrize("args, message", [
    (["m", "--profile", "no-such-model", "--tcp", "h:502"], "unknown profile 'no-such-model'; known profiles:"),
    (["m", "--profile", "eastron-sdm120"], "give exactly one address"),
    (["m", "--profile", "eastron-sdm120", "--tcp", "h:502", "--serial", "/dev/x"], "give exactly one address"),
    (["m", "--profile", "eastron-sdm120", "--tcp", "nohostport"], "expected HOST:PORT"),
    (["m", "--profile", "eastron-sdm120", "--tcp", "h:70000"], "expected HOST:PORT"),
    (["m", "--profile", "eastron-sdm120", "--tcp", "h:502", "--unit", "300"], "unit ids are 1 to 247"),
    (["m", "--profile", "eastron-sdm120", "--serial", "/dev/x", "--parity", "X"], "use N, E or O"),
    (["m", "--profile", "eastron-sdm120", "--mqtt-id", "gate-1"], "needs an MQTT profile"),
    (["m", "--profile", "hikvision-isapi", "--tcp", "h:502"], "register it with --mqtt-id"),
    (["bad\tname", "--profile", "eastron-sdm120", "--tcp", "h:502"], "control character"),
])
def test_cli_add_refuses_bad_input_with_a_clear_message(edge_cfg, args, message):
    r = run_cli("poplar-edge", "devices", "add", *args, "--config", edge_cfg, check=False)
    assert r.returncode != 0
    assert message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_cli_without_config_tells_how_to_make_one(tmp_path):
    r = run_cli("poplar-edge", "devices", "list", "--config", str(tmp_path / "none.yaml"), check=False)
    assert r.returncode == 2 and "file not found" in r.stderr and "poplar-edge init" in r.stderr
    r = run_cli("poplar-edge", "devices", "list", check=False, env={"POPLAR_EDGE_CONFIG": str(tmp_path / "e.yaml")})
    assert str(tmp_path / "e.yaml") in r.stderr


def test_init_refuses_bad_ids_and_overwrites_only_with_force(edge_cfg, tmp_path):
    r = run_cli("poplar-edge", "init", "--config", edge_cfg, "--site", "s", "--gateway", "g", "--state-dir", "x",
                "--uplink", "mqtt://h:1", check=False)
    assert r.returncode == 1 and "--force" in r.stderr
    r = run_cli("poplar-edge", "init", "--config", str(tmp_path / "n.yaml"), "--site", "a b", "--gateway", "g",
                "--state-dir", "x", "--uplink", "mqtt://h:1", check=False)
    assert r.returncode == 2 and "--site 'a b'" in r.stderr
    r = run_cli("poplar-edge", "init", "--config", str(tmp_path / "n.yaml"), "--site", "s", "--gateway", "g",
                "--state-dir", "x", "--uplink", "http://h:1", check=False)
    assert r.returncode == 2 and "expected mqtt://HOST:PORT" in r.stderr


def test_status_json_without_a_running_agent(edge_cfg):
    doc = json.loads(run_cli("poplar-edge", "status", "--json", "--config", edge_cfg).stdout)
    assert doc["agent_running"] is False and doc["uplink"]["connected"] is False
    assert doc["outbox"]["rows"] == 0 and doc["devices"] == []
