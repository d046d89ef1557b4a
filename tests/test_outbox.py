"""The outbox on its own (no servers): group commit, crash safety, damage, the cap by priority,
the two claim lanes, clock correction of stored points, and the operator commands."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from common.points import Point, Priority, priority_of
from edge.clock import CORRECTED_FIELD, Clock
from edge.outbox import ROW_OVERHEAD, Outbox, export_line_protocol, read_stats_offline
from tests.conftest import REPO, run_cli

TAGS = {"site": "s", "gateway": "g", "device": "d"}


def pt(i: int, measurement: str = "meter", ts: int | None = None) -> Point:
    return Point(measurement, dict(TAGS), {"i": i}, ts if ts is not None else 1_800_000_000_000_000_000 + i,
                 priority_of(measurement))


async def test_group_commit_many_writers_few_transactions(tmp_path):
    ob = Outbox(tmp_path / "o.db", commit_interval_s=0.05)
    await ob.open()
    await asyncio.gather(*(ob.put([pt(w * 10 + k) for k in range(10)]) for w in range(200)))
    assert ob.rows == 2000 and ob.committed_total == 2000
    assert ob.commits <= 3, f"2000 points from 200 writers took {ob.commits} transactions"
    await ob.close()
    db = sqlite3.connect(tmp_path / "o.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT count(*) FROM points").fetchone()[0] == 2000


WRITER = textwrap.dedent("""
    import asyncio, sys
    sys.path.insert(0, {repo!r})
    from common.points import Point
    from edge.outbox import Outbox

    async def main():
        ob = Outbox({path!r}, commit_interval_s=0.01)
        await ob.open()
        i = 0
        while True:
            pts = [Point("meter", {{"site": "s", "gateway": "g", "device": "d"}}, {{"i": i + k}}, 10**18 + i + k)
                   for k in range(500)]
            await ob.put(pts)          # returns only once the points are on disk
            i += 500
            print(i, flush=True)       # so this many are committed

    asyncio.run(main())
