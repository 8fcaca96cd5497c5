"""Photo workloads for the bench: JPEGs at screen and camera sizes made from the two real photos
scikit-learn ships (china.jpg and flower.jpg, 640x427), each resized to cover the target size,
cropped at its own offset, mirrored every other time, given a little sensor-like noise (so the
entropy-coded data is about as dense as a camera's) and re-encoded at quality 92. Uploads are made
distinct with a JPEG comment (same pixels, new sha256), so the descriptor table never answers."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from tools.bench.images import DistinctImages

SIZES = ((640, 480), (1920, 1080), (4032, 3024))
VARIANTS = 6


def sources() -> list[Path]:
    import sklearn.datasets

    folder = Path(sklearn.datasets.__file__).parent / "images"
    return [folder / "china.jpg", folder / "flower.jpg"]


def variants(size: tuple[int, int], n: int = VARIANTS, seed: int = 0) -> list[bytes]:
    w, h = size
    rng = np.random.default_rng(seed)
    photos = [Image.open(p).convert("RGB") for p in sources()]
    out = []
    for i in range(n):
        im = photos[i % len(photos)]
        scale = max(w / im.width, h / im.height) * (1.05 + 0.1 * (i // len(photos)))
        im = im.resize((math.ceil(im.width * scale), math.ceil(im.height * scale)), Image.BICUBIC)
        left, top = int(rng.integers(0, im.width - w + 1)), int(rng.integers(0, im.height - h + 1))
        im = im.crop((left, top, left + w, top + h))
        if i % 2:
            im = ImageOps.mirror(im)
        noisy = np.asarray(im, np.float32) + rng.normal(0.0, 3.0, (h, w, 3))
        buf = io.BytesIO()
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=92)
        out.append(buf.getvalue())
    return out


class Photos:
    """Distinct uploads of one size, handed out phase by phase like the CIFAR ``Images``."""

    def __init__(self, size: tuple[int, int], tag: str) -> None:
        self.size = size
        self.base = variants(size)
        self.items = DistinctImages(self.base, f"{tag}-{size[0]}x{size[1]}")
        self.pos = 0

    @property
    def mean_bytes(self) -> float:
        return float(np.mean([len(b) for b in self.base]))

    def take(self, n: int) -> list[bytes]:
        out = [self.items[self.pos + i] for i in range(n)]
        self.pos += n
        return out
