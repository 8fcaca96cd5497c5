"""Reduction, classifiers, calibration and metrics on synthetic data (trained into tmp_path)."""

import numpy as np
import pytest

from models import classifier as clf
from models import metrics, reduction


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(0)
    centers = rng.normal(scale=3.0, size=(4, 64))
    y = rng.integers(0, 4, size=3000)
    x = centers[y] + rng.normal(scale=2.5, size=(3000, 64))
    return x.astype(np.float32), y


def test_reduction_is_one_linear_map_and_round_trips(tmp_path, blobs):
    x, y = blobs
    for method in ("pca", "lda+pca"):
        r = reduction.fit(x, y, 8, method)
        d = r.transform(x)
        assert d.shape == (3000, 8) and d.dtype == np.float32
        r.save(tmp_path / f"{method}.npz")
        np.testing.assert_allclose(reduction.Reducer.load(tmp_path / f"{method}.npz").transform(x), d, rtol=1e-5)


def test_lda_directions_separate_classes_better_than_pca_at_small_k(blobs):
    x, y = blobs
    tr, va = slice(0, 2000), slice(2000, None)
    acc = {}
    for method in ("pca", "lda+pca"):
        r = reduction.fit(x[tr], y[tr], 3, method)
        c = clf.train("fast", r.transform(x[tr]), y[tr], r.transform(x[va]), y[va], list("abcd"))
        acc[method] = metrics.accuracy(y[va], c.predict_proba(r.transform(x[va])))
    assert acc["lda+pca"] >= acc["pca"]


def test_classifiers_save_load_and_predict_probabilities(tmp_path, blobs):
    x, y = blobs
    c = clf.train("balanced", x[:2000], y[:2000], x[2000:], y[2000:], list("abcd"))
    c.save(tmp_path)
    back = clf.Classifier.load(tmp_path, "balanced", c.temperature, list("abcd"), "lightgbm")
    p = back.predict_proba(x[2000:])
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(p, c.predict_proba(x[2000:]), rtol=1e-6)
    assert metrics.accuracy(y[2000:], p) > 0.8
    # served on onnxruntime: the same trees, leaf sums in float32
    on_onnx = clf.Classifier.load(tmp_path, "balanced", c.temperature, list("abcd"))
    assert on_onnx.trees is not None
    np.testing.assert_allclose(on_onnx.predict_proba(x[2000:]), p, atol=1e-5)


def test_temperature_scaling_fixes_overconfidence():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 5, 4000)
    logits = rng.normal(size=(4000, 5))
    logits[np.arange(4000), y] += 1.0
    raw = logits * 6  # badly overconfident
    t = clf.fit_temperature(raw, y)
    assert t > 2
    assert metrics.ece(y, clf.softmax(raw / t)) < metrics.ece(y, clf.softmax(raw)) / 3


def test_metrics_known_values():
    y = np.array([0, 1, 1, 0])
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]])
    assert metrics.accuracy(y, p) == 0.75
    # class 0: tp=2 fp=1 fn=0 -> 0.8; class 1: tp=1 fp=0 fn=1 -> 2/3
    assert metrics.macro_f1(y, p) == pytest.approx((0.8 + 2 / 3) / 2)
    # perfectly calibrated: confidence 1.0 always right
    assert metrics.ece(np.array([0, 1]), np.array([[1.0, 0.0], [0.0, 1.0]])) == 0.0
    # bins: 0.9 right, 0.8 right, 0.6 wrong, 0.7 right -> |1-.9|/4+|1-.8|/4+|0-.6|/4+|1-.7|/4
    assert metrics.ece(y, p) == pytest.approx((0.1 + 0.2 + 0.6 + 0.3) / 4)


def test_drift_psi_stays_low_on_the_training_distribution_and_rises_on_a_shift():
    from models import drift

    rng = np.random.default_rng(0)
    train = rng.normal(size=(5000, 6))
    ref = drift.reference(train)
    assert len(ref["edges"]) == 6 and len(ref["edges"][0]) == drift.BINS - 1
    same = drift.psi(ref, rng.normal(size=(500, 6)))
    assert same.max() < 0.1  # sampling noise of 500 draws in 10 bins: about 9/500 per descriptor
    shifted = rng.normal(size=(500, 6))
    shifted[:, 2] = shifted[:, 2] * 0.2 + 1.5  # one descriptor moved and narrowed
    psi = drift.psi(ref, shifted)
    assert psi[2] > drift.ALERT and np.delete(psi, 2).max() < 0.1
    with pytest.raises(ValueError):
        drift.psi(ref, np.zeros((10, 5)))
