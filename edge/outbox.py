"""The outbox: every point the edge accepted, kept in SQLite (WAL) until the collector acks it.

- Writes are group-committed: callers await `put()`, which returns once their points are on disk
  (synchronous=FULL, so a power cut after the return loses nothing).
- The uplink `claim()`s the oldest unclaimed rows as a batch (a contiguous id range) and
  `complete()`s it when the collector acks; an unacked claim stays claimed and is resent.
- A size cap: when full, the oldest points of the lowest priority go first (health, then
  telemetry; events and alarms last), never a point that is in flight; drops are counted by class.
- On open, a damaged database is moved aside and a new one started, instead of a crash loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiosqlite

from common.aio import wait_event
from common.points import Point, Priority
from common.wire import point_json
from edge.clock import CORRECTED_FIELD, PLAUSIBLE_FLOOR_NS, Clock

log = logging.getLogger(__name__)

ROW_OVERHEAD = 40  # bytes per row beyond the body: id, class, time, index entry (approximate)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS points (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    prio INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS points_by_prio ON points (prio, id);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass
class Claim:
    """A contiguous id range of rows handed to the uplink as one batch."""

    lo: int
    hi: int
    bodies: list[str]

    @property
    def count(self) -> int:
        return len(self.bodies)


@dataclass
class OutboxStats:
    rows: int
    bytes: int
    oldest_ns: int | None
    by_class: dict[str, int]
    dropped: dict[str, int]
    in_flight: int
    max_bytes: int
    recovered_from_damage: bool = False
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"rows": self.rows, "bytes": self.bytes, "oldest_ns": self.oldest_ns,
                "by_class": self.by_class, "dropped": self.dropped, "in_flight": self.in_flight,
                "max_bytes": self.max_bytes, "recovered_from_damage": self.recovered_from_damage}


def _check_or_move_aside(path: Path) -> str | None:
    """Open the file once synchronously; if SQLite says it is damaged, rename it and return why."""
    if not path.exists():
        return None
    try:
        db = sqlite3.connect(path)
        try:
            row = db.execute("PRAGMA quick_check").fetchone()
        finally:
            db.close()
        if row and row[0] == "ok":
            return None
        reason = f"integrity check failed: {row[0] if row else 'no answer'}"
    except sqlite3.DatabaseError as exc:
        reason = str(exc)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for suffix in ("", "-wal", "-shm"):
        p = Path(str(path) + suffix)
        if p.exists():
            p.rename(Path(f"{path}.damaged-{stamp}{suffix}"))
    return reason


class Outbox:
    def __init__(self, path: str | Path, max_bytes: int = 2 * 1024**3, commit_interval_s: float = 0.05,
                 max_commit_points: int = 20_000, clock: Clock | None = None) -> None:
        self.path = Path(path)
        self.clock = clock
        self.max_bytes = max_bytes
        self.commit_interval_s = commit_interval_s
        self.max_commit_points = max_commit_points
        self._db: aiosqlite.Connection | None = None
        self._pending: list[tuple[list[tuple], asyncio.Future]] = []
        self._pending_n = 0
        self._wake = asyncio.Event()
        self._writer: asyncio.Task | None = None
        self._closing = False
        self._bytes = 0
        self._rows = 0
        self._cursor = 0  # the backlog lane claims after this id
        self._top = 0  # highest id claimed by either lane; the live lane claims after it
        self._claims: dict[int, Claim] = {}  # by lo
        self.dropped: dict[str, int] = {p.name.lower(): 0 for p in Priority}
        self.damage: str | None = None
        self.committed_total = 0
        self.commits = 0  # transactions, to show group commit at work
        self._drop_logged: dict[str, float] = {}
        # One connection, several tasks (writer, acks, claims): transactions must not interleave.
        self._tx = asyncio.Lock()

    # -- lifecycle ------------------------------------------------------------------------
    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.damage = _check_or_move_aside(self.path)
        if self.damage:
            log.error("outbox %s was damaged (%s); it was moved aside and a new outbox started. "
                      "Points in the damaged file were not forwarded; keep the file for recovery.",
                      self.path, self.damage)
        self._db = await aiosqlite.connect(self.path, isolation_level=None)
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA synchronous=FULL")
        await self._db.executescript(_SCHEMA)
        async with self._db.execute("SELECT count(*), coalesce(sum(bytes), 0) FROM points") as cur:
            self._rows, self._bytes = await cur.fetchone()
        async with self._db.execute("SELECT name, value FROM counters") as cur:
            for name, value in await cur.fetchall():
                if name.startswith("dropped_"):
                    self.dropped[name[len("dropped_"):]] = value
        # What is here already is backlog; the live lane takes only what arrives from now on.
        async with self._db.execute("SELECT coalesce(max(id), 0) FROM points") as cur:
            (self._top,) = await cur.fetchone()
        self._writer = asyncio.create_task(self._write_loop(), name="outbox-writer")

    async def close(self) -> None:
        if self._writer:
            self._closing = True
            self._wake.set()
            await self._writer
            self._writer = None
        if self._db:
            await self._db.close()
            self._db = None

    # -- writing ---------------------------------------------------------------------------
    def put_nowait(self, points: list[Point]) -> asyncio.Future:
        """Queue points; the future resolves once they are committed to disk."""
        fut = asyncio.get_running_loop().create_future()
        rows = []
        for p in points:
            if self.clock is not None and p.box_time:
                self.clock.fix(p)  # a device's own time (a gate with NTP) is not the box's to correct
            body = point_json(p)
            rows.append((int(p.priority), p.time_ns, len(body.encode()) + ROW_OVERHEAD, body))
        self._pending.append((rows, fut))
        self._pending_n += len(rows)
        if self._pending_n >= self.max_commit_points:
            self._wake.set()
        return fut

    async def put(self, points: list[Point]) -> None:
        if points:
            await self.put_nowait(points)

    async def _write_loop(self) -> None:
        while not self._closing:
            await wait_event(self._wake, self.commit_interval_s)
            self._wake.clear()
            if self._pending:
                await self._flush_all()
        await self._flush_all()

    async def _flush_all(self) -> None:
        while self._pending:
            batch, self._pending, self._pending_n = self._pending, [], 0
            rows = [r for rs, _ in batch for r in rs]
            try:
                await self._commit(rows)
            except Exception as exc:  # disk full, I/O error: callers must not ack their sources
                log.error("outbox: cannot write %d points to %s: %s", len(rows), self.path, exc)
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(OSError(f"outbox write failed: {exc}"))
                continue
            for _, fut in batch:
                if not fut.done():
                    fut.set_result(None)

    async def _commit(self, rows: list[tuple]) -> None:
        assert self._db is not None
        async with self._tx:
            await self._commit_locked(rows)

    async def _commit_locked(self, rows: list[tuple]) -> None:
        assert self._db is not None
        dropped_before = dict(self.dropped)
        await self._db.execute("BEGIN IMMEDIATE")
        try:
            await self._db.executemany("INSERT INTO points (prio, ts, bytes, body) VALUES (?, ?, ?, ?)", rows)
            added = sum(r[2] for r in rows)
            self._bytes += added
            self._rows += len(rows)
            if self._bytes > self.max_bytes:
                await self._enforce_cap()
            await self._db.execute("COMMIT")
        except BaseException:
            await self._db.execute("ROLLBACK")
            self.dropped = dropped_before  # the deletes were rolled back too
            async with self._db.execute("SELECT count(*), coalesce(sum(bytes), 0) FROM points") as cur:
                self._rows, self._bytes = await cur.fetchone()
            raise
        self.committed_total += len(rows)
        self.commits += 1

    async def _enforce_cap(self) -> None:
        """Drop oldest rows of the lowest priority until under the cap (inside the open transaction)."""
        assert self._db is not None
        excl = " ".join(f"AND id NOT BETWEEN {c.lo} AND {c.hi}" for c in self._claims.values())
        for prio in sorted(Priority):
            while self._bytes > self.max_bytes:
                need = self._bytes - self.max_bytes
                async with self._db.execute(
                    f"SELECT id, bytes FROM points WHERE prio = ? {excl} ORDER BY id LIMIT 2000", (int(prio),)
                ) as cur:
                    rows = await cur.fetchall()
                if not rows:
                    break
                take, freed = [], 0
                for rid, b in rows:
                    take.append(rid)
                    freed += b
                    if freed >= need:
                        break
                await self._db.executemany("DELETE FROM points WHERE id = ?", [(i,) for i in take])
                self._bytes -= freed
                self._rows -= len(take)
                name = prio.name.lower()
                self.dropped[name] += len(take)
                await self._db.execute(
                    "INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                    (f"dropped_{name}", self.dropped[name]))
                now = time.monotonic()
                if now - self._drop_logged.get(name, -1e9) >= 60:  # once a minute; the counters are exact
                    self._drop_logged[name] = now
                    log.warning("outbox full (%d bytes cap): dropping the oldest %s points (%d so far). The uplink "
                                "has been down too long or the cap is too small (outbox.max_bytes).",
                                self.max_bytes, name, self.dropped[name])
            if self._bytes <= self.max_bytes:
                break

    # -- reading for the uplink -------------------------------------------------------------
    async def claim(self, max_points: int, newest: bool = False) -> Claim | None:
        """Up to max_points unclaimed rows as one batch (a contiguous id range), or None.

        Two lanes share the outbox so that a backlog drains oldest first without starving live
        data: the backlog lane (newest=False) walks up from the oldest row, skipping ranges the
        live lane holds; the live lane (newest=True) takes only rows that arrived after everything
        claimed so far.
        """
        assert self._db is not None
        # Under the transaction lock: the connection is shared, so a read between another task's
        # BEGIN and COMMIT would see rows that may yet be rolled back, or rows the cap is deleting.
        async with self._tx:
            claim, rows = await self._claim_locked(max_points, newest)
        if claim is not None:
            await self._correct_implausible(claim, rows)
        return claim

    async def _claim_locked(self, max_points: int, newest: bool) -> tuple[Claim | None, list[tuple]]:
        if newest:
            rows = await self._rows_between(self._top, None, max_points)
            if not rows:
                return None, []
        else:
            cursor = self._cursor
            while True:
                above = [c for c in self._claims.values() if c.lo > cursor]
                nxt = min(above, key=lambda c: c.lo) if above else None
                rows = await self._rows_between(cursor, nxt.lo if nxt else None, max_points)
                if rows:
                    break
                if nxt is None:
                    self._cursor = cursor
                    return None, []
                cursor = nxt.hi  # jump over a range the other lane holds
        claim = Claim(rows[0][0], rows[-1][0], [r[1] for r in rows])
        if not newest:
            self._cursor = claim.hi
        self._top = max(self._top, claim.hi)
        self._claims[claim.lo] = claim
        return claim, rows

    async def _rows_between(self, after: int, before: int | None, limit: int) -> list[tuple]:
        assert self._db is not None
        if before is None:
            sql, args = "SELECT id, body, ts FROM points WHERE id > ? ORDER BY id LIMIT ?", (after, limit)
        else:
            sql, args = ("SELECT id, body, ts FROM points WHERE id > ? AND id < ? ORDER BY id LIMIT ?",
                         (after, before, limit))
        async with self._db.execute(sql, args) as cur:
            return await cur.fetchall()

    async def _correct_implausible(self, claim: Claim, rows: list[tuple]) -> None:
        """Points stamped before the clock offset was known, by a clock that read an impossible
        time (a box booted in 1970), are corrected now; the corrected body is stored, so a resend
        after a crash carries the same timestamp."""
        clock = self.clock
        if clock is None or not clock.correction_ns:
            return
        fixed = []
        for i, (rid, body, ts) in enumerate(rows):
            if ts >= PLAUSIBLE_FLOOR_NS:
                continue
            item = json.loads(body)
            item[3] = ts + clock.correction_ns
            item[2][CORRECTED_FIELD] = True
            new = json.dumps(item, ensure_ascii=False, separators=(",", ":"))
            claim.bodies[i] = new
            fixed.append((item[3], new, rid))
        if fixed:
            assert self._db is not None
            async with self._tx:
                await self._db.execute("BEGIN IMMEDIATE")
                try:
                    await self._db.executemany("UPDATE points SET ts = ?, body = ? WHERE id = ?", fixed)
                    await self._db.execute("COMMIT")
                except BaseException:
                    await self._db.execute("ROLLBACK")  # the batch goes out corrected; the file is re-corrected next time
                    raise
            clock.corrected_points += len(fixed)

    async def complete(self, claim: Claim) -> None:
        """The collector acked this batch: delete it. A duplicate or late ack does nothing."""
        assert self._db is not None
        async with self._tx:
            if self._claims.get(claim.lo) is not claim:
                return  # a duplicate or late ack
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                async with self._db.execute(
                        "SELECT count(*), coalesce(sum(bytes), 0) FROM points WHERE id BETWEEN ? AND ?",
                        (claim.lo, claim.hi)) as cur:
                    n, b = await cur.fetchone()
                await self._db.execute("DELETE FROM points WHERE id BETWEEN ? AND ?", (claim.lo, claim.hi))
                await self._db.execute("COMMIT")
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise  # the claim stays; the batch is resent and acked again
            del self._claims[claim.lo]
            self._rows -= n
            self._bytes -= b

    def release_all(self) -> None:
        """Forget every claim (e.g. the uplink restarted): everything unacked is claimed anew."""
        self._claims.clear()
        self._cursor = 0

    @property
    def closing(self) -> bool:
        """True once close() has begun (or before open())."""
        return self._closing or self._db is None

    @property
    def in_flight(self) -> int:
        return sum(c.count for c in self._claims.values())

    @property
    def rows(self) -> int:
        return self._rows

    @property
    def bytes(self) -> int:
        return self._bytes

    async def oldest_ns(self) -> int | None:
        """Timestamp of the oldest row by arrival (cheap: the primary key, not a scan)."""
        assert self._db is not None
        async with self._tx:
            async with self._db.execute("SELECT ts FROM points ORDER BY id LIMIT 1") as cur:
                row = await cur.fetchone()
        return row[0] if row else None

    async def stats(self) -> OutboxStats:
        assert self._db is not None
        by_class = {p.name.lower(): 0 for p in Priority}
        async with self._tx:
            async with self._db.execute("SELECT prio, count(*) FROM points GROUP BY prio") as cur:
                for prio, n in await cur.fetchall():
                    by_class[Priority(prio).name.lower()] = n
        oldest = await self.oldest_ns()
        return OutboxStats(self._rows, self._bytes, oldest, by_class, dict(self.dropped), self.in_flight,
                           self.max_bytes, bool(self.damage))


def read_stats_offline(path: str | Path) -> dict:
    """Outbox figures read straight from the file (for `poplar-edge status` while the agent runs)."""
    path = Path(path)
    if not path.exists():
        return {"rows": 0, "bytes": 0, "oldest_ns": None, "by_class": {}, "dropped": {}}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        rows, size = db.execute("SELECT count(*), coalesce(sum(bytes),0) FROM points").fetchone()
        first = db.execute("SELECT ts FROM points ORDER BY id LIMIT 1").fetchone()
        oldest = first[0] if first else None
        by_class = {Priority(p).name.lower(): n for p, n in db.execute("SELECT prio, count(*) FROM points GROUP BY prio")}
        dropped = {p.name.lower(): 0 for p in Priority}
        dropped.update({name[len("dropped_"):]: v for name, v in db.execute("SELECT name, value FROM counters")
                        if name.startswith("dropped_")})
    finally:
        db.close()
    return {"rows": rows, "bytes": size, "oldest_ns": oldest, "by_class": by_class, "dropped": dropped,
            "file_bytes": os.path.getsize(path)}


def export_line_protocol(path: str | Path, out, chunk: int = 10_000) -> tuple[int, int]:
    """Write every point of the outbox file as InfluxDB line protocol, oldest first, without
    deleting anything (the agent may keep running). Returns (points written, points skipped
    because line protocol cannot carry them, e.g. no fields)."""
    from common.lineprotocol import to_line  # only the operator command needs it

    db = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True, timeout=5)
    written = skipped = 0
    try:
        last = 0
        while True:
            rows = db.execute("SELECT id, body FROM points WHERE id > ? ORDER BY id LIMIT ?", (last, chunk)).fetchall()
            if not rows:
                break
            last = rows[-1][0]
            lines = []
            for _, body in rows:
                try:
                    lines.append(to_line(Point.from_wire(json.loads(body))))
                except (ValueError, TypeError):
                    skipped += 1
            if lines:
                out.write("\n".join(lines) + "\n")
                written += len(lines)
    finally:
        db.close()
    return written, skipped
