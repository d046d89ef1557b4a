from pathlib import Path

import pytest

from common.yamlconf import ConfigError
from edge.mqtt.profile import canon, load_mqtt_profile

PROFILES = Path(__file__).resolve().parent.parent / "device_profiles"
MQTT = ["hikvision-isapi", "dahua-vto2mqtt", "generic-facegate", "gbt24476-elevator"]

BASE = """\
id: {id}
kind: mqtt
vendor: Test
description: test
messages:
  - name: ev
    topics: ["t/{{id}}/ev"]
    kind: event
    points:
      - measurement: gate_event
        tags:
          - {{name: event, value: access}}
        fields:
{fields}
"""


def write(tmp_path, fields: str, name: str = "vendor-x", text: str | None = None) -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(text if text is not None else BASE.format(id=name, fields=fields), encoding="utf-8")
    return p


@pytest.mark.parametrize("name", MQTT)
def test_shipped_profiles_load(name):
    prof = load_mqtt_profile(PROFILES / f"{name}.yaml")
    assert prof.id == name and prof.kind == "mqtt" and prof.sources
    assert all("{" not in s for s in prof.subscriptions())


def test_subscriptions():
    prof = load_mqtt_profile(PROFILES / "gbt24476-elevator.yaml")
    assert prof.subscriptions() == ["elevator/+/status", "elevator/+/fault", "elevator/+/heartbeat"]
    assert load_mqtt_profile(PROFILES / "dahua-vto2mqtt.yaml").subscriptions() == ["DahuaVTO/+/Event"]


def test_minimal_profile_loads(tmp_path):
    prof = load_mqtt_profile(write(tmp_path, "          - {name: door, ref: door, type: int}"))
    assert prof.messages[0].points[0].fields[0].name == "door"
    assert prof.time_zone == "Asia/Shanghai"


def test_error_names_file_line_and_field(tmp_path):
    p = write(tmp_path, "          - {name: door, ref: door, type: integer}")
    with pytest.raises(ConfigError) as e:
        load_mqtt_profile(p)
    msg = str(e.value)
    assert f"{p}:14:" in msg and "messages[0].points[0].fields[0].type" in msg


def test_unknown_key_is_refused(tmp_path):
    p = write(tmp_path, "          - {name: door, ref: door, typo: 1}")
    with pytest.raises(ConfigError, match="typo: is not a known setting"):
        load_mqtt_profile(p)


def test_id_must_match_file_name(tmp_path):
    p = write(tmp_path, "          - {name: door, ref: door}", name="a")
    p2 = tmp_path / "b.yaml"
    p2.write_text(p.read_text())
    with pytest.raises(ConfigError, match="must equal the file name"):
        load_mqtt_profile(p2)


@pytest.mark.parametrize("fields, message", [
    ("          - {name: who, ref: AccessControllerEvent.name}", "personal data"),
    ("          - {name: pic, ref: Data.SnapURL}", "personal data"),
    ("          - {name: card, ref: 'x.cardNo'}", "personal data"),
    ("          - {name: floor, ref: f}", "reserved"),
    ("          - {name: Door, ref: d}", "lower_snake_case"),
    ("          - {name: d, ref: d, value: 1}", "exactly one of ref"),
    ("          - {name: d, ref: '@topic.nope'}", "not a named segment"),
    ("          - {name: d, ref: '@item'}", "no explode"),
    ("          - {name: d, ref: d, if_option: nope}", "not declared under options"),
])
def test_bad_mappings_are_refused(tmp_path, fields, message):
    with pytest.raises(ConfigError, match=message):
        load_mqtt_profile(write(tmp_path, fields))


def test_tag_from_payload_needs_enum(tmp_path):
    text = BASE.format(id="vendor-x", fields="          - {name: d, ref: d}").replace(
        "{name: event, value: access}", "{name: event, ref: ev}")
    with pytest.raises(ConfigError, match="needs an enum"):
        load_mqtt_profile(write(tmp_path, "", text=text))


def test_unknown_measurement_and_bad_topic(tmp_path):
    text = BASE.format(id="vendor-x", fields="          - {name: d, ref: d}")
    with pytest.raises(ConfigError, match="unknown measurement"):
        load_mqtt_profile(write(tmp_path, "", text=text.replace("gate_event", "gate_events")))
    with pytest.raises(ConfigError, match="bad topic filter"):
        load_mqtt_profile(write(tmp_path, "", text=text.replace("t/{id}/ev", "t/#/ev")))


def test_bad_zone_and_yaml(tmp_path):
    text = BASE.format(id="vendor-x", fields="          - {name: d, ref: d}")
    with pytest.raises(ConfigError, match="time_zone"):
        load_mqtt_profile(write(tmp_path, "", text=text + "time_zone: Mars/Olympus\n"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_mqtt_profile(write(tmp_path, "", text="id: [unclosed\n"))


def test_canon():
    assert canon(4) == canon(4.0) == canon("04") == canon(" 4") == "4"
    assert canon(True) == "true" and canon("B1") == "B1" and canon(1.5) == "1.5"
