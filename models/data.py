"""Labelled images from an archive (.tar, .tar.gz, .tgz, .zip) or a folder laid out
``<split>/<class>/<file>`` (a leading ``<split>/`` level is optional), and a stratified split."""

from __future__ import annotations

import hashlib
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.errors import DataError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


@dataclass(frozen=True)
class Sample:
    path: str
    label: str


def _label_of(path: str) -> str | None:
    parts = Path(path).parts
    if Path(path).suffix.lower() not in IMAGE_SUFFIXES or len(parts) < 2:
        return None
    return parts[-2]


def _open(source: Path):
    if source.is_dir():
        return None
    if zipfile.is_zipfile(source):
        return zipfile.ZipFile(source)
    return tarfile.open(source, "r:*")


def list_samples(source: Path) -> list[Sample]:
    """Every image with its class (the folder it sits in), in a stable order."""
    source = Path(source)
    if source.is_dir():
        paths = [str(p.relative_to(source)) for p in source.rglob("*") if p.is_file()]
    else:
        with _open(source) as arc:
            paths = arc.namelist() if isinstance(arc, zipfile.ZipFile) else [m.name for m in arc if m.isfile()]
    samples = [Sample(p, lbl) for p in sorted(paths) if (lbl := _label_of(p)) is not None]
    if not samples:
        raise DataError(f"no images laid out <class>/<file> found in {source}", code="no_images")
    return samples


def read_samples(source: Path, wanted: list[Sample]) -> Iterator[tuple[Sample, bytes]]:
    """Bytes of ``wanted`` samples, in archive order (one sequential pass over a tarball)."""
    source = Path(source)
    want = {s.path: s for s in wanted}
    if source.is_dir():
        for s in wanted:
            yield s, (source / s.path).read_bytes()
        return
    with _open(source) as arc:
        if isinstance(arc, zipfile.ZipFile):
            for s in wanted:
                yield s, arc.read(s.path)
            return
        for member in arc:
            s = want.get(member.name)
            if s is not None:
                yield s, arc.extractfile(member).read()


def data_hash(source: Path) -> str:
    """Content hash of an archive, or of a folder's file names and bytes."""
    source = Path(source)
    h = hashlib.sha256()
    if source.is_dir():
        for p in sorted(p for p in source.rglob("*") if p.is_file()):
            h.update(str(p.relative_to(source)).encode())
            h.update(p.read_bytes())
    else:
        with open(source, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def limit_per_class(samples: list[Sample], limit: int | None, seed: int = 0) -> list[Sample]:
    if not limit:
        return samples
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[Sample]] = {}
    for s in samples:
        by_class.setdefault(s.label, []).append(s)
    keep = []
    for label in sorted(by_class):
        group = by_class[label]
        idx = rng.permutation(len(group))[:limit]
        keep.extend(group[i] for i in sorted(idx))
    return sorted(keep, key=lambda s: s.path)


def stratified_split(labels: np.ndarray, fraction: float, seed: int = 0, minimum: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held_out) with ``fraction`` of every class held out (at least ``minimum`` in all)."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    fraction = max(fraction, min(0.5, minimum / max(n, 1)))
    held = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        held.extend(idx[: max(1, int(round(len(idx) * fraction)))])
    mask = np.zeros(n, bool)
    mask[held] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)
