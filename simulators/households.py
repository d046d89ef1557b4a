"""Residential electricity use: a daily load curve per household, deterministic from a seed.

Shared by the meter simulator (live values) and the analytics training script (history), so the
model is trained on the same behaviour the simulator shows.

Household kinds (drawn from the seed unless given) make the population less uniform than one
curve with jittered peaks, which matters for care watch (an elderly person living alone is active
through the day; a commuter is not):
  family   morning + midday + long evening peak (the original curve; same values for a given seed)
  worker   lives alone, out all day: morning and late evening only
  elderly  lives alone, at home: early morning, cooking at noon, afternoon TV, early evening

`inject_anomaly()` turns a normal day into one of ANOMALY_KINDS for training and tests.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import datetime
from typing import Sequence

KINDS = ("family", "worker", "elderly")
_KIND_WEIGHTS = (0.55, 0.25, 0.20)
ANOMALY_KINDS = ("flat", "zero", "shifted", "spikes", "night")
QUARTERS = 96


def _bump(hour: float, centre: float, width: float) -> float:
    d = min(abs(hour - centre), 24 - abs(hour - centre))
    return math.exp(-0.5 * (d / width) ** 2)


@dataclass
class Household:
    """One household's consumption. power_w(t) is smooth plus noise; energy only grows."""

    seed: int
    base_w: float = 0.0          # fridge, standby
    morning_w: float = 0.0
    evening_w: float = 0.0
    midday_w: float = 0.0
    kind: str = ""               # one of KINDS; drawn from the seed when empty

    def __post_init__(self) -> None:
        r = random.Random(self.seed)
        self.base_w = self.base_w or r.uniform(60, 180)
        self.morning_w = self.morning_w or r.uniform(300, 1500)
        self.evening_w = self.evening_w or r.uniform(800, 2500)
        self.midday_w = self.midday_w or r.uniform(0, 600)
        self.morning_h = r.uniform(6.5, 8.0)
        self.evening_h = r.uniform(18.5, 20.5)
        self.midday_h = 12.3
        self.evening_width = 1.6
        self.afternoon_w = 0.0
        # A separate stream, so adding kinds left the original draws (and family curves) unchanged.
        k = random.Random(f"kind-{self.seed}")
        self.kind = self.kind or k.choices(KINDS, _KIND_WEIGHTS)[0]
        if self.kind not in KINDS:
            raise ValueError(f"unknown household kind {self.kind!r}")
        if self.kind == "worker":
            self.midday_w = k.uniform(0, 60)
            self.evening_h = k.uniform(19.5, 21.5)
            self.evening_w *= 0.6
            self.evening_width = 1.2
        elif self.kind == "elderly":
            self.base_w *= 0.8
            self.morning_h = k.uniform(5.5, 7.0)
            self.morning_w *= 0.5
            self.midday_h = k.uniform(11.0, 12.3)
            self.midday_w = k.uniform(300, 900)
            self.afternoon_w = k.uniform(120, 350)          # TV, kettle, heating blanket
            self.evening_h = k.uniform(17.0, 19.0)
            self.evening_w *= 0.5
            self.evening_width = 1.3

    def mean_power_w(self, hour: float) -> float:
        """Expected power at a local hour of day (0..24)."""
        return self._mean(hour, 0.0)

    def _mean(self, hour: float, shift_h: float) -> float:
        # shift_h moves the household's schedule for one day (a later morning, say)
        return (self.base_w
                + self.morning_w * _bump(hour, self.morning_h + shift_h, 0.8)
                + self.midday_w * _bump(hour, self.midday_h + shift_h, 1.0)
                + self.afternoon_w * _bump(hour, 15.5 + shift_h, 1.5)
                + self.evening_w * _bump(hour, self.evening_h + shift_h, self.evening_width))

    def power_w(self, t: datetime, rng: random.Random | None = None) -> float:
        hour = t.hour + t.minute / 60 + t.second / 3600
        noise = (rng or random).gauss(1.0, 0.08)
        return max(0.0, self.mean_power_w(hour) * noise)

    def day_profile(self, rng: random.Random) -> list[float]:
        """96 quarter-hour mean powers (W) for one day, with day-to-day variation: overall level,
        schedule (+-30 min), per-quarter noise, and a few short appliance bursts (kettle,
        washing machine) at waking hours, so a normal day is not just a smooth curve."""
        scale = rng.gauss(1.0, 0.12)
        shift = rng.gauss(0.0, 0.3)
        day = [max(0.0, self._mean(q / 4 + 0.125, shift) * scale * rng.gauss(1.0, 0.1))
               for q in range(QUARTERS)]
        for _ in range(rng.randint(0, 3)):
            q = rng.randint(6 * 4, 23 * 4 - 1)
            for j in range(rng.randint(1, 2)):
                day[q + j] += rng.uniform(400, 1800)
        return day


def inject_anomaly(day: Sequence[float], kind: str, rng: random.Random, base_w: float | None = None
                   ) -> list[float]:
    """A copy of a normal day made anomalous. base_w: the household's standby load (for 'flat').

    flat     constant all day (only standby, or a stuck/estimated meter reading), +-3 % noise
    zero     no consumption at all (supply cut, meter fault)
    shifted  the whole day's schedule moved by 6-12 h (night shift, or a clock fault)
    spikes   3-8 short heavy loads of 2-5 kW at any hour
    night    heavy use (1.5-3.5 kW) for 3-6 hours between midnight and 6 (heater, mining rig)
    """
    d = [float(v) for v in day]
    n = len(d)
    mean = sum(d) / n
    if kind == "flat":
        level = base_w if base_w is not None and rng.random() < 0.5 else rng.uniform(0.3, 1.2) * mean
        return [max(0.0, level * rng.gauss(1.0, 0.03)) for _ in range(n)]
    if kind == "zero":
        return [0.0] * n
    if kind == "shifted":
        k = rng.choice((-1, 1)) * rng.randint(24, 48)
        return d[-k:] + d[:-k]
    if kind == "spikes":
        for _ in range(rng.randint(3, 8)):
            d[rng.randrange(n)] += rng.uniform(2000, 5000)
        return d
    if kind == "night":
        start = rng.randint(0, 2 * 4)
        extra = rng.uniform(1500, 3500)
        for q in range(start, min(start + rng.randint(3 * 4, 6 * 4), 6 * 4)):
            d[q] += extra * rng.gauss(1.0, 0.05)
        return d
    raise ValueError(f"unknown anomaly kind {kind!r}; one of {ANOMALY_KINDS}")