""")


@pytest.mark.parametrize("round_", [1, 2])
def test_sigkill_during_heavy_writes_loses_no_committed_point(tmp_path, round_):
    path = tmp_path / "o.db"
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(repo=str(REPO), path=str(path)))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    committed = 0
    deadline = time.time() + 20
    while committed < 20_000 * round_ and time.time() < deadline:
        committed = int(proc.stdout.readline())
    proc.send_signal(signal.SIGKILL)  # mid-write: the writer never stops on its own
    proc.wait()
    for line in proc.stdout.read().split():
        committed = max(committed, int(line))  # printed before the kill landed
    assert committed >= 20_000
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    n, lo, hi = db.execute("SELECT count(*), min(id), max(id) FROM points").fetchone()
    assert n >= committed, f"{committed} points were reported committed but only {n} survived"
    assert hi - lo + 1 == n  # no holes: whole transactions or nothing
    db.close()


async def test_damaged_database_is_moved_aside_and_a_new_one_started(tmp_path):
    path = tmp_path / "outbox.db"
    ob = Outbox(path)
    await ob.open()
    await ob.put([pt(i) for i in range(100)])
    await ob.close()
    raw = bytearray(path.read_bytes())
    raw[4096:8192] = b"\xde\xad" * 2048  # wreck a page in the middle
    raw[0:16] = b"not a database!!"
    path.write_bytes(bytes(raw))
    ob = Outbox(path)
    await ob.open()  # no exception, no crash loop
    assert ob.damage
    assert ob.rows == 0
    aside = list(tmp_path.glob("outbox.db.damaged-*"))
    assert aside, "the damaged file must be kept for recovery"
    await ob.put([pt(1)])
    assert (await ob.stats()).recovered_from_damage
    await ob.close()


async def test_agent_reports_damaged_outbox_as_gateway_health_alarm(tmp_path):
    from edge.agent import Agent
    from edge.config import EdgeConfig
    from tests.servers import free_port

    state = tmp_path / "state"
    state.mkdir()
    (state / "outbox.db").write_bytes(b"garbage, not SQLite" * 500)
    cfg = EdgeConfig(site="s", gateway="g", state_dir=str(state),
                     uplink={"url": f"mqtt://127.0.0.1:{free_port()}"}, health_interval_s=3600)
    agent = Agent(cfg)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await asyncio.sleep(1.5)
    stop.set()
    await task
    db = sqlite3.connect(state / "outbox.db")
    bodies = [json.loads(b) for (b,) in db.execute("SELECT body FROM points")]
    alarms = [b for b in bodies if b[0] == "gateway_health" and "alarm" in b[2]]
    assert alarms and "outbox damaged" in alarms[0][2]["alarm"]
    assert db.execute("SELECT prio FROM points").fetchone()[0] == Priority.ALARM
    assert list(state.glob("outbox.db.damaged-*"))


async def test_cap_drops_lowest_priority_oldest_first_counted_exactly(tmp_path):
    path = tmp_path / "o.db"
    ob = Outbox(path, max_bytes=1024 * 1024, commit_interval_s=0.01)
    await ob.open()
    # Interleave classes so age alone would not give the policy's answer.
    kinds = ["gateway_health", "meter", "gate_event", "gate_alarm"]
    sent = {k: 0 for k in kinds}
    i = 0
    for _ in range(40):
        pts = []
        for _ in range(250):
            k = kinds[i % 4]
            pts.append(Point(k, dict(TAGS), {"i": i, "pad": "x" * 60}, 10**18 + i, priority_of(k)))
            sent[k] += 1
            i += 1
        await ob.put(pts)
    assert ob.bytes <= ob.max_bytes
    db = sqlite3.connect(path)
    left = {k: 0 for k in kinds}
    for (b,) in db.execute("SELECT body FROM points"):
        left[json.loads(b)[0]] += 1
    dropped = ob.dropped
    assert dropped["health"] == sent["gateway_health"] - left["gateway_health"] > 0
    assert dropped["telemetry"] == sent["meter"] - left["meter"]
    assert dropped["event"] == sent["gate_event"] - left["gate_event"]
    assert dropped["alarm"] == sent["gate_alarm"] - left["gate_alarm"] == 0
    # and the oldest go first: the surviving meter points are the newest ones
    surviving = [json.loads(b)[2]["i"] for (b,) in db.execute("SELECT body FROM points WHERE prio = 1 ORDER BY id")]
    if dropped["telemetry"]:
        assert min(surviving) > min(set(range(i)) - set(surviving))
    await ob.close()
    ob2 = Outbox(path, max_bytes=1024 * 1024)
    await ob2.open()
    assert ob2.dropped == dropped, "drop counters survive a restart"
    assert read_stats_offline(path)["dropped"] == dropped
    await ob2.close()


async def test_cap_never_drops_points_in_flight(tmp_path):
    ob = Outbox(tmp_path / "o.db", max_bytes=1024 * 1024, commit_interval_s=0.01)
    await ob.open()
    await ob.put([pt(i) for i in range(2000)])
    claim = await ob.claim(1000)
    assert claim and claim.lo == 1 and claim.count == 1000
    for n in range(10):
        await ob.put([Point("meter", dict(TAGS), {"pad": "y" * 200}, 2 * 10**18 + n * 1000 + k) for k in range(1000)])
    db = sqlite3.connect(tmp_path / "o.db")
    assert db.execute("SELECT count(*) FROM points WHERE id BETWEEN 1 AND 1000").fetchone()[0] == 1000
    assert ob.dropped["telemetry"] > 0
    await ob.complete(claim)
    await ob.complete(claim)  # a duplicate ack is harmless
    assert db.execute("SELECT count(*) FROM points WHERE id BETWEEN 1 AND 1000").fetchone()[0] == 0
    await ob.close()


async def test_two_lanes_backlog_oldest_first_live_newest(tmp_path):
    ob = Outbox(tmp_path / "o.db", commit_interval_s=0.01)
    await ob.open()
    await ob.put([pt(i) for i in range(100)])
    await ob.close()
    ob = Outbox(tmp_path / "o.db", commit_interval_s=0.01)  # restart: the 100 are backlog
    await ob.open()
    assert await ob.claim(10, newest=True) is None  # nothing live yet
    await ob.put([pt(1000 + i) for i in range(5)])
    live = await ob.claim(10, newest=True)
    assert (live.lo, live.hi) == (101, 105)
    b1 = await ob.claim(40)
    assert (b1.lo, b1.hi) == (1, 40)  # oldest first
    await ob.put([pt(2000 + i) for i in range(3)])
    live2 = await ob.claim(10, newest=True)
    assert (live2.lo, live2.hi) == (106, 108)
    b2 = await ob.claim(100)
    assert (b2.lo, b2.hi) == (41, 100)  # stops below the live lane's range
    assert await ob.claim(100) is None  # jumps over both live ranges; nothing unclaimed
    await ob.put([pt(3000)])
    b3 = await ob.claim(100)
    assert (b3.lo, b3.hi) == (109, 109)
    assert ob.in_flight == 5 + 40 + 3 + 60 + 1
    for c in (live, b1, live2, b2, b3):
        await ob.complete(c)
    assert ob.rows == 0 and ob.bytes == 0
    await ob.close()


def test_clock_decides_correction_only_when_clearly_wrong():
    c = Clock(threshold_s=120, skew_ns=0)
    c.observe(collector_ns=10**18 + 5 * 10**9, local_ns=10**18)  # 5 s off: not corrected
    assert c.offset_ns == 5 * 10**9 and c.correction_ns == 0
    p = c.fix(pt(1))
    assert CORRECTED_FIELD not in p.fields
    c2 = Clock(threshold_s=120, skew_ns=0)
    for k in range(3):
        c2.observe(1_800_000_000 * 10**9 + k * 10**6, 3600 * 10**9 + 400_000_000)  # booted in 1970
    assert c2.correction_ns % 10**9 == 0  # whole seconds, so aligned polls stay aligned
    p = c2.fix(Point("meter", dict(TAGS), {"v": 1.0}, 3601 * 10**9))
    assert p.fields[CORRECTED_FIELD] is True
    assert abs(p.time_ns - (1_800_000_000 * 10**9 + 10**9 - 400_000_000)) < 2 * 10**9
    # NTP fixes the clock: the correction stops
    for k in range(9):
        c2.observe(10**18 + 10**8, 10**18)
    assert c2.correction_ns == 0


async def test_points_stamped_in_1970_are_corrected_when_claimed_and_stay_corrected(tmp_path):
    clock = Clock(threshold_s=120, skew_ns=0)
    ob = Outbox(tmp_path / "o.db", clock=clock, commit_interval_s=0.01)
    await ob.open()
    await ob.put([pt(i, ts=3600 * 10**9 + i) for i in range(10)])  # before the offset is known
    clock.observe(1_800_000_000 * 10**9, 3600 * 10**9)
    claim = await ob.claim(100)
    items = [json.loads(b) for b in claim.bodies]
    assert all(it[3] == 1_800_000_000 * 10**9 + i and it[2][CORRECTED_FIELD] is True for i, it in enumerate(items))
    ob.release_all()  # as after a crash: the resend must carry the same timestamps
    again = await ob.claim(100)
    assert again.bodies == claim.bodies
    await ob.close()


async def test_export_and_stats_commands(tmp_path):
    state = tmp_path / "state"
    cfg = tmp_path / "edge.yaml"
    run_cli("poplar-edge", "init", "--config", str(cfg), "--site", "s", "--gateway", "g", "--state-dir", str(state),
            "--uplink", "mqtt://127.0.0.1:1")
    ob = Outbox(state / "outbox.db", commit_interval_s=0.01)
    await ob.open()
    await ob.put([Point("meter", {**TAGS, "device": "5幢 1,单元=电表"}, {"v": 1.5, "note": 'say "hi"'}, 10**18 + i)
                  for i in range(7)] + [pt(99, "gate_alarm")])
    await ob.close()
    doc = json.loads(run_cli("poplar-edge", "outbox", "stats", "--json", "--config", str(cfg)).stdout)
    assert doc["rows"] == 8 and doc["by_class"] == {"telemetry": 7, "alarm": 1}
    assert doc["oldest_ns"] == 10**18 and doc["bytes"] > 8 * ROW_OVERHEAD
    text = run_cli("poplar-edge", "outbox", "stats", "--config", str(cfg)).stdout
    assert "8 points" in text and "alarm" in text
    out = tmp_path / "backlog.lp"
    r = run_cli("poplar-edge", "outbox", "export", str(out), "--config", str(cfg))
    assert "exported 8 points" in r.stdout
    lines = out.read_text().splitlines()
    assert len(lines) == 8
    assert lines[0] == r'meter,device=5幢\ 1\,单元\=电表,gateway=g,site=s v=1.5,note="say \"hi\"" 1000000000000000000'
    assert read_stats_offline(state / "outbox.db")["rows"] == 8  # export deletes nothing
    bad = run_cli("poplar-edge", "outbox", "export", str(tmp_path / "no" / "such" / "dir" / "f"), "--config",
                  str(cfg), check=False)
    assert bad.returncode == 1 and "cannot write" in bad.stderr
    import io
    assert export_line_protocol(state / "outbox.db", io.StringIO()) == (8, 0)


def test_stats_on_a_damaged_file_says_what_to_do(tmp_path):
    state = tmp_path / "state"
    cfg = tmp_path / "edge.yaml"
    run_cli("poplar-edge", "init", "--config", str(cfg), "--site", "s", "--gateway", "g", "--state-dir", str(state),
            "--uplink", "mqtt://127.0.0.1:1")
    (state / "outbox.db").write_bytes(b"x" * 5000)
    r = run_cli("poplar-edge", "outbox", "stats", "--config", str(cfg), check=False)
    assert r.returncode == 1 and "moves it aside" in r.stderr and "Traceback" not in r.stderr


# -- claims never race a commit (review findings) -------------------------------------------------
def _health_points(n: int, start: int) -> list[Point]:
    return [Point("gateway_health", {"site": "s", "gateway": "g", "device": "d"}, {"x": i}, start + i,
                  Priority.HEALTH) for i in range(n)]


async def test_a_claim_during_a_commit_that_fails_sees_nothing_of_it(tmp_path):
    """The uplink claims while the writer's transaction is open and then rolls back (disk full):
    the claim must not hold the rolled-back rows, whose ids the next commit reuses."""
    ob = Outbox(tmp_path / "o.db", max_bytes=10**9, commit_interval_s=0.01)
    await ob.open()
    t = time.time_ns()
    early: list[asyncio.Task] = []
    real = ob._db.executemany

    async def failing(sql, rows):
        r = await real(sql, rows)
        if sql.startswith("INSERT INTO points") and not early:
            early.append(asyncio.ensure_future(ob.claim(1000, newest=True)))  # the live lane, meanwhile
            await asyncio.sleep(0.05)
            raise sqlite3.OperationalError("database or disk is full")
        return r

    ob._db.executemany = failing
    with pytest.raises(OSError):
        await ob.put(_health_points(10, t))
    ob._db.executemany = real
    assert await early[0] is None  # it waited for the transaction and found nothing committed
    await ob.put(_health_points(10, t + 1000))
    claim = await ob.claim(1000, newest=True)
    assert claim is not None and claim.count == 10
    await ob.complete(claim)
    assert ob.rows == 0
    await ob.close()


async def test_a_claim_never_takes_rows_the_cap_is_dropping(tmp_path):
    """A claim at the moment the cap drops the oldest rows: a point is either dropped (counted) or
    claimed and delivered, never both."""
    ob = Outbox(tmp_path / "o.db", max_bytes=100_000, commit_interval_s=0.01)
    await ob.open()
    t = time.time_ns()
    await ob.put(_health_points(700, t))
    original = ob._enforce_cap
    claims: list[asyncio.Task] = []

    async def cap_with_a_claim_meanwhile():
        ob._enforce_cap = original
        claims.append(asyncio.ensure_future(ob.claim(100)))  # runs at the cap's first await
        await original()

    ob._enforce_cap = cap_with_a_claim_meanwhile
    await ob.put(_health_points(300, t + 10_000))
    claim = await claims[0]
    assert ob.dropped["health"] > 0
    async with ob._db.execute("SELECT count(*) FROM points WHERE id BETWEEN ? AND ?", (claim.lo, claim.hi)) as cur:
        (still_there,) = await cur.fetchone()
    assert still_there == claim.count  # nothing claimed was also dropped
    await ob.close()
