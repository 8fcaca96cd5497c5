"""The ONNX backbone: a batch of preprocessed images -> pooled features, in one ORT call."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from models.backbones import BACKBONES, BackboneSpec
from models.errors import ModelError
from models.preprocess import preprocess


class FeatureExtractor:
    """One ONNX session with ``threads`` intra-op threads, and optionally a second, "wide" one
    with ``wide_threads`` (0 = every core) for calls too small to split across threads: a single
    image on one thread took 1.1-1.3x (EfficientNet-Lite0) and ~1.5x (ResNet50) longer on 2 cores."""

    def __init__(self, onnx_path: Path, backbone: str, threads: int = 0, providers: list[str] | None = None,
                 spin: bool = False, wide_threads: int | None = None) -> None:
        self.spec: BackboneSpec = BACKBONES[backbone]
        self.threads = threads  # 0 = onnxruntime's default (one per physical core)
        self.session = _session(onnx_path, threads, providers, spin)
        self.wide = (_session(onnx_path, wide_threads, providers, spin)
                     if wide_threads is not None and wide_threads != threads else self.session)
        self.input = self.session.get_inputs()[0].name

    def run(self, batch: np.ndarray, wide: bool = False) -> np.ndarray:
        """(N, 3, S, S) float32 -> (N, F) float32; ``wide`` runs it on the every-core session."""
        session = self.wide if wide else self.session
        return session.run(None, {self.input: np.ascontiguousarray(batch, np.float32)})[0]

    def from_bytes(self, images: list[bytes], max_pixels: int = 40_000_000) -> np.ndarray:
        return self.run(np.stack([preprocess(b, self.spec, max_pixels) for b in images]))


def check_providers(requested: list[str] | tuple[str, ...]) -> list[str]:
    """``requested`` if this onnxruntime has every one of them; else a ModelError naming what is
    missing and what is there (onnxruntime itself would only warn and fall back to the CPU)."""
    available = ort.get_available_providers()
    missing = [p for p in requested if p not in available]
    if missing:
        hint = (" (CUDA needs onnxruntime-gpu in place of onnxruntime: the 'gpu' extra, see the README)"
                if "CUDAExecutionProvider" in missing else "")
        raise ModelError(f"onnxruntime {ort.__version__} has no {', '.join(missing)}; "
                         f"available: {', '.join(available)}{hint}")
    return list(requested)


def _session(onnx_path: Path, threads: int, providers: list[str] | None, spin: bool) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # No busy-waiting between ops: in a worker the event loop, decoding and LightGBM share the
    # cores with ONNX, and spinning threads would take their time.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0" if not spin else "1")
    return ort.InferenceSession(str(onnx_path), opts, providers=check_providers(providers or ["CPUExecutionProvider"]))
