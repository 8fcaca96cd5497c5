"""Drift of the incoming descriptors against the training data: pure math, no I/O.

A bundle keeps, per descriptor, the training descriptors' mean, spread and decile edges
(``reference``). The worker compares a window of recent descriptors with them by the population
stability index: per descriptor, the ten training deciles should each hold a tenth of the window,
and PSI = sum over bins of (actual - expected) * ln(actual / expected). By the usual reading,
below 0.1 nothing moved, 0.1-0.25 a moderate shift, above 0.25 a large one. The score of the
stream is the largest PSI over the descriptors.
"""

from __future__ import annotations

import numpy as np

BINS = 10
EPSILON = 1e-4  # an empty bin still counts, so the logarithm stays finite
ALERT = 0.25


def reference(descriptors: np.ndarray) -> dict:
    """Training statistics of (N, k) descriptors, JSON-ready (for the bundle's manifest)."""
    d = np.asarray(descriptors, np.float64)
    edges = np.quantile(d, np.linspace(0, 1, BINS + 1)[1:-1], axis=0).T  # (k, BINS - 1)
    return {"n": int(d.shape[0]), "mean": d.mean(0).round(6).tolist(), "std": d.std(0).round(6).tolist(),
            "edges": edges.round(6).tolist(), "bins": BINS}


def psi(ref: dict, window: np.ndarray) -> np.ndarray:
    """Population stability index of each descriptor of ``window`` (N, k) against ``ref``."""
    edges = np.asarray(ref["edges"], np.float64)
    bins = edges.shape[1] + 1
    w = np.asarray(window, np.float64)
    if w.ndim != 2 or w.shape[1] != edges.shape[0]:
        raise ValueError(f"window of shape {w.shape} against a reference of {edges.shape[0]} descriptors")
    expected = 1.0 / bins
    out = np.empty(edges.shape[0])
    for j in range(edges.shape[0]):
        counts = np.bincount(np.searchsorted(edges[j], w[:, j], side="right"), minlength=bins)
        actual = np.maximum(counts / max(len(w), 1), EPSILON)
        out[j] = float(np.sum((actual - expected) * np.log(actual / expected)))
    return out
