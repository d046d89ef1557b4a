"""The edge's `uplink.wire_version` setting: v2 by default, v1 on request, nothing else."""

from __future__ import annotations

import pytest

from common.yamlconf import ConfigError
from edge.config import load

BASE = """site: s
gateway: g
state_dir: /tmp/poplar-test-state
local_broker: {url: "mqtt://127.0.0.1:1883"}
uplink:
  url: mqtt://127.0.0.1:1883
"""


def _load(tmp_path, extra: str = ""):
    path = tmp_path / "edge.yaml"
    path.write_text(BASE + extra)
    return load(path)


def test_v2_by_default_and_v1_on_request(tmp_path):
    assert _load(tmp_path).uplink.wire_version == 2
    assert _load(tmp_path, "  wire_version: 1\n").uplink.wire_version == 1


@pytest.mark.parametrize("value, says", [("3", "use 2, or 1 while the central collector is too old"),
                                         ("0", "use 2, or 1 while the central collector is too old"),
                                         ("v2", "valid integer"), ("[2]", "valid integer")])
def test_other_versions_are_refused_with_what_to_do(tmp_path, value, says):
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, f"  wire_version: {value}\n")
    assert "edge.yaml:7: uplink.wire_version" in str(err.value) and says in str(err.value)
