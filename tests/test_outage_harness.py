"""A whole site on real servers for the outage tests (no tests here; imported by test_outage*.py):
meter simulator -> edge agent -> central Mosquitto -> collector -> InfluxDB 1.x, each a real
process, plus a way to put points straight into the edge's outbox and to count at the end.

Counting: every point the edge accepted (the agent's own `points_accepted` counter, read from
its status file after a clean stop) plus the points the test put into the outbox must be in
InfluxDB at the end, less exactly the points the outbox counted as dropped. What is still in the
outbox when the agent stops (batches in flight) is carried over by hand with
`poplar-edge outbox export` and posted to InfluxDB, as an installer would; a replay of a point
InfluxDB already holds overwrites itself, so this cannot inflate the count.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import urllib.request
from pathlib import Path

import yaml

from common.points import Point, Priority
from edge.outbox import Outbox
from tests.conftest import run_cli, wait_for
from tests.servers import free_port

SITE, GW = "sunny-garden", "gw-07"
PREFILL_DEVICE = "prefill"


class Site:
    def __init__(self, tmp: Path, spawn, box, central, influx, db: str, meters: int = 3,
                 edge_overrides: dict | None = None, edge_env: dict | None = None) -> None:
        self.tmp, self.spawn, self.box, self.central, self.influx, self.db = tmp, spawn, box, central, influx, db
        self.edge_cfg = tmp / "edge.yaml"
        self.coll_cfg = tmp / "collector.yaml"
        self.state = tmp / "edge-state"
        self.edge_env = edge_env or {}
        self.sim = None
        self.collector = None
        self.edge = None
        self.accepted = 0  # summed over cleanly stopped agent runs
        self.prefilled = 0
        run_cli("poplar-edge", "init", "--config", str(self.edge_cfg), "--site", SITE, "--gateway", GW,
                "--state-dir", str(self.state), "--local-broker", box.url, "--uplink", central.url)
        doc = yaml.safe_load(self.edge_cfg.read_text())
        # Short timers so a test sees several resends and health reports in seconds.
        doc["uplink"].update({"ack_timeout_s": 3, "max_inflight": 4, "batch_max_points": 2000})
        doc["health_interval_s"] = 1
        for k, v in (edge_overrides or {}).items():
            if isinstance(v, dict):
                doc.setdefault(k, {}).update(v)
            else:
                doc[k] = v
        self.edge_cfg.write_text(yaml.safe_dump(doc, allow_unicode=True))
        if meters:
            port = free_port()
            self.sim = spawn("poplar-sim", "meter", "--profile", "eastron-sdm120", "--port", str(port),
                             "--units", f"1-{meters}", name="sim")
            for u in range(1, meters + 1):
                run_cli("poplar-edge", "devices", "add", f"m{u}", "--profile", "eastron-sdm120", "--tcp",
                        f"127.0.0.1:{port}", "--unit", str(u), "--interval", "1", "--config", str(self.edge_cfg))
        run_cli("poplar-collector", "init", "--config", str(self.coll_cfg), "--broker", central.url,
                "--influx-url", influx.url, "--database", db)
        run_cli("poplar-collector", "gateways", "add", GW, "--site", SITE, "--config", str(self.coll_cfg))

    # -- processes --------------------------------------------------------------------------
    def start_collector(self) -> None:
        self.collector = self.spawn("poplar-collector", "run", "--config", str(self.coll_cfg), name="collector")

    def stop_collector(self) -> None:
        assert self.collector.stop() == 0, self.collector.output()[-3000:]
        self.collector = None

    def start_edge(self) -> None:
        self.edge = self.spawn("poplar-edge", "run", "--config", str(self.edge_cfg), name="edge", env=self.edge_env)

    def kill_edge(self) -> None:
        self.edge.stop(sig=9)
        self.edge = None

    def stop_edge(self) -> dict:
        """Clean stop; adds this run's accepted points to the tally; returns the final status."""
        assert self.edge.stop() == 0, self.edge.output()[-3000:]
        self.edge = None
        st = json.loads((self.state / "status.json").read_text())
        # Everything this run committed to the outbox: the agent's points_accepted counter can
        # miss a batch committed just as shutdown cancelled the source that was waiting for it.
        self.accepted += st["outbox"]["committed"]
        return st

    def status(self) -> dict:
        return json.loads(run_cli("poplar-edge", "status", "--json", "--config", str(self.edge_cfg)).stdout)

    # -- outbox -------------------------------------------------------------------------------
    def prefill(self, n: int, measurement: str = "meter", start_ns: int | None = None, pad: int = 0,
                chunk: int = 10_000) -> int:
        """Put n points straight into the edge's outbox (the agent must not be running); returns
        the outbox's size in bytes afterwards."""
        import time

        t0 = start_ns or (time.time_ns() - 3600 * 10**9)  # an hour ago: a backlog
        tags = {"site": SITE, "gateway": GW, "device": PREFILL_DEVICE}

        async def fill() -> int:
            ob = Outbox(self.state / "outbox.db", max_bytes=self._max_bytes())
            await ob.open()
            for lo in range(0, n, chunk):
                fields = {"seq": 0} if not pad else {"seq": 0, "pad": "x" * pad}
                await ob.put([Point(measurement, dict(tags), {**fields, "seq": i}, t0 + i * 1000,
                                    Priority.TELEMETRY) for i in range(lo, min(n, lo + chunk))])
            size = ob.bytes
            await ob.close()
            return size

        self.state.mkdir(parents=True, exist_ok=True)
        size = asyncio.run(fill())
        self.prefilled += n
        return size

    def _max_bytes(self) -> int:
        doc = yaml.safe_load(self.edge_cfg.read_text())
        return doc.get("outbox", {}).get("max_bytes", 2 * 1024**3)

    def outbox_rows(self) -> int:
        db = sqlite3.connect(f"file:{self.state / 'outbox.db'}?mode=ro", uri=True)
        try:
            return db.execute("SELECT count(*) FROM points").fetchone()[0]
        finally:
            db.close()

    def dropped(self) -> dict[str, int]:
        db = sqlite3.connect(f"file:{self.state / 'outbox.db'}?mode=ro", uri=True)
        try:
            return {n[len("dropped_"):]: v for n, v in db.execute("SELECT name, value FROM counters")
                    if n.startswith("dropped_")}
        finally:
            db.close()

    def carry_leftovers(self) -> int:
        """Export what is still in the outbox and post it to InfluxDB (agent stopped)."""
        out = self.tmp / "leftover.lp"
        run_cli("poplar-edge", "outbox", "export", str(out), "--config", str(self.edge_cfg))
        body = out.read_bytes()
        if body:
            req = urllib.request.Request(f"{self.influx.url}/write?db={self.db}&precision=ns", data=body)
            with urllib.request.urlopen(req, timeout=30) as r:
                assert r.status == 204
        return body.count(b"\n")

    # -- counting -------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        c = self.influx.count
        return {
            "meter": c("meter", self.db, "voltage"),
            "prefill": c("meter", self.db, "seq", f"WHERE device = '{PREFILL_DEVICE}'"),
            "device_health": c("device_health", self.db, "online"),
            "gateway_health": c("gateway_health", self.db, "outbox_rows"),
            "gate_event": c("gate_event", self.db),
            "gate_alarm": c("gate_alarm", self.db),
        }

    def wait_drained(self, timeout: float = 40) -> None:
        wait_for(lambda: self.outbox_rows() <= 50 and self.prefill_in_influx() + self.dropped_prefill() >= self.prefilled,
                 timeout=timeout, interval=0.5, what="the backlog to drain into InfluxDB")

    def prefill_in_influx(self) -> int:
        return self.influx.count("meter", self.db, "seq", f"WHERE device = '{PREFILL_DEVICE}'")

    def dropped_prefill(self) -> int:
        return 0  # overridden by tests that drop on purpose

    def finish_and_count(self) -> dict:
        """Stop cleanly, carry leftovers, and check: InfluxDB == accepted + prefilled - dropped."""
        if self.edge is not None:
            self.stop_edge()
        self.carry_leftovers()
        got = self.counts()
        total = sum(got.values())
        dropped = sum(self.dropped().values())
        assert total == self.accepted + self.prefilled - dropped, (
            f"InfluxDB holds {got} = {total}; the edge accepted {self.accepted}, the test put {self.prefilled} "
            f"into the outbox, the outbox dropped {dropped}")
        return {"influx": got, "accepted": self.accepted, "prefilled": self.prefilled, "dropped": dropped}

    def stop_all(self) -> None:
        if self.edge is not None:
            self.edge.stop()
        if self.collector is not None:
            self.collector.stop()
        if self.sim is not None:
            self.sim.stop()
