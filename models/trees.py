"""A LightGBM booster as an ONNX tree ensemble, so that onnxruntime (already the backbone's
runtime) serves the classifiers. The booster's text file stays the one artefact of a bundle; the
ensemble is built from it when a bundle loads and is checked against it before it serves.

Why: on the descriptors, onnxruntime's TreeEnsembleRegressor with one thread predicts the
accurate classifier's 3,160 trees in about half the CPU time of ``Booster.predict`` at the
pipeline's batch sizes (docs/BENCHMARKS.md has the side-by-side run).

Exactness: LightGBM compares the input, as a double, with a double threshold; the ONNX operator
holds float32 thresholds. Each threshold is rounded *down* to a float32, which makes
``x <= t32`` equal to ``x <= t`` for every float32 ``x``: every row takes LightGBM's path through
every tree, and only the leaf sums differ, by float32 rounding (about 1e-6 of a raw score).
Rounding to the nearest float32 instead (what general converters do) sends a row down the other
branch whenever it equals the float just above a threshold.
"""

from __future__ import annotations

import math

import lightgbm as lgb
import numpy as np

# The largest difference in raw scores between the ensemble and LightGBM that still counts as
# the same model (observed: ~4e-6 on 3,160 trees); a larger one means the ensemble routes rows
# differently, and the booster serves instead.
TOLERANCE = 1e-3


class Unsupported(ValueError):
    """A booster feature the ensemble does not express (categorical or zero-as-missing splits,
    linear trees, averaged output)."""


def _threshold_down(t: float) -> float:
    t32 = np.float32(t)
    if float(t32) > t:
        t32 = np.nextafter(t32, np.float32(-np.inf))
    return float(t32)


def to_onnx(booster: lgb.Booster) -> bytes:
    """The booster's raw scores as a serialized ONNX model: input ``x`` (N, features) float32,
    output ``raw`` (N, trees per iteration) float32."""
    from onnx import TensorProto, helper

    dump = booster.dump_model()
    if dump.get("average_output"):
        raise Unsupported("averaged output (random forest mode)")
    per_iteration = int(dump["num_tree_per_iteration"])
    nodes: dict[str, list] = {k: [] for k in ("treeids", "nodeids", "featureids", "modes", "values",
                                                 "truenodeids", "falsenodeids", "missing_value_tracks_true")}
    targets: dict[str, list] = {k: [] for k in ("treeids", "nodeids", "ids", "weights")}

    for info in dump["tree_info"]:
        tree = int(info["tree_index"])
        if info.get("num_cat"):
            raise Unsupported("categorical splits")
        next_id = 0

        def add(node: dict) -> int:
            nonlocal next_id
            node_id, next_id = next_id, next_id + 1
            at = len(nodes["nodeids"])
            nodes["treeids"].append(tree)
            nodes["nodeids"].append(node_id)
            if "split_index" not in node:
                if "leaf_coeff" in node:
                    raise Unsupported("linear trees")
                for k, v in (("featureids", 0), ("modes", "LEAF"), ("values", 0.0), ("truenodeids", 0),
                             ("falsenodeids", 0), ("missing_value_tracks_true", 0)):
                    nodes[k].append(v)
                targets["treeids"].append(tree)
                targets["nodeids"].append(node_id)
                targets["ids"].append(tree % per_iteration)
                targets["weights"].append(float(node["leaf_value"]))
                return node_id
            if node["decision_type"] != "<=":
                raise Unsupported(f"decision type {node['decision_type']!r}")
            threshold = float(node["threshold"])
            missing = node["missing_type"]
            if missing == "None":  # LightGBM reads NaN as 0.0
                nan_left = 0.0 <= threshold
            elif missing == "NaN":
                nan_left = bool(node["default_left"])
            else:
                raise Unsupported(f"missing type {missing!r}")
            for k, v in (("featureids", int(node["split_feature"])), ("modes", "BRANCH_LEQ"),
                         ("values", _threshold_down(threshold)), ("truenodeids", -1), ("falsenodeids", -1),
                         ("missing_value_tracks_true", int(nan_left))):
                nodes[k].append(v)
            nodes["truenodeids"][at] = add(node["left_child"])
            nodes["falsenodeids"][at] = add(node["right_child"])
            return node_id

        add(info["tree_structure"])

    features = int(dump["max_feature_idx"]) + 1
    ensemble = helper.make_node(
        "TreeEnsembleRegressor", ["x"], ["raw"], domain="ai.onnx.ml", n_targets=per_iteration,
        aggregate_function="SUM", post_transform="NONE",
        **{f"nodes_{k}": v for k, v in nodes.items()}, **{f"target_{k}": v for k, v in targets.items()})
    graph = helper.make_graph(
        [ensemble], "lightgbm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, features])],
        [helper.make_tensor_value_info("raw", TensorProto.FLOAT, [None, per_iteration])])
    model = helper.make_model(graph, producer_name="imgstream",
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    model.ir_version = 8  # onnxruntime >= 1.17 reads it
    return model.SerializeToString()


class TreeEnsemble:
    """One booster's raw scores on onnxruntime, one intra-op thread (the classifiers run in their
    own pool thread beside the backbone's)."""

    def __init__(self, model: bytes) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def raw(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(["raw"], {"x": np.ascontiguousarray(x, np.float32)})[0]

    @classmethod
    def from_booster(cls, booster: lgb.Booster, check: np.ndarray) -> tuple[TreeEnsemble, float]:
        """The ensemble and its largest raw-score difference from the booster on ``check`` rows;
        raises ``Unsupported`` when it cannot express the booster or routes rows differently."""
        ensemble = cls(to_onnx(booster))
        check = np.ascontiguousarray(check, np.float32)
        diff = float(np.abs(ensemble.raw(check) - booster.predict(check, raw_score=True, num_threads=1)).max())
        if not math.isfinite(diff) or diff > TOLERANCE:
            raise Unsupported(f"raw scores differ from LightGBM's by {diff:.3g} (tolerance {TOLERANCE})")
        return ensemble, diff


def check_rows(stats: dict | None, features: int, n: int = 512, seed: int = 0) -> np.ndarray:
    """Rows to compare an ensemble with its booster on: drawn around the training descriptors'
    mean and spread where the bundle records them (its manifest's ``descriptor_stats``), else
    standard normal."""
    rng = np.random.default_rng(seed)
    mean = np.asarray(stats["mean"]) if stats else np.zeros(features)
    std = np.asarray(stats["std"]) if stats else np.ones(features)
    return (mean + 1.5 * std * rng.standard_normal((n, features))).astype(np.float32)
