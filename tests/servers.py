"""Real servers for tests and benchmarks: Mosquitto, InfluxDB 1.x and VictoriaMetrics, each on
free ports with its files in a temporary folder. Never mocks.

Also used by scripts/demo.py, so the demo and the tests start the servers the same way.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, what: str, log: Path, timeout: float = 20) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited at start (code {proc.returncode}); log {log}:\n"
                               + log.read_text(errors="replace")[-2000:])
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not open port {port} within {timeout} s; log {log}")


def _find(binary: str, package: str) -> str:
    path = shutil.which(binary) or (f"/usr/sbin/{binary}" if os.path.exists(f"/usr/sbin/{binary}") else None)
    if not path:
        raise RuntimeError(f"{binary} not found: install Debian's {package} (scripts/setup.sh does)")
    return path


@dataclass
class Server:
    name: str
    folder: Path
    port: int
    argv: list[str]
    proc: subprocess.Popen | None = None
    extra: dict = field(default_factory=dict)

    @property
    def log(self) -> Path:
        return self.folder / f"{self.name}.log"

    def start(self) -> "Server":
        out = open(self.log, "ab")
        self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, cwd=self.folder,
                                     start_new_session=True)
        _wait_port(self.port, self.proc, self.name, self.log)
        return self

    def stop(self, kill: bool = False) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Mosquitto(Server):
    """mosquitto with persistence in its folder (so persistent sessions survive a restart)."""

    def __init__(self, folder: Path, port: int | None = None, extra_conf: str = "", name: str = "mosquitto") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        port = port or free_port()
        conf = folder / f"{name}.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\n"
            + ("allow_anonymous true\n" if "allow_anonymous" not in extra_conf else "")
            + f"persistence true\npersistence_location {folder}/\n"
            "max_inflight_messages 1000\nmax_queued_messages 1000000\nmax_packet_size 67108864\n"
            "autosave_interval 1\n" + extra_conf)
        super().__init__(name, folder, port, [_find("mosquitto", "mosquitto"), "-c", str(conf)])

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"


class InfluxDB1(Server):
    """Debian's influxd 1.x with its data, WAL and meta folders in the temp folder."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        port, bind_port = free_port(), free_port()
        conf = folder / "influxdb.conf"
        conf.write_text(f"""
reporting-disabled = true
bind-address = "127.0.0.1:{bind_port}"
[meta]
  dir = "{folder}/meta"
[data]
  dir = "{folder}/data"
  wal-dir = "{folder}/wal"
  query-log-enabled = false
  cache-max-memory-size = "1g"
  max-values-per-tag = 0
  max-series-per-database = 0
[http]
  enabled = true
  bind-address = "127.0.0.1:{port}"
  log-enabled = false
  max-body-size = 0
[logging]
  level = "warn"
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = true
  run-interval = "1s"
[subscriber]
  enabled = false
""")
        super().__init__("influxd", folder, port, [_find("influxd", "influxdb"), "-config", str(conf)])

    def start(self) -> "InfluxDB1":
        super().start()
        deadline = time.time() + 20
        while time.time() < deadline:  # the port opens before /ping answers
            try:
                with urllib.request.urlopen(f"{self.url}/ping", timeout=1) as r:
                    if r.status == 204:
                        return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"influxd did not answer /ping; log {self.log}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def query(self, q: str, db: str | None = None, epoch: str = "ns") -> dict:
        params = {"q": q, "epoch": epoch}
        if db:
            params["db"] = db
        data = urllib.parse.urlencode(params).encode()
        with urllib.request.urlopen(f"{self.url}/query", data=data, timeout=30) as r:
            import json
            return json.loads(r.read())

    def create_db(self, db: str) -> None:
        self.query(f'CREATE DATABASE "{db}"')

    def rows(self, q: str, db: str) -> list[dict]:
        """InfluxQL query -> list of row dicts (column -> value), tags of GROUP BY merged in."""
        out = []
        for res in self.query(q, db).get("results", []):
            if "error" in res:
                raise RuntimeError(res["error"])
            for s in res.get("series", []):
                for v in s.get("values", []):
                    row = dict(zip(s["columns"], v))
                    row.update(s.get("tags", {}))
                    out.append(row)
        return out

    def count(self, measurement: str, db: str, field_name: str | None = None, where: str = "") -> int:
        fld = f'"{field_name}"' if field_name else "*"
        rows = self.rows(f'SELECT count({fld}) FROM "{measurement}" {where}', db)
        if not rows:
            return 0
        return max(v for k, v in rows[0].items() if k.startswith("count") and isinstance(v, int))


class VictoriaMetrics(Server):
    """Debian's victoria-metrics: a real server that accepts InfluxDB's /api/v2/write."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        port = free_port()
        super().__init__("victoria-metrics", folder, port,
                         [_find("victoria-metrics", "victoria-metrics"), f"-httpListenAddr=127.0.0.1:{port}",
                          f"-storageDataPath={folder}/data", "-search.latencyOffset=0s",
                          "-loggerLevel=ERROR"])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"
