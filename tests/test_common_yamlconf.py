"""Config loading: errors name the file, the line and the field, and say what is expected."""

from __future__ import annotations

import pytest

from common.yamlconf import ConfigError
from edge import config as edge_config
from collector import config as collector_config

GOOD_EDGE = """\
site: sunny-garden
gateway: gw-01
state_dir: state
uplink:
  url: mqtt://127.0.0.1:1883
"""


def write(tmp_path, text, name="edge.yaml"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_good_edge_config_loads_with_defaults_and_resolves_state_dir(tmp_path):
    cfg = edge_config.load(write(tmp_path, GOOD_EDGE))
    assert cfg.uplink.max_inflight == 8 and cfg.outbox.max_bytes > 0
    assert cfg.state_dir == str((tmp_path / "state").resolve())


@pytest.mark.parametrize("text, expected", [
    (GOOD_EDGE.replace("mqtt://127.0.0.1:1883", "tcp://x"), r"edge.yaml:5: uplink.url: expected mqtt://HOST:PORT"),
    (GOOD_EDGE.replace("gw-01", "gw 01"), r"edge.yaml:2: gateway: use 1-64 letters"),
    (GOOD_EDGE + "outbox:\n  max_bytes: lots\n", r"edge.yaml:7: outbox.max_bytes: .*integer"),
    (GOOD_EDGE + "uplnk: {}\n", r"edge.yaml:6: uplnk: is not a known setting"),
    (GOOD_EDGE.replace("site: sunny-garden\n", ""), r"site: is required"),
    (GOOD_EDGE + "uplink: [\n", r"edge.yaml:\d+: not valid YAML"),
    ("- a\n- b\n", r"expected a mapping"),
    (GOOD_EDGE.replace("1883", "99999"), r"uplink.url: the port must be a number"),
])
def test_bad_edge_config_names_file_line_field(tmp_path, text, expected):
    with pytest.raises(ConfigError, match=expected):
        edge_config.load(write(tmp_path, text))


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        edge_config.load(tmp_path / "nope.yaml")
    p = tmp_path / "latin1.yaml"
    p.write_bytes("site: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        edge_config.load(p)


def test_all_problems_reported_at_once(tmp_path):
    text = GOOD_EDGE.replace("gw-01", "a/b") + "health_interval_s: -1\n"
    with pytest.raises(ConfigError) as exc:
        edge_config.load(write(tmp_path, text))
    assert len(exc.value.problems) == 2


def test_collector_config_sink_choice(tmp_path):
    base = "broker: {url: 'mqtt://127.0.0.1:1883'}\nstate_dir: st\n"
    cfg = collector_config.load(write(tmp_path, base + "sink: {type: influxdb1, url: 'http://h:8086', database: p}\n",
                                      "c.yaml"))
    assert cfg.sink.type == "influxdb1" and cfg.sink.database == "p"
    with pytest.raises(ConfigError, match=r"c.yaml:3: sink"):
        collector_config.load(write(tmp_path, base + "sink: {type: influxdb9, url: 'http://h'}\n", "c.yaml"))
    with pytest.raises(ConfigError, match=r"sink.*database"):
        collector_config.load(write(tmp_path, base + "sink: {type: influxdb1, url: 'http://h:8086'}\n", "c.yaml"))


def test_example_configs_are_valid():
    from pathlib import Path
    repo = Path(__file__).resolve().parent.parent
    edge_config.load(repo / "configs" / "edge.example.yaml")
    collector_config.load(repo / "configs" / "collector.example.yaml")
