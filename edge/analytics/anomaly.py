"""Daily load-profile anomaly score for one meter: the shipped ONNX model, run with onnxruntime.

The model (made by scripts/train_anomaly.py, see models/MODEL_CARD.md) takes a batch of days,
float32 [N, 96] quarter-hour mean powers in W, local time from 00:00, and returns one score per
day: the PCA reconstruction error of the day's normalised shape. Higher is stranger. The decision
threshold travels inside the .onnx file (metadata "threshold"), so model and threshold cannot be
mixed up between versions.

onnxruntime is imported in load(), not at import time: the agent imports this module cheaply and
pays for the runtime only when analytics are switched on.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

QUARTERS = 96
DEFAULT_MODEL = Path(__file__).parent / "models" / "load_anomaly.onnx"


class LoadAnomalyModel:
    """Use LoadAnomalyModel.load() once, then score()/flag() per meter-day. Thread-safe: it holds
    no mutable state and onnxruntime sessions allow concurrent run()."""

    def __init__(self, session: Any, threshold: float, metadata: dict[str, str]) -> None:
        self._session = session
        self._input = session.get_inputs()[0].name
        self.threshold = float(threshold)
        self.metadata = metadata

    @classmethod
    def load(cls, path: str | Path = DEFAULT_MODEL, threshold: float | None = None) -> "LoadAnomalyModel":
        """Load the ONNX model; `threshold` overrides the one stored in the file (site tuning)."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1   # tiny graph; threads would cost more than they save
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        meta = dict(sess.get_modelmeta().custom_metadata_map)
        if threshold is None:
            if "threshold" not in meta:
                raise ValueError(f"{path}: no 'threshold' in the model metadata")
            threshold = float(meta["threshold"])
        return cls(sess, threshold, meta)

    @staticmethod
    def _check(days: np.ndarray) -> np.ndarray:
        a = np.asarray(days, dtype=np.float32)
        if a.ndim == 1:
            a = a[None, :]
        if a.ndim != 2 or a.shape[1] != QUARTERS:
            raise ValueError(f"a meter-day is {QUARTERS} quarter-hour values, got shape {np.shape(days)}")
        if not np.isfinite(a).all():
            # A gap must be filled (or the day skipped) by the caller: a guessed value would
            # make a day with a comms outage look anomalous, or hide one that is.
            raise ValueError("meter-day contains NaN or infinite values")
        return a

    def score_many(self, days: np.ndarray) -> np.ndarray:
        """Scores for days [N, 96] (W); float64 [N]."""
        a = self._check(days)
        if len(a) == 0:
            return np.zeros(0)
        (out,) = self._session.run(None, {self._input: a})
        return np.asarray(out, dtype=np.float64).reshape(-1)

    def score(self, day: Sequence[float]) -> float:
        return float(self.score_many(np.asarray(day, dtype=np.float32)[None, :])[0])

    def flag(self, day: Sequence[float]) -> bool:
        s = self.score(day)
        return math.isfinite(s) and s > self.threshold
