#!/usr/bin/env python3
"""Train, evaluate and export the meter-day anomaly model. One command, deterministic:

    python scripts/train_anomaly.py                     # full run, writes edge/analytics/models/
    python scripts/train_anomaly.py --days 2000 --out /tmp/m   # small run (tests)

Data: simulators/households.py. Training uses normal days only (households seeded 0..); the
threshold is the `--quantile` of scores on normal days of *other* households (validation, seeded
100000..); metrics come from a third set of households (test, seeded 200000..) whose days are half
normal, half made anomalous with inject_anomaly() (each kind equally often).

Method: per day x (96 quarter-hour W): shape f = log1p(x / (mean(x) + 1 W)), standardised per
quarter with the training mean/std, projected on the top-k principal components; score = mean
squared reconstruction error. The whole pipeline is one ONNX graph (built with onnx.helper, no
deep-learning framework), so the edge needs only onnxruntime.

Needs numpy and onnx (dev extra); onnxruntime to check the export.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simulators.households import ANOMALY_KINDS, QUARTERS, Household, inject_anomaly  # noqa: E402

DEFAULT_OUT = ROOT / "edge" / "analytics" / "models"
EPS_W = 1.0            # keeps an all-zero day finite: its shape is then all zeros
FLAT_EPS = 1e-3        # an all-zero/constant day has spread 0: its flatness is large, not inf
DAYS_PER_HOUSEHOLD = 40
MODEL_NAME = "load_anomaly"


def household_days(seed0: int, n_days: int, per_household: int = DAYS_PER_HOUSEHOLD
                   ) -> tuple[np.ndarray, list[Household]]:
    """n_days normal days from consecutive households seed0, seed0+1, ... (per_household each)."""
    out: list[list[float]] = []
    hh: list[Household] = []
    seed = seed0
    while len(out) < n_days:
        h = Household(seed)
        rng = random.Random(seed * 1_000_003 + 17)
        for _ in range(min(per_household, n_days - len(out))):
            out.append(h.day_profile(rng))
            hh.append(h)
        seed += 1
    return np.asarray(out, dtype=np.float64), hh


def features(days: np.ndarray) -> np.ndarray:
    """Same maths as the ONNX graph; used for fitting."""
    x = np.maximum(days, 0.0)
    return np.log1p(x / (x.mean(axis=1, keepdims=True) + EPS_W))


def fit(train: np.ndarray, k: int) -> dict[str, np.ndarray]:
    f = features(train)
    mu = f.mean(axis=0)
    sd = f.std(axis=0) + 1e-3
    z = (f - mu) / sd
    # SVD of the standardised training matrix; rows of vt are the principal axes.
    _, s, vt = np.linalg.svd(z, full_matrices=False)
    explained = float((s[:k] ** 2).sum() / (s ** 2).sum())
    # Fix each axis' sign (first large component positive) so re-runs give identical files.
    signs = np.sign(vt[np.arange(vt.shape[0]), np.abs(vt).argmax(axis=1)])
    vt = vt * signs[:, None]
    P = vt[:k].T
    # Per-component std of the training projections: a day can be far out *along* a principal
    # axis (a perfectly flat day is the extreme of "peaky vs flat") and still reconstruct well.
    t = z @ P
    tsd = t.std(axis=0) + 1e-6
    spe = ((z - t @ P.T) ** 2).mean(axis=1)
    t2 = ((t / tsd) ** 2).sum(axis=1)
    # Each statistic is scaled by its own 99th percentile on the training days, so "1" means
    # "as unusual as the 1 % oddest normal day" for both, and max() can compare them.
    return {"mu": mu, "sd": sd, "P": P, "tsd": tsd, "spe_q": np.array(np.quantile(spe, 0.99)),
            "t2_q": np.array(np.quantile(t2, 0.99)),
            "flat_q": np.array(np.quantile(f.std(axis=1), 0.01)), "explained": np.array(explained)}


def score_np(params: dict[str, np.ndarray], days: np.ndarray) -> np.ndarray:
    """max of three statistics, each scaled so 1 = as odd as the oddest 1 % of training days.

    SPE (reconstruction error) catches shapes normal days never take (spikes, shifts);
    Hotelling T^2 catches days far out *along* the normal axes of variation; flatness (1 % low
    quantile of the shape's spread / the day's spread) catches flat and zero days, which a linear
    model reconstructs *better* than any normal day, so SPE alone misses them."""
    f = features(days)
    z = (f - params["mu"]) / params["sd"]
    t = z @ params["P"]
    spe = ((z - t @ params["P"].T) ** 2).mean(axis=1)
    t2 = ((t / params["tsd"]) ** 2).sum(axis=1)
    flat = params["flat_q"] / (f.std(axis=1) + FLAT_EPS)
    return np.maximum(np.maximum(spe / params["spe_q"], t2 / params["t2_q"]), flat)


def to_onnx(params: dict[str, np.ndarray], threshold: float, meta: dict[str, str]):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    c = lambda name, arr: numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name)  # noqa: E731
    P = params["P"]
    inits = [
        c("zero", 0.0), c("one", 1.0), c("eps", EPS_W),
        c("mu", params["mu"]), c("sd", params["sd"]), c("P", P), c("Pt", P.T),
        c("tsd", params["tsd"]), c("spe_q", params["spe_q"]), c("t2_q", params["t2_q"]),
        c("flat_q", params["flat_q"]), c("flat_eps", FLAT_EPS),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
    ]
    nodes = [
        helper.make_node("Max", ["day", "zero"], ["x"]),                    # negative W -> 0
        helper.make_node("ReduceMean", ["x", "axis1"], ["m"], keepdims=1),
        helper.make_node("Add", ["m", "eps"], ["m_eps"]),
        helper.make_node("Div", ["x", "m_eps"], ["shape"]),
        helper.make_node("Add", ["shape", "one"], ["shape1"]),
        helper.make_node("Log", ["shape1"], ["f"]),
        helper.make_node("Sub", ["f", "mu"], ["fc"]),
        helper.make_node("Div", ["fc", "sd"], ["z"]),
        helper.make_node("MatMul", ["z", "P"], ["t"]),
        helper.make_node("MatMul", ["t", "Pt"], ["zr"]),
        helper.make_node("Sub", ["z", "zr"], ["r"]),
        helper.make_node("Mul", ["r", "r"], ["r2"]),
        helper.make_node("ReduceMean", ["r2", "axis1"], ["spe_raw"], keepdims=0),
        helper.make_node("Div", ["spe_raw", "spe_q"], ["spe_n"]),
        helper.make_node("Div", ["t", "tsd"], ["ts"]),
        helper.make_node("Mul", ["ts", "ts"], ["ts2"]),
        helper.make_node("ReduceSum", ["ts2", "axis1"], ["t2"], keepdims=0),
        helper.make_node("Div", ["t2", "t2_q"], ["t2_n"]),
        # flatness: flat_q / (std of f over the day + eps), population std like numpy's
        helper.make_node("ReduceMean", ["f", "axis1"], ["fm"], keepdims=1),
        helper.make_node("Sub", ["f", "fm"], ["fd"]),
        helper.make_node("Mul", ["fd", "fd"], ["fd2"]),
        helper.make_node("ReduceMean", ["fd2", "axis1"], ["fvar"], keepdims=0),
        helper.make_node("Sqrt", ["fvar"], ["fstd"]),
        helper.make_node("Add", ["fstd", "flat_eps"], ["fstd_eps"]),
        helper.make_node("Div", ["flat_q", "fstd_eps"], ["flat_n"]),
        helper.make_node("Max", ["spe_n", "t2_n", "flat_n"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes, "load_anomaly",
        [helper.make_tensor_value_info("day", TensorProto.FLOAT, ["N", QUARTERS])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)],
                              producer_name="poplar scripts/train_anomaly.py")
    model.ir_version = 8            # readable by onnxruntime >= 1.14
    model.doc_string = "Meter-day anomaly score: PCA reconstruction error of the normalised load shape"
    helper.set_model_props(model, {"threshold": repr(float(threshold)), **meta})
    onnx.checker.check_model(model)
    return model


def roc_auc(neg: np.ndarray, pos: np.ndarray) -> float:
    """P(score of a random anomaly > score of a random normal day), ties counted half."""
    allv = np.concatenate([neg, pos])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(len(allv))
    ranks[order] = np.arange(1, len(allv) + 1)
    # average ranks over ties
    _, inv, cnt = np.unique(allv, return_inverse=True, return_counts=True)
    ranks = (np.bincount(inv, ranks) / cnt)[inv]
    rp = ranks[len(neg):].sum()
    return float((rp - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def build_test(n_normal: int, n_anom: int, seed0: int = 200_000) -> tuple[np.ndarray, np.ndarray, list[str]]:
    days, hh = household_days(seed0, n_normal + n_anom, per_household=20)
    order = np.random.default_rng(7).permutation(len(days))   # anomalies spread over households
    rng = random.Random(99)
    kinds = ["normal"] * len(days)
    for j, i in enumerate(order[:n_anom]):
        kind = ANOMALY_KINDS[j % len(ANOMALY_KINDS)]
        days[i] = inject_anomaly(days[i], kind, rng, base_w=hh[i].base_w)
        kinds[i] = kind
    labels = np.array([k != "normal" for k in kinds])
    return days, labels, kinds


def evaluate(scores: np.ndarray, labels: np.ndarray, kinds: list[str], thr: float) -> dict:
    pred = scores > thr
    tp = int((pred & labels).sum())
    fp = int((pred & ~labels).sum())
    fn = int((~pred & labels).sum())
    fpr = fp / max(1, int((~labels).sum()))
    recall = tp / max(1, tp + fn)
    karr = np.array(kinds)
    per_kind = {k: float(pred[karr == k].mean()) for k in ("normal",) + ANOMALY_KINDS}
    # Precision when 1 day in 100 is anomalous, the order of magnitude expected in the field.
    prec_1pct = recall * 0.01 / (recall * 0.01 + fpr * 0.99) if recall or fpr else 0.0
    return {
        "n_test_normal": int((~labels).sum()), "n_test_anomalous": int(labels.sum()),
        "precision": tp / max(1, tp + fp), "recall": recall, "false_positive_rate": fpr,
        "roc_auc": roc_auc(scores[~labels], scores[labels]),
        "precision_at_1pct_prevalence": prec_1pct,
        "flag_rate_by_kind": per_kind,
    }


def write_card(out: Path, report: dict) -> None:
    m = report["metrics"]
    rows = "\n".join(f"| {k} | {v:.3f} |" for k, v in m["flag_rate_by_kind"].items())
    text = f"""# Model card: `load_anomaly.onnx` (meter-day anomaly score)

