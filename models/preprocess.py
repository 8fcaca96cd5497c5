"""Image bytes -> normalized NCHW float32, with numpy and Pillow only.

Matches torchvision's ``Resize(shorter side) -> CenterCrop -> ToTensor -> Normalize`` on PIL images
(tests/unit/test_preprocess.py checks it against torch), and refuses anything that is not a real
JPEG, PNG or WebP within the pixel limit *before* decoding the pixels (decompression bombs).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from models.errors import InvalidImage, TooManyPixels
from models.backbones import BackboneSpec

FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}

# Our own pixel check runs first with a clearer error; this is Pillow's backstop.
Image.MAX_IMAGE_PIXELS = None


def probe(data: bytes, max_pixels: int) -> tuple[str, int, int]:
    """(format, width, height) from the header alone; raises InvalidImage or TooManyPixels."""
    if not data:
        raise InvalidImage("empty body")
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, (w, h) = im.format, im.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InvalidImage(f"not a decodable image: {exc}") from exc
    if fmt not in FORMATS:
        raise InvalidImage(f"unsupported image format {fmt}; send JPEG, PNG or WebP")
    if w * h > max_pixels:
        raise TooManyPixels(f"image is {w}x{h} = {w * h} pixels, above the limit of {max_pixels}")
    return fmt, w, h


def decode(data: bytes, max_pixels: int) -> Image.Image:
    """Fully decode to RGB; truncated or corrupted data raises InvalidImage."""
    probe(data, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            im.load()
        return im.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning) as exc:
        raise InvalidImage(f"image data is corrupt or truncated: {exc}") from exc


def to_array(im: Image.Image, spec: BackboneSpec) -> np.ndarray:
    """RGB PIL image -> (3, size, size) float32, normalized for ``spec``'s weights."""
    w, h = im.size
    if (w, h) != (spec.size, spec.size):
        if w <= h:  # torchvision's Resize(int): shorter side -> resize, aspect kept
            nw, nh = spec.resize, int(spec.resize * h / w)
        else:
            nw, nh = int(spec.resize * w / h), spec.resize
        im = im.resize((nw, nh), Image.BILINEAR)
        left, top = int(round((nw - spec.size) / 2.0)), int(round((nh - spec.size) / 2.0))
        im = im.crop((left, top, left + spec.size, top + spec.size))
    x = np.asarray(im, dtype=np.float32)
    x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess(data: bytes, spec: BackboneSpec, max_pixels: int = 40_000_000) -> np.ndarray:
    return to_array(decode(data, max_pixels), spec)
