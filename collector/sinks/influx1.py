"""InfluxDB 1.x sink: HTTP POST /write with line protocol, precision ns.

Writes run in the sink's worker thread (`Sender`) on a blocking, kept-alive connection. On the
event loop a body of megabytes leaves in socket-buffer-sized pieces, one per loop turn, and the
loop is busy checking the next batches (CPU): InfluxDB would wait for the rest of the body, and
the two would take turns instead of working at once. A blocking send releases the GIL for the
whole syscall, so the body goes out while the checker runs; gzip happens in that thread too.
"""

from __future__ import annotations

import gzip
import re

import httpx

from collector.config import Influx1Sink as Influx1Config
from collector.sinks import BodyTooLarge, Sender, SinkUnavailable, WriteResult, body_bytes

# InfluxDB puts its own count last; the message before it quotes field names and values as
# they came (a field named "dropped=0" must not be read as the count).
_DROPPED = re.compile(r"dropped=(\d+)\W*$")


class Influx1Sink:
    def __init__(self, cfg: Influx1Config) -> None:
        self.cfg = cfg
        auth = (cfg.username, cfg.password or "") if cfg.username else None
        self._http = httpx.AsyncClient(base_url=cfg.url, timeout=cfg.timeout_s, auth=auth)
        self._writes = httpx.Client(base_url=cfg.url, timeout=cfg.timeout_s, auth=auth)  # keep-alive
        self._sender = Sender("influx1-write")
        self._params = {"db": cfg.database, "precision": "ns"}
        if cfg.retention_policy:
            self._params["rp"] = cfg.retention_policy

    def _post(self, lines: str | bytes) -> httpx.Response:
        body = body_bytes(lines)
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if self.cfg.gzip:
            body = gzip.compress(body, 1)  # zlib releases the GIL while it compresses
            headers["Content-Encoding"] = "gzip"
        return self._writes.post("/write", params=self._params, content=body, headers=headers)

    async def write(self, lines: str | bytes, count: int) -> WriteResult:
        try:
            r, took = await self._sender.run(self._post, lines)
        except httpx.HTTPError as exc:
            raise SinkUnavailable(f"InfluxDB at {self.cfg.url} unreachable: {exc!r}") from None
        if r.status_code == 204:
            return WriteResult(count, seconds=took)
        text = r.text.strip()
        if r.status_code == 400 and "partial write" in text:
            m = _DROPPED.search(text)
            dropped = int(m.group(1)) if m else 1
            return WriteResult(max(0, count - dropped), dropped, text[:500], took)
        if r.status_code == 413:
            raise BodyTooLarge(f"InfluxDB refused a {len(lines):,}-byte write as too large (413, its "
                               f"max-body-size): {text[:200]}")
        if r.status_code == 404 and "database not found" in text:
            raise SinkUnavailable(f"InfluxDB database {self.cfg.database!r} does not exist; "
                                  "run `poplar-collector init-db`")
        if r.status_code == 400:
            # The whole body was refused (e.g. a type conflict on every point): retrying won't help.
            return WriteResult(0, count, text[:500], took)
        raise SinkUnavailable(f"InfluxDB answered {r.status_code}: {text[:300]}")

    async def query(self, q: str, epoch: str = "ns") -> dict:
        r = await self._http.get("/query", params={"db": self.cfg.database, "q": q, "epoch": epoch})
        r.raise_for_status()
        return r.json()

    async def ping(self) -> bool:
        try:
            r = await self._http.get("/ping")
            return r.status_code == 204
        except httpx.HTTPError:
            return False

    async def close(self) -> None:
        await self._http.aclose()
        await self._sender.close(self._writes.close)