Generated by `python scripts/train_anomaly.py{report['args']}`; re-run it to regenerate the model,
its metrics (`load_anomaly.json`) and this card. Deterministic: same command, same figures.

## What it does

Input: float32 `day` [N, 96], one row per meter-day, quarter-hour mean power in W from local
00:00. Output: float32 `score` [N]. A day is flagged when `score > threshold`; the threshold
({report['threshold']:.4f}) is stored in the model metadata (`threshold`) and read by
`edge.analytics.anomaly.LoadAnomalyModel`.

## Method

Each day is reduced to its shape, `f = log1p(x / (mean(x) + 1 W))` (negative W clipped to 0), so
a one-person home and a large family are compared by when they use power, not how much.
Each quarter-hour feature is standardised with the training mean/std, projected on the top
{report['k']} principal components of the normal training days (explaining
{report['explained']:.1%} of the variance). The score is the largest of three statistics, each
divided by its 99th (flatness: 1st) percentile on the training days, so 1.0 means "as odd as the
oddest 1 % of normal days":
- SPE, the mean squared reconstruction error: shapes normal days never take (spikes, shifts);
- Hotelling T^2 on the components: days far out along the usual axes of variation;
- flatness, p1(spread) / spread of `f` over the day: flat and zero days, which a linear model
  reconstructs *better* than any normal day, so SPE alone misses them.

