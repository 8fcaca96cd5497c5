"""The three LightGBM classifiers over descriptors, with temperature-scaled probabilities.

``fast``, ``balanced`` and ``accurate`` differ only in capacity (leaves, rounds). LightGBM's raw
multiclass scores are divided by a temperature fitted on held-out data (minimum log-loss), so a
reported confidence of 0.8 is right about 80 % of the time (ECE in docs/MODELS.md). A loaded
classifier may compute its raw scores with the same trees on onnxruntime (``models.trees``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import lightgbm as lgb
import numpy as np

from models.trees import TreeEnsemble, Unsupported, check_rows

# One entry per name in models.domain.CLASSIFIERS (a test keeps them equal).
CAPACITY = {
    "fast": {"num_leaves": 15, "learning_rate": 0.15, "num_boost_round": 120, "min_data_in_leaf": 40},
    "balanced": {"num_leaves": 31, "learning_rate": 0.08, "num_boost_round": 300, "min_data_in_leaf": 30},
    # More, smaller steps won on the held-out split over 63/127 leaves (measured 0.813 vs 0.810).
    "accurate": {"num_leaves": 31, "learning_rate": 0.02, "num_boost_round": 3000, "min_data_in_leaf": 50},
}


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(raw: np.ndarray, y: np.ndarray) -> float:
    from scipy.optimize import minimize_scalar

    def nll(log_t: float) -> float:
        p = softmax(raw / np.exp(log_t))
        return -np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)).mean()

    return float(np.exp(minimize_scalar(nll, bounds=(-3, 3), method="bounded").x))


# What computes a classifier's raw scores (not app.stream.runtime.Runtime, the worker's services)
TreeRuntime = Literal["onnx", "lightgbm"]


@dataclass
class Classifier:
    name: str
    booster: lgb.Booster
    temperature: float
    labels: list[str]
    trees: TreeEnsemble | None = None
    """The booster's trees on onnxruntime, when loaded with ``runtime="onnx"`` and equal to it."""
    runtime_note: str = "lightgbm"
    """What computes the raw scores, and why (for the worker's log and the bench)."""

    def predict_proba(self, x: np.ndarray, threads: int = 1) -> np.ndarray:
        if self.trees is not None and threads == 1:
            raw = self.trees.raw(x)
        else:
            raw = self.booster.predict(np.asarray(x, np.float32), raw_score=True, num_threads=threads)
        return softmax(np.asarray(raw, np.float64) / self.temperature)

    def save(self, folder: Path) -> str:
        path = folder / f"{self.name}.txt"
        self.booster.save_model(str(path))
        return path.name

    @classmethod
    def load(cls, folder: Path, name: str, temperature: float, labels: list[str], runtime: TreeRuntime = "onnx",
             stats: dict | None = None) -> Classifier:
        """``runtime="onnx"``: serve the trees on onnxruntime once they give LightGBM's raw scores
        on rows like the training descriptors (``stats``: the manifest's ``descriptor_stats``);
        a booster they cannot express, or do not match, is served by LightGBM."""
        text = (folder / f"{name}.txt").read_text()  # read once: the booster and the ensemble
        clf = cls(name, lgb.Booster(model_str=text), temperature, labels)
        if runtime == "onnx":
            try:
                clf.trees, diff = TreeEnsemble.from_booster(clf.booster, text, check_rows(stats, clf.booster.num_feature()))
                clf.runtime_note = f"onnx (raw scores within {diff:.1g} of LightGBM's)"
            except Unsupported as exc:
                clf.runtime_note = f"lightgbm (onnxruntime cannot serve these trees: {exc})"
        return clf


def train(name: str, x: np.ndarray, y: np.ndarray, x_cal: np.ndarray, y_cal: np.ndarray,
          labels: list[str], seed: int = 0, threads: int = 0) -> Classifier:
    """Train one capacity level; early-stop and calibrate on (x_cal, y_cal)."""
    cap = dict(CAPACITY[name])
    rounds = cap.pop("num_boost_round")
    params = {
        "objective": "multiclass", "num_class": len(labels), "verbosity": -1, "seed": seed,
        "feature_fraction": 0.9, "bagging_fraction": 0.9, "bagging_freq": 1, "lambda_l2": 1.0,
        "num_threads": threads, **cap,
    }
    train_set = lgb.Dataset(x, y, free_raw_data=False)
    cal_set = lgb.Dataset(x_cal, y_cal, reference=train_set)
    booster = lgb.train(params, train_set, rounds, valid_sets=[cal_set],
                        callbacks=[lgb.early_stopping(50, verbose=False)])
    raw = booster.predict(x_cal, raw_score=True, num_iteration=booster.best_iteration)
    booster = booster if booster.best_iteration <= 0 else _truncate(booster)
    return Classifier(name, booster, fit_temperature(np.asarray(raw), y_cal), labels)


def _truncate(booster: lgb.Booster) -> lgb.Booster:
    """A booster holding only the best iteration's trees (smaller, faster to predict)."""
    return lgb.Booster(model_str=booster.model_to_string(num_iteration=booster.best_iteration))
