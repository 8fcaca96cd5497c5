"""Features (N, F) -> k descriptors (N, k): one linear map, ``(x - mean) @ W.T``.

Two ways to fit W, chosen by ``method``:
- ``pca``: the top-k principal components (unsupervised).
- ``lda+pca``: the (classes - 1) linear discriminant directions, which carry most of the class
  information, beside the top principal components to fill k. Measured in docs/MODELS.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

Method = Literal["pca", "lda+pca"]


@dataclass
class Reducer:
    method: str
    mean: np.ndarray  # (F,)
    components: np.ndarray  # (k, F)

    @property
    def k(self) -> int:
        return self.components.shape[0]

    def transform(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) @ self.components.T).astype(np.float32)

    def save(self, path: Path) -> None:
        np.savez(path, method=self.method, mean=self.mean, components=self.components)

    @classmethod
    def load(cls, path: Path) -> Reducer:
        with np.load(path) as z:
            return cls(str(z["method"]), z["mean"].astype(np.float32), z["components"].astype(np.float32))


def fit(x: np.ndarray, y: np.ndarray, k: int, method: Method = "lda+pca", seed: int = 0) -> Reducer:
    from sklearn.decomposition import PCA

    x = np.asarray(x, np.float64)
    mean = x.mean(axis=0)
    if method == "pca":
        pca = PCA(n_components=k, random_state=seed).fit(x)
        return Reducer(method, mean.astype(np.float32), pca.components_.astype(np.float32))
    if method != "lda+pca":
        raise ValueError(f"unknown reduction {method!r}")
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    n_lda = min(k, len(np.unique(y)) - 1)
    lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage="auto", n_components=n_lda).fit(x, y)
    # sklearn's LDA projects (x - xbar) @ scalings_; take its first n_lda directions.
    w_lda = lda.scalings_[:, :n_lda].T
    parts = [w_lda]
    if k > n_lda:
        pca = PCA(n_components=k - n_lda, random_state=seed).fit(x)
        parts.append(pca.components_)
    w = np.vstack(parts)
    # Scale each descriptor to unit variance on the training data (trees do not care; humans and
    # the float32 message format do).
    scale = ((x - mean) @ w.T).std(axis=0)
    w = w / np.where(scale > 0, scale, 1.0)[:, None]
    return Reducer(method, mean.astype(np.float32), w.astype(np.float32))
