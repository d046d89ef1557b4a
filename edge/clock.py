"""Clock sanity for gateway boxes without a real-time clock (docs/delivery.md, "Clock").

A box that boots without a battery-backed clock starts in 1970 (or wherever its image was built)
until NTP fixes it, and some never get NTP. The collector puts its own clock (`collector_ns`) in
every ack; the uplink feeds those samples here. When the edge's clock is clearly wrong
(|offset| > threshold) the outbox shifts every new point by the measured offset before storing it
and marks it with the boolean field `clock_corrected=true`, so central IT can tell.

The correction is decided once per point, when it enters the outbox, and stored; a resend after
a crash carries the same timestamp, so the point keeps its identity in InfluxDB.

For tests and drills, the environment variable POPLAR_CLOCK_SKEW_S makes the edge behave as if
its clock were that many seconds off (e.g. -1.7e9 for a box that booted in 1970): every point is
stamped with the skewed time, and offsets are measured against it.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections import deque

from common.points import Point

log = logging.getLogger(__name__)

SKEW_ENV = "POPLAR_CLOCK_SKEW_S"
CORRECTED_FIELD = "clock_corrected"
#: No real clock of a box running this software reads earlier than this (2024-01-01 UTC):
#: a local time before it is certainly wrong, whatever the collector says.
PLAUSIBLE_FLOOR_NS = 1_704_067_200 * 10**9
NS = 1_000_000_000


def skew_from_env() -> int:
    """The simulated clock error in ns (0 unless POPLAR_CLOCK_SKEW_S is set)."""
    raw = os.environ.get(SKEW_ENV, "").strip()
    if not raw:
        return 0
    try:
        return int(float(raw) * NS)
    except ValueError:
        log.error("%s=%r is not a number of seconds; ignored", SKEW_ENV, raw)
        return 0


class Clock:
    """The edge's view of its own clock error.

    offset_ns = collector clock - edge clock, the median of the last few ack samples.
    `correction_ns` is the offset rounded to whole seconds (so points aligned to a poll
    interval stay aligned) when |offset| exceeds the threshold, else 0.
    """

    def __init__(self, threshold_s: float = 120.0, skew_ns: int | None = None, samples: int = 9) -> None:
        self.threshold_ns = int(threshold_s * NS)
        self.skew_ns = skew_from_env() if skew_ns is None else skew_ns
        self._samples: deque[int] = deque(maxlen=samples)
        self.offset_ns: int | None = None
        self.correction_ns = 0
        self.corrected_points = 0
        if self.skew_ns:
            log.warning("simulating a clock %.0f s off (%s); for tests and drills only",
                        self.skew_ns / NS, SKEW_ENV)

    def now_ns(self) -> int:
        """The edge's own clock (skewed when simulating a wrong one)."""
        return time.time_ns() + self.skew_ns

    @property
    def known(self) -> bool:
        return self.offset_ns is not None

    @property
    def certainly_wrong(self) -> bool:
        """True while the local clock reads a time no real clock can show (e.g. 1970)."""
        return self.now_ns() < PLAUSIBLE_FLOOR_NS

    def observe(self, collector_ns: int, local_ns: int) -> None:
        """One sample from an ack: the collector's clock and ours at (about) the same instant."""
        self._samples.append(collector_ns - local_ns)
        offset = int(statistics.median(self._samples))
        self.offset_ns = offset
        if abs(offset) > self.threshold_ns:
            new = round(offset / NS) * NS
            # Keep the correction stable: re-deciding it on every ack would move timestamps by a
            # few ms between batches and could make two points of one series collide.
            if self.correction_ns == 0 or abs(new - self.correction_ns) > 2 * NS:
                log.warning("this box's clock is %.0f s off the collector's; timestamps are corrected and "
                            "marked %s=true. Fix the box's time (NTP, RTC battery) to stop this.",
                            -offset / NS, CORRECTED_FIELD)
                self.correction_ns = new
        elif self.correction_ns and abs(offset) < self.threshold_ns / 2:
            log.info("this box's clock now agrees with the collector's (off by %.1f s); correction stopped",
                     offset / NS)
            self.correction_ns = 0

    def fix(self, point: Point) -> Point:
        """Apply the simulated skew (tests) and the correction to a new point, in place."""
        if self.skew_ns:
            point.time_ns += self.skew_ns
        if self.correction_ns:
            point.time_ns += self.correction_ns
            point.fields[CORRECTED_FIELD] = True
            self.corrected_points += 1
        return point

    def as_fields(self) -> dict:
        f: dict = {"clock_correction_s": self.correction_ns // NS}
        if self.offset_ns is not None:
            f["clock_offset_ms"] = self.offset_ns // 1_000_000
        return f
