"""Train a bundle from labelled images: features (cached) -> held-out split -> reduction ->
fast/balanced/accurate LightGBM with calibration -> metrics beside a logistic-regression ceiling
and a k sweep. Called by ``imgstream models train``; everything here is CPU math on arrays.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from models import classifier as clf
from models import data, drift, metrics, reduction
from models.bundle import Bundle, write_manifest
from models.domain import CLASSIFIERS, K_SWEEP
from models.errors import DataError
from models.extractor import FeatureExtractor
from models.preprocess import preprocess

Progress = Callable[[int], None]


@dataclass
class TrainConfig:
    source: Path
    onnx: Path
    onnx_info: dict
    backbone: str
    k: int = 20
    reduction: str = "lda+pca"
    limit_per_class: int | None = None
    val_fraction: float = 0.1
    val_minimum: int = 5000
    seed: int = 0
    cache_dir: Path = Path("var/cache")
    sweep: bool = True
    threads: int = 0
    reducer: reduction.Reducer | None = None  # reuse (same descriptor space) instead of fitting
    reducer_from: str | None = None


def extract(source: Path, samples: list[data.Sample], extractor: FeatureExtractor, batch: int = 64,
            advance: Progress | None = None) -> np.ndarray:
    """Features for ``samples`` in order; decoding overlaps the ONNX run of the previous batch."""
    index = {s.path: i for i, s in enumerate(samples)}
    out = np.zeros((len(samples), extractor.session.get_outputs()[0].shape[1] or 0), np.float32)

    def prep(chunk):
        return [index[s.path] for s, _ in chunk], np.stack([preprocess(b, extractor.spec) for _, b in chunk])

    def chunks():
        chunk: list = []
        for item in data.read_samples(source, samples):
            chunk.append(item)
            if len(chunk) == batch:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    with ThreadPoolExecutor(1) as pool:
        pending = None
        for chunk in chunks():
            nxt = pool.submit(prep, chunk)  # decode the next batch while ONNX runs this one
            if pending is not None:
                _run(pending, extractor, out, advance)
            pending = nxt
        if pending is not None:
            _run(pending, extractor, out, advance)
    return out


def _run(future, extractor, out, advance) -> None:
    rows, x = future.result()
    out[rows] = extractor.run(x)
    if advance:
        advance(len(rows))


def cached_features(cfg: TrainConfig, samples: list[data.Sample], digest: str,
                    progress: Callable[[int], Progress] | None = None) -> tuple[np.ndarray, bool]:
    """Features cached on disk by (backbone, ONNX hash, data hash, limit)."""
    key = f"{cfg.backbone}-{cfg.onnx_info.get('sha256', 'x')[:12]}-{digest}-{cfg.limit_per_class or 'all'}"
    path = cfg.cache_dir / "features" / f"{key}.npy"
    if path.exists():
        x = np.load(path)
        if len(x) == len(samples):
            return x, True
    extractor = FeatureExtractor(cfg.onnx, cfg.backbone, cfg.threads)
    x = extract(cfg.source, samples, extractor, advance=progress(len(samples)) if progress else None)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, x)
    return x, False


def ceiling(x_fit, y_fit, x_cal, y_cal, x_val, y_val, grid=(0.0001, 0.0003, 0.001, 0.003, 0.01, 0.1)) -> dict:
    """Multinomial logistic regression on the full, un-reduced features; C tuned on (x_cal, y_cal)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_fit)
    xf, xc, xv = scaler.transform(x_fit), scaler.transform(x_cal), scaler.transform(x_val)
    tried = {}
    best = None
    for c in grid:
        m = LogisticRegression(C=c, max_iter=300, tol=1e-3).fit(xf, y_fit)
        acc = float((m.predict(xc) == y_cal).mean())
        tried[str(c)] = acc
        if best is None or acc > best[0]:
            best = (acc, c, m)
    _, c, m = best
    return {"model": "logistic regression, all features", "C": c, "C_grid_cal_top1": tried,
            **metrics.summarize(y_val, m.predict_proba(xv))}


