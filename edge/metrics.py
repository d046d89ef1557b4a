"""Counters and gauges of the running agent; reported in gateway_health points and status.json."""

from __future__ import annotations

import collections
import logging
import time


class Metrics:
    def __init__(self) -> None:
        self.counters: collections.Counter[str] = collections.Counter()
        self.gauges: dict[str, float | int | str] = {}
        self.started = time.time()
        self._logged: set[tuple[str, str]] = set()

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] += n

    def once(self, logger: logging.Logger, level: int, key: tuple[str, str], msg: str, *args) -> None:
        """Log a problem once per (kind, subject), however often it recurs; the counter tells how often."""
        if key not in self._logged:
            if len(self._logged) > 10_000:
                self._logged.clear()
            self._logged.add(key)
            logger.log(level, msg, *args)

    def snapshot(self) -> dict:
        return {"counters": dict(self.counters), "gauges": dict(self.gauges),
                "uptime_s": round(time.time() - self.started, 1)}


class ProcessUsage:
    """This process's CPU (percent of one core since the last call) and resident memory."""

    def __init__(self) -> None:
        import psutil  # a dependency; imported here so importing Metrics stays cheap

        self._proc = psutil.Process()
        self._proc.cpu_percent(None)  # the first call only starts the measurement

    def fields(self) -> dict[str, float | int]:
        try:
            return {"cpu_percent": float(self._proc.cpu_percent(None)),
                    "memory_rss_bytes": int(self._proc.memory_info().rss)}
        except Exception:  # psutil.Error on exotic kernels: health must still go out
            return {}
