"""A versioned model bundle on disk: ``backbone.onnx``, ``reducer.npz``, one LightGBM text file
per classifier, and ``manifest.json`` (version, backbone, k, data hash, metrics).

``Bundle`` is the whole inference path for one image batch: bytes -> preprocess -> ONNX -> reduce
(``descriptors``) and descriptors -> calibrated probabilities (``predict``).
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.backbones import BACKBONES, BackboneSpec
from models.errors import ModelError
from models.classifier import Classifier
from models.domain import CLASSIFIERS
from models.extractor import FeatureExtractor
from models.reduction import Reducer

FILES = ("manifest.json", "backbone.onnx", "reducer.npz", *(f"{name}.txt" for name in CLASSIFIERS))


@dataclass
class Bundle:
    path: Path
    manifest: dict
    reducer: Reducer
    classifiers: dict[str, Classifier]
    extractor: FeatureExtractor | None = field(default=None, repr=False)

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def labels(self) -> list[str]:
        return self.manifest["labels"]

    @property
    def backbone(self) -> BackboneSpec:
        """The input the backbone expects (also known without loading it: classifier-only workers)."""
        return self.extractor.spec if self.extractor is not None else BACKBONES[self.manifest["backbone"]]

    @property
    def k(self) -> int:
        return self.reducer.k

    @property
    def backbone_id(self) -> tuple[str, str | None]:
        """The backbone and its exported file's hash: bundles with equal ids run the same ONNX."""
        return self.manifest["backbone"], self.manifest.get("onnx", {}).get("sha256")

    def reduce(self, features: np.ndarray) -> np.ndarray:
        """Backbone features -> (N, k) descriptors (a shadow bundle reduces the serving one's)."""
        return self.reducer.transform(features)

    @classmethod
    def load(cls, path: Path, *, extractor: bool = True, threads: int = 0, providers: list[str] | None = None,
             wide_threads: int | None = None, onnx_classifiers: Collection[str] = ()) -> Bundle:
        """``onnx_classifiers``: the classifiers served as tree ensembles on onnxruntime (built and
        checked here, a second or so for the accurate one; ``CLASSIFIERS`` where a bundle is served
        or scored); the others predict with LightGBM."""
        path = Path(path)
        missing = [f for f in FILES if not (path / f).exists() and (extractor or f != "backbone.onnx")]
        if missing:
            raise ModelError(f"bundle {path} is incomplete: missing {', '.join(missing)}")
        manifest = json.loads((path / "manifest.json").read_text())
        clfs = {
            name: Classifier.load(path, name, manifest["classifiers"][name]["temperature"], manifest["labels"],
                                  "onnx" if name in onnx_classifiers else "lightgbm", manifest.get("descriptor_stats"))
            for name in CLASSIFIERS
        }
        ext = (FeatureExtractor(path / "backbone.onnx", manifest["backbone"], threads, providers, wide_threads=wide_threads)
               if extractor else None)
        reducer = Reducer.load(path / "reducer.npz")
        if reducer.k != manifest["k"]:
            raise ModelError(f"bundle {path}: reducer has k={reducer.k}, manifest says {manifest['k']}")
        return cls(path, manifest, reducer, clfs, ext)

    def features(self, batch: np.ndarray, wide: bool = False) -> np.ndarray:
        if self.extractor is None:
            raise ModelError("bundle loaded without its backbone")
        return self.extractor.run(batch, wide)

    def descriptors(self, batch: np.ndarray, wide: bool = False) -> np.ndarray:
        """Preprocessed (N, 3, S, S) batch -> (N, k) float32 descriptors (``wide``: on every core)."""
        return self.reducer.transform(self.features(batch, wide))

    def predict(self, classifier: str, descriptors: np.ndarray) -> np.ndarray:
        """(N, k) -> (N, classes) calibrated probabilities."""
        if classifier not in self.classifiers:
            raise KeyError(classifier)
        return self.classifiers[classifier].predict_proba(descriptors)


def write_manifest(path: Path, manifest: dict) -> None:
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
