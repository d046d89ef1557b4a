"""The shipped meter-day anomaly model, and that retraining reproduces it."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge.analytics.anomaly import DEFAULT_MODEL, LoadAnomalyModel
from simulators.households import ANOMALY_KINDS, Household, inject_anomaly

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model() -> LoadAnomalyModel:
    return LoadAnomalyModel.load()


def fresh_days(n_households: int = 100, per: int = 10, seed0: int = 900_000):
    """Days from households used by none of the training script's splits."""
    days, hh = [], []
    for s in range(seed0, seed0 + n_households):
        h, rng = Household(s), random.Random(s)
        for _ in range(per):
            days.append(h.day_profile(rng))
            hh.append(h)
    return np.asarray(days), hh


def test_shipped_model_has_threshold_and_card():
    m = LoadAnomalyModel.load()
    assert 0.5 < m.threshold < 10
    card = (DEFAULT_MODEL.parent / "MODEL_CARD.md").read_text(encoding="utf-8")
    metrics = json.loads((DEFAULT_MODEL.parent / "load_anomaly.json").read_text())
    assert f"{metrics['metrics']['roc_auc']:.4f}" in card
    assert abs(metrics["threshold"] - m.threshold) < 1e-6


def test_few_normal_days_flagged(model):
    days, _ = fresh_days()
    rate = (model.score_many(days) > model.threshold).mean()
    assert rate <= 0.02, rate


@pytest.mark.parametrize("kind,min_rate", [
    ("flat", 0.95), ("zero", 0.99), ("shifted", 0.8), ("spikes", 0.75), ("night", 0.95),
])
def test_injected_anomalies_flagged(model, kind, min_rate):
    days, hh = fresh_days(60, 5)
    rng = random.Random(ANOMALY_KINDS.index(kind))
    bad = np.asarray([inject_anomaly(d, kind, rng, base_w=h.base_w) for d, h in zip(days, hh)])
    rate = (model.score_many(bad) > model.threshold).mean()
    assert rate >= min_rate, (kind, rate)


def test_anomalies_score_higher_than_normal_days(model):
    days, hh = fresh_days(40, 5)
    rng = random.Random(3)
    normal = model.score_many(days)
    for kind in ANOMALY_KINDS:
        bad = model.score_many(np.asarray([inject_anomaly(d, kind, rng, h.base_w) for d, h in zip(days, hh)]))
        assert np.median(bad) > 2 * np.median(normal), kind


def test_score_flag_and_score_many_agree(model):
    days, hh = fresh_days(3, 2)
    many = model.score_many(days)
    for d, s in zip(days, many):
        assert model.score(list(d)) == pytest.approx(s, rel=1e-6)
        assert model.flag(d) == (s > model.threshold)
    assert model.flag([0.0] * 96)


def test_scale_invariant_shape_model(model):
    d, _ = fresh_days(1, 1)
    assert model.score(d[0] * 3) == pytest.approx(model.score(d[0]), rel=1e-2)  # not exact: +1 W in the mean


def test_bad_input(model):
    with pytest.raises(ValueError):
        model.score([1.0] * 95)
    with pytest.raises(ValueError):
        model.score([float("nan")] + [1.0] * 95)
    with pytest.raises(ValueError):
        model.score_many(np.ones((2, 3, 96)))
    assert model.score_many(np.zeros((0, 96))).shape == (0,)
    # negative readings (a meter glitch) are clipped, not propagated as NaN
    assert np.isfinite(model.score([-5.0] * 96))


def test_threshold_override():
    m = LoadAnomalyModel.load(threshold=1e9)
    assert not m.flag([0.0] * 96)


def run_training(out: Path) -> dict:
    subprocess.run([sys.executable, str(ROOT / "scripts" / "train_anomaly.py"), "--days", "2000",
                    "--out", str(out)], check=True, capture_output=True, cwd=ROOT)
    return json.loads((out / "load_anomaly.json").read_text())


def test_retraining_reproduces_metrics_and_is_deterministic(tmp_path):
    r1 = run_training(tmp_path / "a")
    r2 = run_training(tmp_path / "b")
    assert (tmp_path / "a" / "load_anomaly.onnx").read_bytes() == (tmp_path / "b" / "load_anomaly.onnx").read_bytes()
    shipped = json.loads((DEFAULT_MODEL.parent / "load_anomaly.json").read_text())["metrics"]
    m = r1["metrics"]
    assert m == r2["metrics"]
    assert m["roc_auc"] >= 0.98 and shipped["roc_auc"] >= 0.98
    assert abs(m["recall"] - shipped["recall"]) < 0.05
    assert m["false_positive_rate"] <= 0.02
    assert r1["onnx_max_rel_err"] < 1e-3
    assert (tmp_path / "a" / "MODEL_CARD.md").exists()
    small = LoadAnomalyModel.load(tmp_path / "a" / "load_anomaly.onnx")
    assert small.flag([0.0] * 96)
