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
