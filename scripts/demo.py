"""The main job: a small simulated compound, end to end, on real servers.

  meter simulators (Modbus TCP) ─┐
  face-gate / elevator sims ─ box broker (Mosquitto) ─ edge agent ─ central broker (Mosquitto)
                                                                  └ collector ─ InfluxDB 1.x

Every part runs as its own process with the same commands an installer would type. Prints where
the data is and an InfluxQL query showing rows arriving. Ctrl-C stops everything cleanly.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.servers import InfluxDB1, Mosquitto, free_port  # noqa: E402

BIN = Path(sys.executable).parent
SITE, GATEWAY, DB = "sunny-garden", "gw-01", "poplar"


def cli(tool: str, *args: str) -> None:
    r = subprocess.run([str(BIN / tool), *args], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"demo: {tool} {' '.join(args)} failed:\n{r.stderr or r.stdout}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=0, help="stop by itself after this long (0 = until Ctrl-C)")
    ap.add_argument("--meters", type=int, default=8, help="simulated single-phase meters")
    args = ap.parse_args()

    work = REPO / "run" / time.strftime("demo-%Y%m%d-%H%M%S")
    work.mkdir(parents=True)
    logs = work / "logs"
    logs.mkdir()
    procs: list[tuple[str, subprocess.Popen]] = []
    servers = []

    def spawn(name: str, tool: str, *a: str) -> subprocess.Popen:
        out = open(logs / f"{name}.log", "ab")
        p = subprocess.Popen([str(BIN / tool), *a], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append((name, p))
        return p

    stop = {"now": False}

    def on_signal(signum, frame):
        stop["now"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        print(f"demo: working folder {work}")
        box = Mosquitto(work / "box-broker", name="box-broker").start()
        central = Mosquitto(work / "central-broker", name="central-broker").start()
        influx = InfluxDB1(work / "influxdb").start()
        servers += [box, central, influx]
        influx.create_db(DB)
        print(f"demo: box broker {box.url}, central broker {central.url}, InfluxDB {influx.url}")

        sdm120, sdm630 = free_port(), free_port()
        spawn("sim-sdm120", "poplar-sim", "meter", "--profile", "eastron-sdm120", "--port", str(sdm120),
              "--units", f"1-{args.meters}")
        spawn("sim-sdm630", "poplar-sim", "meter", "--profile", "eastron-sdm630", "--port", str(sdm630),
              "--units", "1-2")

        edge_cfg, coll_cfg = str(work / "edge.yaml"), str(work / "collector.yaml")
        cli("poplar-edge", "init", "--config", edge_cfg, "--site", SITE, "--gateway", GATEWAY,
            "--state-dir", str(work / "edge-state"), "--local-broker", box.url, "--uplink", central.url)
        for n in range(1, args.meters + 1):
            building, unit_no = f"{(n - 1) // 4 + 1}幢", f"{(n - 1) % 2 + 1}单元"
            cli("poplar-edge", "devices", "add", f"{building}{unit_no}{n:02d}户电表", "--profile", "eastron-sdm120",
                "--tcp", f"127.0.0.1:{sdm120}", "--unit", str(n), "--building", building, "--unit-no", unit_no,
                "--interval", "5", "--config", edge_cfg)
        for n in (1, 2):
            cli("poplar-edge", "devices", "add", f"{n}号配电柜总表", "--profile", "eastron-sdm630",
                "--tcp", f"127.0.0.1:{sdm630}", "--unit", str(n), "--interval", "5", "--config", edge_cfg)
        extra = REPO / "scripts" / "demo_extra.py"
        if extra.exists():  # gates and elevators, when their simulators are present
            import runpy
            runpy.run_path(str(extra))["setup"](spawn=spawn, cli=cli, edge_cfg=edge_cfg, box_url=box.url)

        cli("poplar-collector", "init", "--config", coll_cfg, "--broker", central.url, "--influx-url", influx.url,
            "--database", DB)
        cli("poplar-collector", "gateways", "add", GATEWAY, "--site", SITE, "--config", coll_cfg)
        spawn("collector", "poplar-collector", "run", "--config", coll_cfg)
        spawn("edge", "poplar-edge", "run", "--config", edge_cfg)

        query = "SELECT last(active_power) AS watts, last(energy_import) AS kwh FROM meter GROUP BY building, device"
        print(f"""
demo: running. Logs in {logs}
  edge config      {edge_cfg}      (POPLAR_EDGE_CONFIG)
  collector config {coll_cfg}
  InfluxDB         {influx.url}  database {DB!r}
  try:  {BIN}/poplar-edge status --config {edge_cfg}
        curl -sG {influx.url}/query --data-urlencode db={DB} --data-urlencode "q={query}"
  InfluxQL, counted every 5 s below:  SELECT count(voltage) FROM meter
Ctrl-C stops everything.
""", flush=True)
        started = time.time()
        while not stop["now"]:
            for name, p in procs:
                if p.poll() is not None:
                    print(f"demo: {name} exited with code {p.returncode}; see {logs / (name + '.log')}")
                    stop["now"] = True
            if stop["now"] or (args.seconds and time.time() - started > args.seconds):
                break
            time.sleep(5)
            counts = {}
            for m in ("meter", "device_health", "gate_event", "elevator_status"):
                try:
                    counts[m] = influx.count(m, DB)
                except Exception:
                    counts[m] = 0
            print(f"demo: {time.strftime('%H:%M:%S')} rows in InfluxDB: "
                  + ", ".join(f"{k}={v}" for k, v in counts.items() if v or k == "meter"), flush=True)
    finally:
        print("demo: stopping", flush=True)
        for name, p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for name, p in reversed(procs):
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        for s in reversed(servers):
            s.stop()
        print(f"demo: stopped. Data and logs stay in {work}")
    bad = [(n, p.returncode) for n, p in procs if p.returncode not in (0, -15)]
    if bad:
        print(f"demo: processes that did not exit cleanly: {bad}")
        sys.exit(1)


if __name__ == "__main__":
    os.chdir(REPO)
    main()
