"""Face gates and elevators for the demo compound (called by scripts/demo.py).

Registers two Hikvision gates at the north entrance, two generic FC face terminals at the east
entrance and three elevators, then starts their simulators on the box broker. One extra east gate
is left unregistered on purpose, so `poplar-edge devices discover` has something to show.
"""

from __future__ import annotations

from typing import Callable


def setup(spawn: Callable, cli: Callable, edge_cfg: str, box_url: str) -> None:
    for n in (1, 2):
        cli("poplar-edge", "devices", "add", f"北门{n}号闸机", "--profile", "hikvision-isapi",
            "--mqtt-id", f"north-{n}", "--building", "北门", "--config", edge_cfg)
    for n in (1, 2):
        cli("poplar-edge", "devices", "add", f"东门{n}号人脸机", "--profile", "generic-facegate",
            "--mqtt-id", f"east-{n}", "--building", "东门", "--config", edge_cfg)
    for n in (1, 2, 3):
        cli("poplar-edge", "devices", "add", f"{n}幢电梯", "--profile", "gbt24476-elevator",
            "--mqtt-id", f"lift-{n}", "--building", f"{n}幢", "--config", edge_cfg)
    # rates are a little brisk so the demo shows data within seconds; traffic follows the day
    spawn("sim-north-gates", "poplar-sim", "facegate", "--broker", box_url, "--dialect", "hikvision-isapi",
          "--gates", "2", "--id-prefix", "north-", "--rate", "0.5")
    spawn("sim-east-gates", "poplar-sim", "facegate", "--broker", box_url, "--dialect", "generic-facegate",
          "--gates", "3", "--id-prefix", "east-", "--rate", "0.5", "--heartbeat-s", "15",
          "--malformed-rate", "0.01")
    spawn("sim-lifts", "poplar-sim", "elevator", "--broker", box_url, "--elevators", "3", "--rate", "1",
          "--fault-rate", "0.01")
