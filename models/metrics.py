"""Accuracy, macro-F1, expected calibration error, latency percentiles: pure numpy."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def accuracy(y: np.ndarray, p: np.ndarray) -> float:
    return float((p.argmax(axis=1) == y).mean())


def macro_f1(y: np.ndarray, p: np.ndarray) -> float:
    pred = p.argmax(axis=1)
    scores = []
    for c in range(p.shape[1]):
        tp = np.sum((pred == c) & (y == c))
        fp = np.sum((pred == c) & (y != c))
        fn = np.sum((pred != c) & (y == c))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def ece(y: np.ndarray, p: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error of the top-1 confidence, equal-width bins."""
    conf, pred = p.max(axis=1), p.argmax(axis=1)
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            total += m.mean() * abs((pred[m] == y[m]).mean() - conf[m].mean())
    return float(total)


def latency_ms(fn: Callable[[], object], repeat: int = 300, warmup: int = 20) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    a = np.asarray(samples)
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)), "n": repeat}


def summarize(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    return {"top1": accuracy(y, p), "macro_f1": macro_f1(y, p), "ece": ece(y, p)}
