"""A LightGBM booster as an ONNX tree ensemble, so that onnxruntime (already the backbone's
runtime) serves the classifiers. The booster's text file stays the one artefact of a bundle; the
ensemble is built from it when a bundle loads and is checked against it before it serves.

Why: on the descriptors, onnxruntime's TreeEnsembleRegressor with one thread predicts the
accurate classifier's 3,160 trees in about 0.6 of the CPU time of ``Booster.predict`` at the
pipeline's batch sizes of 8-16 (docs/BENCHMARKS.md, section 11, has the pipeline side by side).

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
# the same model (observed: up to 8e-6 on 3,160 trees); a larger one means the ensemble routes rows
# differently, and the booster serves instead.
TOLERANCE = 1e-3


class Unsupported(ValueError):
    """A booster feature the ensemble does not express (categorical or zero-as-missing splits,
    linear trees, averaged output)."""


def _thresholds_down(t: np.ndarray) -> np.ndarray:
    t32 = t.astype(np.float32)
    up = t32.astype(np.float64) > t
    t32[up] = np.nextafter(t32[up], np.float32(-np.inf))
    return t32


def _trees(model: str):
    """(header, trees) of a LightGBM text model, the trees one at a time, each a dict of its
    ``key=values`` lines. Read from the text file rather than ``Booster.dump_model``'s JSON or
    ``Booster.model_to_string``: for the accurate classifier's 3,160 trees those build 50-100 MB
    that the allocator keeps after they are freed, in every worker that loads a bundle."""
    head, _, body = model.partition("\nTree=")
    header = dict((*line.split("=", 1), "")[:2] for line in head.splitlines() if line)  # a flag: key -> ""

    def trees():
        start = 0
        while start < len(body):
            end = body.find("\nTree=", start)
            block = body[start:end if end >= 0 else len(body)].split("\nend of trees", 1)[0]
            yield dict(line.split("=", 1) for line in block.splitlines()[1:] if "=" in line)
            start = len(body) if end < 0 else end + len("\nTree=")

    return header, trees()


def _ints(tree: dict, key: str) -> np.ndarray:
    return np.array(tree[key].split(), np.int64)


def _doubles(tree: dict, key: str) -> np.ndarray:
    return np.array(tree[key].split(), np.float64)


_NO_SPLIT = {"featureids": np.zeros(0, np.int64), "values": np.zeros(0, np.float32),
             "truenodeids": np.zeros(0, np.int64), "falsenodeids": np.zeros(0, np.int64),
             "missing_value_tracks_true": np.zeros(0, np.int64)}


def _split_columns(tree: dict, inner: int) -> dict[str, np.ndarray]:
    """The internal nodes' columns of one tree (``_NO_SPLIT``'s keys)."""
    kind = _ints(tree, "decision_type")
    if (kind & 1).any():
        raise Unsupported("categorical splits")
    missing = (kind >> 2) & 3  # 0: None, 1: Zero, 2: NaN
    if (missing == 1).any():
        raise Unsupported("zero-as-missing splits")
    threshold = _doubles(tree, "threshold")
    # NaN: LightGBM reads it as 0.0 (missing type None), or sends it the default way (NaN)
    nan_left = np.where(missing == 2, (kind & 2) > 0, 0.0 <= threshold)
    left, right = (np.where(c >= 0, c, inner + ~c) for c in (_ints(tree, "left_child"), _ints(tree, "right_child")))
    return {"featureids": _ints(tree, "split_feature"), "values": _thresholds_down(threshold),
            "truenodeids": left, "falsenodeids": right, "missing_value_tracks_true": nan_left.astype(np.int64)}


def to_onnx(model: str) -> bytes:
    """A LightGBM text model's raw scores as a serialized ONNX model: input ``x`` (N, features)
    float32, output ``raw`` (N, trees per iteration) float32."""
    from onnx import AttributeProto, ModelProto, TensorProto, helper

    header, trees = _trees(model)
    if "average_output" in header:
        raise Unsupported("averaged output (random forest mode)")
    per_iteration = int(header["num_tree_per_iteration"])
    parts: dict[str, list[np.ndarray]] = {k: [] for k in (
        "treeids", "nodeids", "featureids", "modes", "values", "truenodeids", "falsenodeids",
        "missing_value_tracks_true", "target_treeids", "target_nodeids", "target_ids", "target_weights")}
    for tree_id, tree in enumerate(trees):
        if int(tree.get("num_cat", 0)):
            raise Unsupported("categorical splits")
        if int(tree.get("is_linear", 0)):
            raise Unsupported("linear trees")
        leaves = _doubles(tree, "leaf_value")
        inner = len(leaves) - 1  # internal nodes are 0 .. inner-1, leaf j is node inner + j
        split = _split_columns(tree, inner) if inner else _NO_SPLIT
        for key, column in split.items():  # leaves hold zeros in the split columns
            parts[key] += [column, np.zeros(len(leaves), column.dtype)]
        parts["modes"].append(np.array([b"BRANCH_LEQ"] * inner + [b"LEAF"] * len(leaves), object))
        parts["treeids"].append(np.full(inner + len(leaves), tree_id, np.int64))
        parts["nodeids"].append(np.arange(inner + len(leaves), dtype=np.int64))
        parts["target_treeids"].append(np.full(len(leaves), tree_id, np.int64))
        parts["target_nodeids"].append(inner + np.arange(len(leaves), dtype=np.int64))
        parts["target_ids"].append(np.full(len(leaves), tree_id % per_iteration, np.int64))
        parts["target_weights"].append(leaves.astype(np.float32))

    # built in place: helper.make_graph / make_model copy the node, ~50 MB for 3,000 trees
    model = ModelProto(ir_version=8, producer_name="imgstream")  # onnxruntime >= 1.17 reads IR 8
    model.opset_import.extend([helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    graph = model.graph
    graph.name = "lightgbm"
    features = int(header["max_feature_idx"]) + 1
    graph.input.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, features]))
    graph.output.append(helper.make_tensor_value_info("raw", TensorProto.FLOAT, [None, per_iteration]))
    ensemble = graph.node.add()
    ensemble.CopyFrom(helper.make_node("TreeEnsembleRegressor", ["x"], ["raw"], domain="ai.onnx.ml",
                                       n_targets=per_iteration, aggregate_function="SUM", post_transform="NONE"))
    for key in list(parts):
        values = np.concatenate(parts.pop(key))
        attr = ensemble.attribute.add()
        attr.name = key if key.startswith("target_") else f"nodes_{key}"
        if values.dtype == object:
            attr.type = AttributeProto.STRINGS
            attr.strings.extend(values.tolist())
        elif values.dtype == np.float32:
            attr.type = AttributeProto.FLOATS
            attr.floats.extend(values)
        else:
            attr.type = AttributeProto.INTS
            attr.ints.extend(values)
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
    def from_booster(cls, booster: lgb.Booster, model: str, check: np.ndarray) -> tuple[TreeEnsemble, float]:
        """The ensemble of ``model`` (the booster's text) and its largest raw-score difference from
        the booster on ``check`` rows; raises ``Unsupported`` when it cannot express the booster or
        routes rows differently."""
        ensemble = cls(to_onnx(model))
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
