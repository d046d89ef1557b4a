"""`poplar-collector status [--json]`: what the collectors sharing this state_dir are doing,
from the status-NAME.json files each running collector rewrites every status_interval_s."""


import json
import os
import time

import typer

from common.cli import fail, print_json, table


def _alive(doc: dict, now_ns: int) -> bool:
    if not doc.get("running"):
        return False
    fresh = now_ns - doc.get("updated_ns", 0) < 3 * doc.get("status_interval_s", 5) * 1e9 + 2e9
    if doc.get("host") == os.uname().nodename:
        try:
            os.kill(int(doc["pid"]), 0)
        except (OSError, ValueError, KeyError):
            return False
    return fresh


def collect(state_dir) -> list[dict]:
    from collector.service import STATUS_PREFIX

    now = time.time_ns()
    docs = []
    for p in sorted(state_dir.glob(f"{STATUS_PREFIX}*.json")):
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # being replaced right now, or damaged: the next write fixes it
        doc["alive"] = _alive(doc, now)
        doc["age_s"] = round((now - doc.get("updated_ns", 0)) / 1e9, 1)
        docs.append(doc)
    return docs


def register(app: typer.Typer) -> None:
    from collector.cli import ConfigOpt, JsonOpt, load_config

    @app.command("status")
    def status(config: ConfigOpt = None, json_out: JsonOpt = False,
               all_: bool = typer.Option(False, "--all", help="also show collectors that stopped")) -> None:
        """The running collectors: broker, sink, throughput, rejections, gateways seen."""
        cfg = load_config(config)
        docs = [d for d in collect(cfg.state_path) if all_ or d["alive"]]
        if json_out:
            print_json({"collectors": docs, "running": sum(d["alive"] for d in docs)})
            return
        if not docs:
            fail(f"no collector is running with state_dir {cfg.state_dir} (start one: poplar-collector run)", 1)
        for d in docs:
            c = d.get("counters", {})
            typer.echo(f"collector {d['collector']} (pid {d['pid']} on {d['host']}): "
                       f"{'running' if d['alive'] else 'stopped'}, updated {d['age_s']} s ago")
            b, s = d["broker"], d["sink"]
            typer.echo(f"  broker {b['url']} {'connected' if b['connected'] else 'NOT connected ' + b['last_error']}"
                       f"; sink {s['type']} {s['url']} {'ok' if s['ok'] else 'FAILING'}; queue {d['queue']}")
            typer.echo(f"  batches in {c.get('batches_in', 0)}, written {c.get('batches_written', 0)}, "
                       f"rejected {c.get('batches_rejected', 0)}; points in {c.get('points_in', 0)}, "
                       f"written {c.get('points_written', 0)}")
            other = {k: v for k, v in c.items() if k.startswith(("rejected_", "refused_")) and v}
            if other:
                typer.echo("  " + ", ".join(f"{k}={v}" for k, v in sorted(other.items())))
            if d.get("gateways"):
                typer.echo(table([[g["site"], g["gateway"], g["last_seen_s_ago"], g["lag_s"], g["batches"]]
                                  for g in d["gateways"]], ["site", "gateway", "seen s ago", "lag s", "batches"]))
