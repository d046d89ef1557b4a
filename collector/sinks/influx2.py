"""InfluxDB 2.x / 3.x sink through influxdb-client: POST /api/v2/write?org=&bucket=&precision=ns,
with `Authorization: Token ...`.

influxdb-client's async API needs aiohttp (not a dependency), so the synchronous write API runs in
the sink's worker thread (`Sender`): the HTTP wait does not block the event loop, and the
collector's own checker keeps formatting the next group meanwhile. The collector does its own batching and retries, so
the client's batching and retry machinery is off (SYNCHRONOUS write, one call per group).
"""

from __future__ import annotations

import asyncio
import re

from influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException

from collector.config import Influx2Sink as Influx2Config
from collector.sinks import BodyTooLarge, Sender, SinkUnavailable, WriteResult, body_bytes

# InfluxDB puts its own count last; the message before it quotes field names and values as
# they came (a field named "dropped=0" must not be read as the count).
_DROPPED = re.compile(r"dropped=(\d+)\W*$")


class Influx2Sink:
    def __init__(self, cfg: Influx2Config) -> None:
        self.cfg = cfg
        self._client = InfluxDBClient(url=cfg.url, token=cfg.token, org=cfg.org,
                                      timeout=int(cfg.timeout_s * 1000), enable_gzip=cfg.gzip,
                                      retries=False)
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)
        self._sender = Sender("influx2-write")

    def _write_sync(self, body: bytes) -> None:
        self._write_api.write(bucket=self.cfg.bucket, org=self.cfg.org, record=body, write_precision="ns")

    async def write(self, lines: str | bytes, count: int) -> WriteResult:
        try:
            _, took = await self._sender.run(self._write_sync, body_bytes(lines))
        except ApiException as exc:
            text = (exc.body or exc.reason or "").strip() if isinstance(exc.body or "", str) else str(exc.body)
            status = exc.status or 0
            if status in (401, 403):
                raise SinkUnavailable(f"InfluxDB at {self.cfg.url} refused the token ({status}): check "
                                      "sink.token and that it may write to bucket "
                                      f"{self.cfg.bucket!r} of org {self.cfg.org!r}") from None
            if status == 413:
                raise BodyTooLarge(f"InfluxDB refused a {len(lines):,}-byte write as too large (413): "
                                   f"{text[:200]}") from None
            if status == 404:
                raise SinkUnavailable(f"InfluxDB at {self.cfg.url} has no bucket {self.cfg.bucket!r} in org "
                                      f"{self.cfg.org!r} (404): create it, or fix sink.bucket / sink.org") from None
            if status in (400, 422):
                m = _DROPPED.search(text)
                if m and "partial write" in text:
                    dropped = int(m.group(1))
                    return WriteResult(max(0, count - dropped), dropped, text[:500])
                # The whole body was refused: retrying will not help.
                return WriteResult(0, count, text[:500])
            raise SinkUnavailable(f"InfluxDB answered {status}: {text[:300]}") from None
        except BodyTooLarge:
            raise
        except Exception as exc:  # connection refused, timeout (urllib3 errors)
            raise SinkUnavailable(f"InfluxDB at {self.cfg.url} unreachable: {exc.__class__.__name__}: "
                                  f"{str(exc)[:200]}") from None
        return WriteResult(count, seconds=took)

    async def ping(self) -> bool:
        try:
            return bool(await asyncio.to_thread(self._client.ping))
        except Exception:
            return False

    async def close(self) -> None:
        await self._sender.close(self._client.close)
