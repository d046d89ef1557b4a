"""Fixtures that start real servers on free ports in temporary folders (tests/servers.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.servers import InfluxDB1, Mosquitto, VictoriaMetrics, make_test_pki

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.fixture
def mosquitto(tmp_path):
    srv = Mosquitto(tmp_path / "mosquitto").start()
    yield srv
    srv.stop()


@pytest.fixture
def central_broker(tmp_path):
    srv = Mosquitto(tmp_path / "central", name="central").start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def pki():
    """Test certificates (tests/servers.py Pki), made once per run. Not under pytest's own
    temporary folders: those are owner-only, and Mosquitto started as root reads its
    certificates after switching to its own user."""
    folder = Path(tempfile.mkdtemp(prefix="poplar-test-pki-"))
    folder.chmod(0o755)
    yield make_test_pki(folder)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def tls_broker(tmp_path, pki):
    """Mosquitto with one TLS listener (the broker certificate names 127.0.0.1)."""
    srv = Mosquitto(tmp_path / "tls-broker", name="tls-broker", extra_conf=pki.listener_conf()).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def influx(tmp_path_factory):
    srv = InfluxDB1(tmp_path_factory.mktemp("influxdb")).start()
    yield srv
    srv.stop()


@pytest.fixture
def influx_db(influx):
    """A fresh database name on the shared InfluxDB server."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    influx.create_db(name)
    return name


@pytest.fixture
def victoria(tmp_path):
    srv = VictoriaMetrics(tmp_path / "vm").start()
    yield srv
    srv.stop()


class Proc:
    """A Poplar command run as a real process (console script), with its output in a file."""

    def __init__(self, argv: list[str], log: Path, env: dict | None = None) -> None:
        self.log = log
        self.argv = argv
        e = dict(os.environ)
        e.update(env or {})
        self._out = open(log, "ab")
        self.proc = subprocess.Popen(argv, stdout=self._out, stderr=subprocess.STDOUT, env=e, cwd=REPO,
                                     start_new_session=True)

    def stop(self, sig: int = 15, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()
        return self.proc.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def spawn(tmp_path):
    procs: list[Proc] = []

    def _spawn(tool: str, *args: str, name: str | None = None, env: dict | None = None) -> Proc:
        p = Proc([str(BIN / tool), *args], tmp_path / f"{name or tool}-{len(procs)}.log", env)
        procs.append(p)
        return p

    yield _spawn
    for p in procs:
        p.stop(timeout=5)


def run_cli(tool: str, *args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e.update(env or {})
    r = subprocess.run([str(BIN / tool), *args], capture_output=True, text=True, env=e, cwd=REPO, timeout=120)
    if check and r.returncode != 0:
        raise AssertionError(f"{tool} {' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r


def wait_for(predicate, timeout: float = 30, interval: float = 0.2, what: str = "condition"):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last value {last!r})")


async def until(predicate, timeout: float = 10.0, what: str = "condition", interval: float = 0.05) -> None:
    """wait_for for async tests: poll `predicate` without blocking the event loop."""
    import asyncio

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(interval)