def train(cfg: TrainConfig, out_root: Path, progress=None, log=print) -> tuple[Path, dict]:
    t0 = time.time()
    samples = data.limit_per_class(data.list_samples(cfg.source), cfg.limit_per_class, cfg.seed)
    labels = sorted({s.label for s in samples})
    y = np.array([labels.index(s.label) for s in samples])
    digest = data.data_hash(cfg.source)
    log(f"{len(samples)} images, {len(labels)} classes, data hash {digest}")
    x, cached = cached_features(cfg, samples, digest, progress)
    log(f"features {x.shape} ({'from cache' if cached else 'extracted'}) in {time.time() - t0:.0f}s")

    rest, val = data.stratified_split(y, cfg.val_fraction, cfg.seed, minimum=cfg.val_minimum)
    fit_idx, cal_idx = (rest[i] for i in data.stratified_split(y[rest], 0.1, cfg.seed + 1))
    x_fit, y_fit, x_cal, y_cal, x_val, y_val = x[fit_idx], y[fit_idx], x[cal_idx], y[cal_idx], x[val], y[val]
    log(f"split: fit {len(fit_idx)}, calibration {len(cal_idx)}, held-out validation {len(val)}")

    red = cfg.reducer or reduction.fit(x_fit, y_fit, cfg.k, cfg.reduction, cfg.seed)
    d_fit, d_cal, d_val = red.transform(x_fit), red.transform(x_cal), red.transform(x_val)
    classifiers, report = {}, {}
    for name in CLASSIFIERS:
        t = time.time()
        c = clf.train(name, d_fit, y_fit, d_cal, y_cal, labels, cfg.seed, cfg.threads)
        classifiers[name] = c
        p = c.predict_proba(d_val, threads=0)
        one = d_val[:1]
        batch = d_val[:256]
        report[name] = {
            **metrics.summarize(y_val, p),
            "temperature": c.temperature,
            "trees": c.booster.num_trees(),
            "train_s": round(time.time() - t, 1),
            "latency_one": metrics.latency_ms(lambda: c.predict_proba(one)),
            "latency_batch256": metrics.latency_ms(lambda: c.predict_proba(batch), repeat=50, warmup=5),
        }
        log(f"{name}: top1 {report[name]['top1']:.4f} ece {report[name]['ece']:.4f} "
            f"p99(one) {report[name]['latency_one']['p99_ms']:.3f} ms")

    log("ceiling: logistic regression on all features ...")
    ceil = ceiling(x_fit, y_fit, x_cal, y_cal, x_val, y_val)
    log(f"ceiling top1 {ceil['top1']:.4f} (C={ceil['C']})")

    sweep = []
    if cfg.sweep:
        for method in ("pca", "lda+pca"):
            for k in K_SWEEP:
                r = red if (method, k) == (cfg.reduction, cfg.k) else reduction.fit(x_fit, y_fit, k, method, cfg.seed)
                c = clf.train("balanced", r.transform(x_fit), y_fit, r.transform(x_cal), y_cal, labels, cfg.seed,
                              cfg.threads)
                acc = metrics.accuracy(y_val, c.predict_proba(r.transform(x_val), threads=0))
                sweep.append({"reduction": method, "k": k, "classifier": "balanced", "top1": acc})
                log(f"sweep {method} k={k}: {acc:.4f}")

    version = datetime.now(UTC).strftime("%Y%m%d-%H%M%S") + f"-{cfg.backbone.split('_')[0][:3]}{cfg.k}"
    path = out_root / version
    path.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cfg.onnx, path / "backbone.onnx")
    red.save(path / "reducer.npz")
    space = hashlib.sha256(hashlib.sha256((path / "backbone.onnx").read_bytes()).digest()
                           + (path / "reducer.npz").read_bytes()).hexdigest()[:16]
    manifest = {
        "version": version,
        "created_at": datetime.now(UTC).isoformat(),
        "backbone": cfg.backbone,
        "onnx": cfg.onnx_info,
        "k": red.k,
        "reduction": red.method,
        # Bundles with the same descriptor space read each other's descriptors (imgstream replay).
        "descriptor_space": space,
        # What the descriptors of the training images look like (the fit split): the worker's drift
        # score compares recent descriptors with these (models/drift.py).
        "descriptor_stats": drift.reference(d_fit),
        "reducer_from": cfg.reducer_from,
        "labels": labels,
        "data": {"source": Path(cfg.source).name, "hash": digest, "images": len(samples),
                 "limit_per_class": cfg.limit_per_class, "fit": len(fit_idx), "calibration": len(cal_idx),
                 "validation": len(val), "seed": cfg.seed},
        "classifiers": {n: {"file": classifiers[n].save(path), **report[n]} for n in CLASSIFIERS},
        "ceiling": ceil,
        "k_sweep": sweep,
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
        "train_seconds": round(time.time() - t0, 1),
    }
    write_manifest(path, manifest)
    Bundle.load(path, onnx_classifiers=CLASSIFIERS)  # refuse to publish a bundle that does not load
    return path, manifest


def evaluate(bundle: Bundle, source: Path, limit_per_class: int | None = None, progress=None) -> dict:
    """Evaluate a bundle on any labelled archive or folder: per classifier top-1, macro-F1, ECE, latency."""
    samples = data.limit_per_class(data.list_samples(source), limit_per_class)
    labels = bundle.labels
    unknown = sorted({s.label for s in samples} - set(labels))
    if unknown:
        raise DataError(f"classes {unknown} are not in the bundle's labels {labels}", code="unknown_classes")
    y = np.array([labels.index(s.label) for s in samples])
    feats = extract(source, samples, bundle.extractor, advance=progress(len(samples)) if progress else None)
    d = bundle.reducer.transform(feats)
    out = {"bundle": bundle.version, "images": len(samples), "classifiers": {}}
    for name, c in bundle.classifiers.items():
        out["classifiers"][name] = {
            **metrics.summarize(y, c.predict_proba(d, threads=0)),
            "latency_one": metrics.latency_ms(lambda: c.predict_proba(d[:1])),
            "latency_batch256": metrics.latency_ms(lambda: c.predict_proba(d[:256]), repeat=50, warmup=5),
        }
    return out


def dumps(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=True)
