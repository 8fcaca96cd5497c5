"""LightGBM boosters served as onnxruntime tree ensembles give LightGBM's raw scores, including
on rows that sit exactly on a rounded threshold, and a booster they cannot express stays on
LightGBM."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest

from models import trees
from models.classifier import Classifier
from models.trees import TreeEnsemble, Unsupported, check_rows, to_onnx


def _booster(categorical: bool = False, classes: int = 3, seed: int = 0) -> lgb.Booster:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((600, 6)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int) + (x[:, 2] > 0.7).astype(int)
    params = {"objective": "multiclass", "num_class": classes, "num_leaves": 7, "verbosity": -1,
              "min_data_in_leaf": 5, "seed": seed}
    if categorical:
        x[:, 5] = rng.integers(0, 4, len(x))
        y = np.where(x[:, 5] == 2, 0, y)
        return lgb.train(params, lgb.Dataset(x, y, categorical_feature=[5]), 15)
    return lgb.train(params, lgb.Dataset(x, y), 15)


def _on_rounded_thresholds(booster: lgb.Booster, seed: int = 1) -> np.ndarray:
    """One row per tree whose root threshold rounds *up* to the nearest float32, with that
    float32 on the root's feature: LightGBM sends it right (x > t), a nearest-rounded threshold
    sends it left."""
    rng = np.random.default_rng(seed)
    rows = []
    for info in booster.dump_model()["tree_info"]:
        root = info["tree_structure"]
        if "split_index" not in root:
            continue
        t = float(root["threshold"])
        nearest = np.float32(t)
        if float(nearest) > t:
            row = rng.standard_normal(booster.num_feature()).astype(np.float32)
            row[root["split_feature"]] = nearest
            rows.append(row)
    assert rows, "no threshold rounds up: the check would prove nothing"
    return np.stack(rows)


def test_raw_scores_equal_lightgbm_on_random_rows_and_on_rounded_thresholds():
    booster = _booster()
    ensemble = TreeEnsemble(to_onnx(booster.model_to_string()))
    for x in (np.random.default_rng(2).standard_normal((500, 6)).astype(np.float32),
              _on_rounded_thresholds(booster)):
        np.testing.assert_allclose(ensemble.raw(x), booster.predict(x, raw_score=True), atol=1e-5)


def test_nearest_rounding_would_route_rows_differently(monkeypatch):
    """The rows above do tell the two roundings apart (so the test before can fail)."""
    booster = _booster()
    monkeypatch.setattr(trees, "_thresholds_down", lambda t: t.astype(np.float32))
    x = _on_rounded_thresholds(booster)
    diff = np.abs(TreeEnsemble(to_onnx(booster.model_to_string())).raw(x) - booster.predict(x, raw_score=True)).max()
    assert diff > trees.TOLERANCE


def test_missing_values_go_where_lightgbm_sends_them():
    booster = _booster()
    x = np.random.default_rng(3).standard_normal((200, 6)).astype(np.float32)
    x[::3, 0] = np.nan
    x[1::4, 2] = np.nan
    np.testing.assert_allclose(TreeEnsemble(to_onnx(booster.model_to_string())).raw(x), booster.predict(x, raw_score=True), atol=1e-5)


def test_a_categorical_split_is_refused_and_the_classifier_stays_on_lightgbm(tmp_path):
    booster = _booster(categorical=True)
    with pytest.raises(Unsupported, match="categorical"):
        to_onnx(booster.model_to_string())
    booster.save_model(str(tmp_path / "fast.txt"))
    clf = Classifier.load(tmp_path, "fast", 1.0, ["a", "b", "c"], "onnx")
    assert clf.trees is None and clf.runtime_note.startswith("lightgbm (onnxruntime cannot serve")


def test_a_random_forest_is_refused():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((300, 4)).astype(np.float32)
    params = {"objective": "multiclass", "num_class": 2, "boosting": "rf", "bagging_freq": 1,
              "bagging_fraction": 0.7, "num_leaves": 5, "verbosity": -1}
    forest = lgb.train(params, lgb.Dataset(x, (x[:, 0] > 0).astype(int)), 5)
    with pytest.raises(Unsupported, match="averaged"):
        to_onnx(forest.model_to_string())


def test_a_loaded_classifier_predicts_the_same_probabilities_on_either_runtime(tmp_path):
    booster = _booster()
    booster.save_model(str(tmp_path / "fast.txt"))
    on_onnx = Classifier.load(tmp_path, "fast", 1.3, ["a", "b", "c"], "onnx")
    on_lgb = Classifier.load(tmp_path, "fast", 1.3, ["a", "b", "c"], "lightgbm")
    assert on_onnx.trees is not None and on_onnx.runtime_note.startswith("onnx")
    assert on_lgb.trees is None
    x = check_rows(None, 6, n=300, seed=4)
    np.testing.assert_allclose(on_onnx.predict_proba(x), on_lgb.predict_proba(x), atol=1e-6)


def test_a_mismatch_beyond_the_tolerance_is_refused(monkeypatch):
    booster = _booster()
    monkeypatch.setattr(trees, "TOLERANCE", 0.0)  # float32 leaf sums never match doubles exactly
    with pytest.raises(Unsupported, match="differ"):
        TreeEnsemble.from_booster(booster, booster.model_to_string(), check_rows(None, 6))


def test_a_worker_builds_tree_ensembles_only_for_the_classifiers_it_runs():
    from types import SimpleNamespace

    from app.bundles.deployment import BundleDeployment
    from app.core.settings import Settings

    def onnx_for(**kw) -> tuple[str, ...]:
        return BundleDeployment.onnx_classifiers.fget(SimpleNamespace(settings=Settings(**kw)))

    assert onnx_for(roles="front,extractor") == ()
    assert onnx_for(roles="classifier-accurate") == ("accurate",)
    assert onnx_for(roles="all") == ("fast", "balanced", "accurate")
    assert onnx_for(roles="all", classifier_runtime="lightgbm") == ()