No neural network, no framework: the graph is about 25 ONNX operators built with `onnx.helper`.

## Data

All synthetic, from `simulators/households.py` (the same curves the meter simulator serves):
household kinds family / worker (out all day) / elderly (at home all day), each with its own
peak times and sizes, day-to-day level (+-12 %), schedule (+-30 min) and quarter-hour (+-10 %)
variation and 0-3 short appliance bursts per day.

| split | households | days |
|---|---|---|
| train (normal only) | seeds {report['splits']['train']['seeds']} | {report['splits']['train']['days']} |
| validation (normal only, sets the threshold at quantile {report['quantile']}) | seeds {report['splits']['val']['seeds']} | {report['splits']['val']['days']} |
| test (held-out households; half the days made anomalous) | seeds {report['splits']['test']['seeds']} | {report['splits']['test']['days']} |

Injected anomalies (`inject_anomaly`): flat all day (standby only or a constant level), zero,
schedule shifted by 6-12 h, 3-8 spikes of 2-5 kW, heavy night use (1.5-3.5 kW for 3-6 h
between 00:00 and 06:00).

## Metrics (test set, threshold from validation)

| metric | value |
|---|---|
| ROC-AUC | {m['roc_auc']:.4f} |
| precision (test set, 50 % anomalous) | {m['precision']:.4f} |
| recall | {m['recall']:.4f} |
| false positive rate (normal days flagged) | {m['false_positive_rate']:.4f} |
| precision if 1 % of days were anomalous | {m['precision_at_1pct_prevalence']:.3f} |

