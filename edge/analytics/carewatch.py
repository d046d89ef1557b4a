"""Care watch (关爱独居老人): notice when a household that is normally active goes quiet.

Pure rule, no model, no I/O. Feed one meter's power samples in time order; the watch
  1. groups them into local clock hours (mean W per hour),
  2. learns, over the first `learn_days` complete days, the household's standby level (the
     quietest usual hour) and which hours of the day are normally active (typical use well above
     standby), then keeps learning from a rolling window of recent ordinary days,
  3. raises one CareAlert when `alert_hours` normally-active hours in a row show activity below
     `quiet_ratio` of what that hour usually shows (only standby, flat, or zero).
Hours that are not normally active (night, a commuter's working day) neither count nor break the
streak; any hour with real activity ends it. Hours with too few samples (meter offline) end it
too: missing data is device_health's business, not a reason to call on someone.

Nothing is alerted while learning. See docs/analytics.md for thresholds, limits and consent.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo

DEFAULT_TZ = ZoneInfo("Asia/Shanghai")


@dataclass(frozen=True, slots=True)
class CareAlert:
    reason: str            # "no_power" (meter reads ~0) or "no_activity" (standby/flat only)
    since: datetime        # start of the first quiet, normally-active hour (local time)
    hours_quiet: int       # normally-active hours in a row that were quiet
    expected_w: float      # typical mean W over those hours
    observed_w: float      # observed mean W over those hours


@dataclass(frozen=True, slots=True)
class CareWatchConfig:
    learn_days: int = 7          # complete days before the first alert is possible
    window_days: int = 14        # rolling history the profile is learnt from
    alert_hours: int = 3         # quiet normally-active hours in a row that raise an alert
    quiet_ratio: float = 0.25    # hour is quiet if activity < this x its usual activity
    min_active_w: float = 150.0  # an hour is "normally active" if usual use exceeds standby by this
    active_frac: float = 0.7     # ...on at least this share of learnt days
    no_power_w: float = 5.0      # below this mean W the meter reads "nothing at all"
    min_samples: int = 2         # fewer samples in an hour: unknown, not quiet


class CareWatch:
    """One household. update(ts, power_w) -> CareAlert | None, samples in time order."""

    def __init__(self, config: CareWatchConfig | None = None, tz: tzinfo = DEFAULT_TZ) -> None:
        self.cfg = config or CareWatchConfig()
        self.tz = tz
        self._hour: datetime | None = None        # local start of the hour being filled
        self._sum = 0.0
        self._n = 0
        self._today: dict[int, float] = {}        # hour of day -> mean W, for the current day
        self._today_date: date | None = None
        self._today_excluded = False
        self._days: deque[dict[int, float]] = deque(maxlen=self.cfg.window_days)
        self._base_w = 0.0
        self._usual: dict[int, float] = {}        # hour -> typical activity above standby (W)
        self._active: set[int] = set()
        self._streak: list[tuple[datetime, float, float]] = []   # (hour, expected W, observed W)
        self._alerted = False
        self._snooze_until: datetime | None = None
        self.ignored_samples = 0                  # out of order / not finite

    # -- public -----------------------------------------------------------------------------

    @property
    def learning(self) -> bool:
        return len(self._days) < self.cfg.learn_days

    @property
    def active_hours(self) -> frozenset[int]:
        """Hours of the day (local) the household is normally active in; empty while learning."""
        return frozenset(self._active)

    @property
    def base_w(self) -> float:
        return self._base_w

    def export_days(self) -> list[dict[int, float]]:
        """The learnt days (hour of day -> mean W), oldest first, so an agent restart does not
        start the learning over. Kept on the box only (see docs/analytics.md, consent)."""
        return [dict(d) for d in self._days]

    def import_days(self, days: list[dict]) -> int:
        """Restore export_days() output; bad entries are skipped. Returns the days taken."""
        self._days.clear()
        for d in days[-self.cfg.window_days:]:
            if not isinstance(d, dict):
                continue
            try:
                day = {int(h): float(v) for h, v in d.items()}
            except (TypeError, ValueError):
                continue
            if len(day) >= 20 and all(0 <= h < 24 and 0 <= v < float("inf") for h, v in day.items()):
                self._days.append(day)
        if self._days:
            self._relearn()
        return len(self._days)

    def snooze(self, until: datetime) -> None:
        """No alerts until `until` (resident away, announced to property staff)."""
        self._snooze_until = self._local(until)
        self._streak.clear()

    def update(self, ts: datetime | float, power_w: float) -> CareAlert | None:
        t = self._local(ts)
        if not (power_w == power_w) or power_w in (float("inf"), float("-inf")):
            self.ignored_samples += 1
            return None
        hour = t.replace(minute=0, second=0, microsecond=0)
        if self._hour is not None and hour < self._hour:
            self.ignored_samples += 1          # clock stepped back: keep the hour we trust
            return None
        alert = None
        if self._hour is not None and hour > self._hour:
            alert = self._close_hour(hour)
        if self._hour is None or hour != self._hour:
            self._hour, self._sum, self._n = hour, 0.0, 0
        self._sum += max(0.0, float(power_w))
        self._n += 1
        return alert

    # -- internals --------------------------------------------------------------------------

    def _local(self, ts: datetime | float) -> datetime:
        if isinstance(ts, (int, float)):
            return datetime.fromtimestamp(ts, timezone.utc).astimezone(self.tz)
        return ts.replace(tzinfo=self.tz) if ts.tzinfo is None else ts.astimezone(self.tz)

    def _close_hour(self, next_hour: datetime) -> CareAlert | None:
        assert self._hour is not None
        h = self._hour
        mean = self._sum / self._n if self._n >= self.cfg.min_samples else None
        if self._today_date != h.date():
            self._roll_day(h.date())
        alert = self._judge(h, mean)
        if mean is not None:
            self._today[h.hour] = mean
        # Whole hours without a single sample in between: unknown, so the streak ends.
        if next_hour - h > timedelta(hours=1):
            self._streak.clear()
        return alert

    def _roll_day(self, new_date: date) -> None:
        # A day enters the profile only when complete and ordinary: an alerted day would teach
        # the watch that silence is normal.
        if self._today_date is not None and len(self._today) >= 20 and not self._today_excluded:
            self._days.append(self._today)
            self._relearn()
        self._today, self._today_date, self._today_excluded = {}, new_date, False

    def _relearn(self) -> None:
        days = list(self._days)
        per_hour = {hr: [d[hr] for d in days if hr in d] for hr in range(24)}
        typical = {hr: statistics.median(v) for hr, v in per_hour.items() if v}
        # Standby = the quietest usual hour (fridge, router): robust to one odd night.
        self._base_w = min(typical.values()) if typical else 0.0
        self._usual, self._active = {}, set()
        for hr, vals in per_hour.items():
            if not vals:
                continue
            act = [v - self._base_w for v in vals]
            self._usual[hr] = max(0.0, statistics.median(act))
            busy = sum(a >= self.cfg.min_active_w for a in act) / len(act)
            if busy >= self.cfg.active_frac and self._usual[hr] >= self.cfg.min_active_w:
                self._active.add(hr)

    def _judge(self, h: datetime, mean: float | None) -> CareAlert | None:
        if self.learning:
            return None
        if mean is None:
            self._streak.clear()
            return None
        if self._snooze_until is not None and h < self._snooze_until:
            self._today_excluded = True
            return None
        usual = self._usual.get(h.hour, 0.0)
        activity = mean - self._base_w
        if h.hour not in self._active:
            if activity >= max(self.cfg.min_active_w, self.cfg.quiet_ratio * usual):
                self._end_streak()        # somebody is up and about
            return None
        if activity >= self.cfg.quiet_ratio * usual:
            self._end_streak()
            return None
        self._streak.append((h, self._base_w + usual, mean))
        if len(self._streak) < self.cfg.alert_hours:
            return None
        self._today_excluded = True
        if self._alerted:
            return None           # one alert per quiet episode
        self._alerted = True
        exp = statistics.fmean(e for _, e, _ in self._streak)
        obs = statistics.fmean(o for _, _, o in self._streak)
        return CareAlert(reason="no_power" if obs < self.cfg.no_power_w else "no_activity",
                         since=self._streak[0][0], hours_quiet=len(self._streak),
                         expected_w=round(exp, 1), observed_w=round(obs, 1))

    def _end_streak(self) -> None:
        self._streak.clear()
        self._alerted = False
