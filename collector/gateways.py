"""The gateways allowed to write, and the site each belongs to (STATE_DIR/gateways.db).

Several collector processes may share the file; each notices changes through data_version.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from common.wire import ID_PATTERN


class GatewayError(ValueError):
    pass


class Gateways:
    def __init__(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS gateways (id TEXT PRIMARY KEY, site TEXT NOT NULL, "
                         "added_ns INTEGER NOT NULL, note TEXT NOT NULL DEFAULT '')")
        self._version = -1
        self._cache: dict[str, str] = {}

    def close(self) -> None:
        self._db.close()

    def add(self, gateway: str, site: str, note: str = "") -> None:
        for what, v in (("gateway", gateway), ("site", site)):
            if not ID_PATTERN.match(v):
                raise GatewayError(f"{what} id {v!r}: use 1-64 letters, digits, '.', '_' or '-'")
        existing = self.site_of(gateway)
        if existing is not None and existing != site:
            raise GatewayError(f"gateway {gateway!r} is already authorised for site {existing!r}; "
                               "remove it first if it really moved")
        self._db.execute("INSERT OR REPLACE INTO gateways VALUES (?, ?, ?, ?)", (gateway, site, time.time_ns(), note))
        self._version = -1  # data_version only moves for other connections' commits

    def remove(self, gateway: str) -> None:
        if self._db.execute("DELETE FROM gateways WHERE id = ?", (gateway,)).rowcount == 0:
            raise GatewayError(f"no gateway {gateway!r} is authorised")
        self._version = -1

    def all(self) -> list[dict]:
        return [{"gateway": g, "site": s, "added_ns": a, "note": n}
                for g, s, a, n in self._db.execute("SELECT id, site, added_ns, note FROM gateways ORDER BY site, id")]

    def site_of(self, gateway: str) -> str | None:
        """Cached lookup, refreshed whenever the file changed (cheap enough per batch)."""
        v = self._db.execute("PRAGMA data_version").fetchone()[0]
        if v != self._version:
            self._cache = dict(self._db.execute("SELECT id, site FROM gateways"))
            self._version = v
        return self._cache.get(gateway)