Flag rate by kind of day:

| kind | flagged |
|---|---|
{rows}

## Limits

- Trained on simulated households only. Real meters will show behaviour the simulator lacks
  (holidays, guests, seasonal heating/cooling, EV charging at night, shift workers); expect more
  false positives until the threshold is tuned per site (`LoadAnomalyModel.load(threshold=...)`)
  or the model is retrained on real, consented history.
- A whole day at a different level with the usual shape (2x consumption) is not an anomaly for
  this model by design; a day away from home looks like "flat" and is flagged.
- It needs a complete day: the edge skips days with more than 4 quarter hours missing and
  fills fewer by straight lines (docs/analytics.md).
- A flagged day is a hint for property staff, never an automatic action or a judgement about a
  resident.
"""
    (out / "MODEL_CARD.md").write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=int, default=20_000, help="normal training days (default 20000)")
    ap.add_argument("--k", type=int, default=0, help="principal components (0: smallest k explaining --variance)")
    ap.add_argument("--variance", type=float, default=0.80)
    ap.add_argument("--quantile", type=float, default=0.995,
                    help="threshold = this quantile of validation normal-day scores")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = ap.parse_args(argv)
    t0 = time.time()

    train, _ = household_days(0, a.days)
    n_eval = max(500, a.days // 4)
    val, _ = household_days(100_000, n_eval)
    test, labels, kinds = build_test(n_eval, n_eval)

    k = a.k
    if k <= 0:
        full = fit(train, QUARTERS)
        z = (features(train) - full["mu"]) / full["sd"]
        s = np.linalg.svd(z, compute_uv=False) ** 2
        k = int(np.searchsorted(np.cumsum(s) / s.sum(), a.variance) + 1)
    params = fit(train, k)
    thr = float(np.quantile(score_np(params, val), a.quantile))

    scores = score_np(params, test)
    metrics = evaluate(scores, labels, kinds, thr)
    n_hh = lambda n, per: -(-n // per)  # noqa: E731
    report = {
        "args": "".join(" " + x for x in (argv if argv is not None else sys.argv[1:])),
        "k": k, "explained": float(params["explained"]), "threshold": thr, "quantile": a.quantile,
        "splits": {
            "train": {"seeds": f"0..{n_hh(a.days, DAYS_PER_HOUSEHOLD) - 1}", "days": a.days},
            "val": {"seeds": f"100000..{100000 + n_hh(n_eval, DAYS_PER_HOUSEHOLD) - 1}", "days": n_eval},
            "test": {"seeds": f"200000..{200000 + n_hh(2 * n_eval, 20) - 1}", "days": 2 * n_eval},
        },
        "metrics": metrics,
    }

    a.out.mkdir(parents=True, exist_ok=True)
    model = to_onnx(params, thr, {"k": str(k), "trained_days": str(a.days), "version": "1"})
    path = a.out / f"{MODEL_NAME}.onnx"
    path.write_bytes(model.SerializeToString())

    # The exported graph must agree with the numpy maths it was built from.
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_scores = sess.run(None, {"day": test.astype(np.float32)})[0]
    err = float(np.max(np.abs(onnx_scores - scores) / (np.abs(scores) + 1e-3)))
    if err > 1e-3:
        raise SystemExit(f"ONNX export disagrees with numpy (max rel err {err:.2e})")
    report["onnx_max_rel_err"] = err

    (a.out / f"{MODEL_NAME}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    write_card(a.out, report)
    print(f"k={k} threshold={thr:.4f} roc_auc={metrics['roc_auc']:.4f} precision={metrics['precision']:.4f} "
          f"recall={metrics['recall']:.4f} fpr={metrics['false_positive_rate']:.4f} "
          f"-> {path} ({time.time() - t0:.1f} s)")
    return report


if __name__ == "__main__":
    main()
