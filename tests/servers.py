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

    @property
    def tls_url(self) -> str:
        """For a broker started with Pki.listener_conf()."""
        return f"mqtts://127.0.0.1:{self.port}"


@dataclass(frozen=True)
class Pki:
    """Test certificates in one folder: ca.crt/key, server.crt/key (127.0.0.1, localhost),
    named.crt/key (broker.example only), client.crt/key (signed by ca), and other.crt/key (an
    unrelated CA). `pki.file("ca.crt")` is a file's path."""

    folder: Path

    def file(self, name: str) -> str:
        return str(self.folder / name)

    def listener_conf(self, server: str = "server", require_certificate: bool = False) -> str:
        """Mosquitto settings that make the listener before them a TLS one."""
        return (f"cafile {self.file('ca.crt')}\ncertfile {self.file(server + '.crt')}\n"
                f"keyfile {self.file(server + '.key')}\n"
                + ("require_certificate true\n" if require_certificate else ""))


def make_test_pki(folder: Path) -> Pki:
    """Certificates made with the openssl command (Debian's openssl), valid for ten years."""
    folder.mkdir(parents=True, exist_ok=True)
    openssl = _find("openssl", "openssl")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=folder, check=True, capture_output=True)

    def key_and_csr(name: str, cn: str) -> None:
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}")

    def sign(name: str, ca: str, san: str | None) -> None:
        ext = []
        if san:
            (folder / f"{name}.ext").write_text(f"subjectAltName={san}\n")
            ext = ["-extfile", f"{name}.ext"]
        run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "3650", *ext)

    for ca, cn in (("ca", "Poplar test CA"), ("other", "Some other CA")):
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.crt",
            "-days", "3650", "-subj", f"/CN={cn}")
    key_and_csr("server", "localhost")
    sign("server", "ca", "IP:127.0.0.1,DNS:localhost")
    key_and_csr("named", "broker.example")
    sign("named", "ca", "DNS:broker.example")
    key_and_csr("client", "gw-01")
    sign("client", "ca", None)
    for key in folder.glob("*.key"):  # Mosquitto started as root reads them as its own user
        key.chmod(0o644)
    return Pki(folder)


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
