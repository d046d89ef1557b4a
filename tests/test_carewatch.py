"""Care watch on the simulator's households: few false alarms, quick on a household gone flat."""

from __future__ import annotations

import random
from datetime import datetime, timedelta


from edge.analytics.carewatch import DEFAULT_TZ, CareAlert, CareWatch, CareWatchConfig
from simulators.households import Household

START = datetime(2024, 3, 4, tzinfo=DEFAULT_TZ)


def feed(w: CareWatch, h: Household, rng: random.Random, days: int, change=None, start=START):
    """Quarter-hour samples from day_profile; change(t, w) may replace a value (None = no sample)."""
    alerts: list[tuple[datetime, CareAlert]] = []
    for d in range(days):
        prof = h.day_profile(rng)
        for q in range(96):
            t = start + timedelta(days=d, minutes=15 * q)
            v = prof[q] if change is None else change(t, prof[q])
            if v is None:
                continue
            a = w.update(t, v)
            if a:
                alerts.append((t, a))
    return alerts


def test_false_alarm_rate_on_normal_households():
    watched_days = alarms = 0
    for s in range(200):
        w = CareWatch()
        alarms += len(feed(w, Household(s), random.Random(s), 14))
        watched_days += 14 - w.cfg.learn_days
        assert not w.learning and len(w.active_hours) >= 3
    rate = alarms / watched_days
    print(f"care watch false alarms: {alarms} in {watched_days} household-days ({rate:.4f}/day)")
    assert rate <= 0.005


def test_detects_household_gone_flat_within_a_few_active_hours():
    delays = {"family": [], "worker": [], "elderly": []}
    for s in range(1000, 1120):
        h = Household(s)
        w = CareWatch()
        flat_from = START + timedelta(days=9, hours=10)
        rng2 = random.Random(-s)
        alerts = feed(w, h, random.Random(s), 11,
                      change=lambda t, v: h.base_w * rng2.gauss(1, 0.05) if t >= flat_from else v)
        assert len(alerts) == 1, (s, h.kind, alerts)   # one alert per episode, not one per hour
        t, a = alerts[0]
        assert a.reason == "no_activity" and a.hours_quiet == w.cfg.alert_hours
        assert a.since >= flat_from and a.observed_w < a.expected_w / 2
        delays[h.kind].append((t - flat_from).total_seconds() / 3600)
    print({k: (len(v), sorted(v)[len(v) // 2], max(v)) for k, v in delays.items()})
    # An elderly resident at home is normally active all day: alert after ~3 quiet hours.
    assert max(delays["elderly"]) <= 5
    # Everyone else: the same 3 active hours, but their active hours are spread out (evening).
    assert max(max(v) for v in delays.values()) <= 14


def test_zero_power_reason():
    h = Household(5, kind="elderly")
    cut = START + timedelta(days=8, hours=9)
    alerts = feed(CareWatch(), h, random.Random(1), 9, change=lambda t, v: 0.0 if t >= cut else v)
    assert [a.reason for _, a in alerts] == ["no_power"]
    assert alerts[0][1].observed_w == 0.0


def test_no_alert_while_learning():
    h = Household(7, kind="elderly")
    w = CareWatch()
    flat = START + timedelta(days=2, hours=8)
    # Days 2..5 flat: still learning, so no alert; and those days teach it nothing is active.
    alerts = feed(w, h, random.Random(2), 6, change=lambda t, v: h.base_w if t >= flat else v)
    assert alerts == [] and w.learning


def test_meter_offline_is_not_an_alert():
    h = Household(11, kind="elderly")
    gap = (START + timedelta(days=8, hours=8), START + timedelta(days=8, hours=16))
    alerts = feed(CareWatch(), h, random.Random(3), 9,
                  change=lambda t, v: None if gap[0] <= t < gap[1] else v)
    assert alerts == []


def test_snooze_suppresses_and_alerts_again_after():
    h = Household(13, kind="elderly")
    w = CareWatch()
    away = START + timedelta(days=8)
    feed(w, h, random.Random(4), 8)
    w.snooze(away + timedelta(days=2))
    rng = random.Random(5)
    alerts = feed(w, h, rng, 3, change=lambda t, v: h.base_w, start=away)
    # quiet for three days; only the hours after the snooze ended may alert
    assert len(alerts) == 1 and alerts[0][1].since >= away + timedelta(days=2)


def test_activity_resumes_rearms():
    h = Household(17, kind="elderly")
    w = CareWatch()
    q1 = (START + timedelta(days=8, hours=9), START + timedelta(days=8, hours=14))
    q2 = (START + timedelta(days=9, hours=9), START + timedelta(days=9, hours=14))
    quiet = lambda t, v: h.base_w if (q1[0] <= t < q1[1] or q2[0] <= t < q2[1]) else v  # noqa: E731
    alerts = feed(w, h, random.Random(6), 10, change=quiet)
    assert [a.since.date() for _, a in alerts] == [q1[0].date(), q2[0].date()]


def test_epoch_seconds_and_naive_datetimes_are_local_time():
    h = Household(19, kind="elderly")
    w1, w2 = CareWatch(), CareWatch()
    rng1, rng2 = random.Random(8), random.Random(8)
    for d in range(8):
        p1, p2 = h.day_profile(rng1), h.day_profile(rng2)
        for q in range(96):
            t = START + timedelta(days=d, minutes=15 * q)
            w1.update(t.timestamp(), p1[q])
            w2.update(t.replace(tzinfo=None), p2[q])
    assert w1.active_hours == w2.active_hours and w1.active_hours
    assert 10 in w1.active_hours          # midday cooking, local time
    assert 3 not in w1.active_hours


def test_out_of_order_and_bad_samples_are_ignored_and_counted():
    w = CareWatch()
    w.update(START + timedelta(hours=2), 100)
    assert w.update(START + timedelta(hours=1), 100) is None
    assert w.update(START + timedelta(hours=2, minutes=5), float("nan")) is None
    assert w.ignored_samples == 2


def test_config_alert_hours_is_respected():
    h = Household(23, kind="elderly")
    flat = START + timedelta(days=8, hours=9)
    for n in (2, 4):
        alerts = feed(CareWatch(CareWatchConfig(alert_hours=n)), h, random.Random(9), 9,
                      change=lambda t, v: h.base_w if t >= flat else v)
        assert len(alerts) == 1 and alerts[0][1].hours_quiet == n


def test_export_import_days_round_trip_and_bad_entries_skipped():
    h, w = Household(5), CareWatch()
    feed(w, h, random.Random(5), 9)
    days = w.export_days()
    assert len(days) >= w.cfg.learn_days
    w2 = CareWatch()
    as_json = [{str(k): v for k, v in d.items()} for d in days]      # keys come back as strings
    garbage = [None, {"x": 1}, {str(k): float("nan") for k in range(24)}, {str(k): 1.0 for k in range(5)}]
    assert w2.import_days(garbage + as_json) == len(days)
    assert w2.active_hours == w.active_hours and w2.base_w == w.base_w and not w2.learning
    assert CareWatch().import_days(garbage) == 0
