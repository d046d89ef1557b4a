"""The example configs we ship work with the real programs."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from tests.servers import free_port

REPO = Path(__file__).resolve().parent.parent


def test_box_broker_config_starts_a_real_mosquitto(tmp_path):
    port = free_port()
    text = (REPO / "configs/mosquitto/box-broker.conf").read_text()
    text = text.replace("listener 1883", f"listener {port} 127.0.0.1").replace("/var/lib/mosquitto/", f"{tmp_path}/")
    conf = tmp_path / "box.conf"
    conf.write_text(text)
    proc = subprocess.Popen(["/usr/sbin/mosquitto", "-c", str(conf)], stderr=subprocess.PIPE)
    try:
        time.sleep(1.0)
        assert proc.poll() is None, proc.stderr.read().decode()
        r = subprocess.run(["mosquitto_pub", "-p", str(port), "-t", "t", "-m", "x", "-q", "1"], capture_output=True,
                           timeout=10)
        assert r.returncode == 0, r.stderr
    finally:
        proc.terminate()
        proc.wait(5)


def test_systemd_units_point_at_the_console_scripts():
    for name, tool in (("poplar-edge.service", "poplar-edge run"), ("poplar-collector.service", "poplar-collector run")):
        text = (REPO / "configs/systemd" / name).read_text()
        assert tool in text and "Restart=always" in text
