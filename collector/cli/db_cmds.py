"""`poplar-collector init-db`: the InfluxDB 1.x database, retention policies and roll-ups."""


from typing import Annotated, Optional

import typer

from common.cli import fail, print_json
from collector.influxql import InfluxError, InfluxQL, check_since, continuous_queries, ident


def _hours(duration: str) -> int:
    """InfluxDB's "2160h0m0s" -> 2160; "0s" (infinite) -> 0."""
    return int(duration.split("h")[0]) if "h" in duration else 0


def setup_database(q: InfluxQL, db: str, raw_rp: str, raw_days: int, rollup_rp: str, rollup_days: int,
                   admin) -> list[str]:
    """Bring the database to the wanted state; returns what was changed (empty: nothing to do)."""
    changed: list[str] = []
    dbs = {v[0] for res in q.run("SHOW DATABASES", db=False) for s in res.get("series", [])
           for v in s.get("values", [])}
    if db not in dbs:
        q.run(f"CREATE DATABASE {ident(db)}", db=False)
        changed.append(f"created database {db}")
    rps = {}
    for res in q.run(f"SHOW RETENTION POLICIES ON {ident(db)}", db=False):
        for s in res.get("series", []):
            for v in s.get("values", []):
                r = dict(zip(s["columns"], v))
                rps[r["name"]] = r
    for name, days, default in ((raw_rp, raw_days, True), (rollup_rp, rollup_days, False)):
        dur = f"{days}d" if days else "INF"
        want_h = days * 24
        have = rps.get(name)
        if have is None:
            q.run(f"CREATE RETENTION POLICY {ident(name)} ON {ident(db)} DURATION {dur} REPLICATION 1"
                  + (" DEFAULT" if default else ""), db=False)
            changed.append(f"created retention policy {name} ({dur})")
        elif _hours(have["duration"]) != want_h or (default and not have["default"]):
            q.run(f"ALTER RETENTION POLICY {ident(name)} ON {ident(db)} DURATION {dur}"
                  + (" DEFAULT" if default else ""), db=False)
            changed.append(f"changed retention policy {name} to {dur}" + (" (default)" if default else ""))
    existing = {}
    for res in q.run("SHOW CONTINUOUS QUERIES", db=False):
        for s in res.get("series", []):
            if s.get("name") == db:
                existing.update({v[0]: v[1] for v in s.get("values", [])})
    for cq in continuous_queries(db, admin):
        if cq.name in existing:
            # InfluxDB rewrites the text it shows, so compare the INTO/FROM targets it keeps verbatim.
            text = existing[cq.name].replace('"', "")
            if f".{admin.rollup_rp}." in text and f".{admin.raw_rp}." in text:
                continue
            q.run(f"DROP CONTINUOUS QUERY {ident(cq.name)} ON {ident(db)}", db=False)
            changed.append(f"dropped continuous query {cq.name} (other retention policies)")
        q.run(cq.create(db), db=False)
        changed.append(f"created continuous query {cq.name}")
    return changed


def register(app: typer.Typer) -> None:
    from collector.cli import ConfigOpt, JsonOpt, load_config

    @app.command("init-db")
    def init_db(
        config: ConfigOpt = None,
        raw_days: Annotated[Optional[int], typer.Option(help="keep raw points this many days (default 90)")] = None,
        rollup_days: Annotated[Optional[int], typer.Option(help="keep hourly roll-ups this many days; 0 = forever")] = None,
        backfill: Annotated[Optional[str], typer.Option(help="also compute roll-ups for past data, e.g. 7d")] = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Create the InfluxDB 1.x database, retention policies and hourly roll-ups (safe to re-run)."""
        cfg = load_config(config)
        if cfg.sink.type != "influxdb1":
            fail("init-db sets up InfluxDB 1.x. For InfluxDB 2.x/3.x create the bucket with its retention "
                 "(influx bucket create --name BUCKET --retention 90d) and see docs/queries.md for roll-ups", 2)
        admin = cfg.database_setup
        raw_d = admin.raw_days if raw_days is None else raw_days
        roll_d = admin.rollup_days if rollup_days is None else rollup_days
        if raw_d < 1 or roll_d < 0:
            fail("--raw-days must be 1 or more, --rollup-days 0 (forever) or more", 2)
        if backfill:
            try:
                check_since(backfill)
            except ValueError as exc:
                fail(f"--backfill {exc}", 2)
        q = InfluxQL(cfg)
        try:
            changed = setup_database(q, cfg.sink.database, admin.raw_rp, raw_d, admin.rollup_rp, roll_d, admin)
            filled = []
            if backfill:
                for cq in continuous_queries(cfg.sink.database, admin):
                    q.run(cq.backfill(backfill))
                    filled.append(cq.name)
        except InfluxError as exc:
            fail(f"InfluxDB: {exc}")
        finally:
            q.close()
        if json_out:
            print_json({"database": cfg.sink.database, "changed": changed, "backfilled": filled})
            return
        for c in changed:
            typer.echo(c)
        if not changed:
            typer.echo(f"database {cfg.sink.database} is already set up; nothing changed")
        if filled:
            typer.echo(f"roll-ups computed for the last {backfill}")
