"""Image bytes -> normalized NCHW float32, with numpy and Pillow only.

Matches torchvision's ``Resize(shorter side) -> CenterCrop -> ToTensor -> Normalize`` on the decoded
PIL image (tests/unit/test_export.py checks it against torch), and refuses anything that is not a real
JPEG, PNG or WebP within the pixel limit *before* decoding the pixels (decompression bombs).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from models.errors import InvalidImage, TooManyPixels
from models.backbones import BackboneSpec

FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}

BACKGROUND = (255, 255, 255)
"""Transparent pixels are shown on white, as most viewers and browsers on a light page show them."""

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


def decode(data: bytes, max_pixels: int, min_side: int = 0) -> Image.Image:
    """Decode to the RGB picture a viewer sees; truncated or corrupted data raises InvalidImage.

    - ``min_side`` > 0: a JPEG is decoded with DCT scaling (libjpeg's 1/2, 1/4 or 1/8) straight to
      the smallest size whose shorter side is still >= ``min_side`` (a 4032x3024 photo for a
      224-pixel input: 30 ms against 114 ms for the full decode and resize, measured). Every entropy-coded byte is
      still read, so truncation and corruption are refused at any scale. PNG and WebP have no such
      mode and decode in full.
    - The EXIF orientation is applied (phones store photos sideways and tag them).
    - 16-bit grayscale is scaled to 8 bits (``convert("RGB")`` would clip it to white).
    - Transparent pixels are composited on ``BACKGROUND`` (else whatever colour a tool left under
      them would show through).
    """
    fmt, w, h = probe(data, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            if min_side and fmt == "JPEG" and min(w, h) >= 2 * min_side:
                short = min(w, h)
                im.draft(None, (-(-w * min_side // short), -(-h * min_side // short)))
            im.load()
            return to_rgb(ImageOps.exif_transpose(im))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning) as exc:
        raise InvalidImage(f"image data is corrupt or truncated: {exc}") from exc


def to_rgb(im: Image.Image) -> Image.Image:
    """Any decoded mode -> 8-bit RGB: 16-bit scaled, transparency composited on BACKGROUND."""
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):  # 16-bit grayscale PNG
        x = np.asarray(im, dtype=np.uint32)
        im = Image.fromarray(((np.clip(x, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8))
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info:
        im = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", im.size, (*BACKGROUND, 255)), im).convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


def crop(im: Image.Image, spec: BackboneSpec) -> Image.Image:
    """torchvision's ``Resize(spec.resize)`` (shorter side, aspect kept) then ``CenterCrop(spec.size)``:
    the picture the backbone sees."""
    w, h = im.size
    if (w, h) == (spec.size, spec.size):
        return im
    if w <= h:
        nw, nh = spec.resize, int(spec.resize * h / w)
    else:
        nw, nh = int(spec.resize * w / h), spec.resize
    im = im.resize((nw, nh), Image.BILINEAR)
    left, top = int(round((nw - spec.size) / 2.0)), int(round((nh - spec.size) / 2.0))
    return im.crop((left, top, left + spec.size, top + spec.size))


def to_array(im: Image.Image, spec: BackboneSpec) -> np.ndarray:
    """RGB PIL image -> (3, size, size) float32, normalized for ``spec``'s weights."""
    return normalize(np.asarray(crop(im, spec)), spec)


def normalize(pixels: np.ndarray, spec: BackboneSpec) -> np.ndarray:
    """(size, size, 3) uint8 crop -> (3, size, size) float32 for ``spec``'s weights.

    The channels are moved first, on the uint8 pixels (150 KB for 224x224), and the float32 result
    is written once, in its final layout: ten times faster than converting, normalizing and then
    transposing the float array, with the same float32 operations and so the same values."""
    chw = np.ascontiguousarray(pixels.transpose(2, 0, 1))
    x = np.subtract(chw, np.asarray(spec.mean, np.float32)[:, None, None], dtype=np.float32)
    x /= np.asarray(spec.std, np.float32)[:, None, None]
    return x


def model_pixels(data: bytes, spec: BackboneSpec, max_pixels: int = 40_000_000) -> np.ndarray:
    """Validate and decode once: the backbone's input crop as (size, size, 3) uint8 (a 150 KB
    array for 224x224, whatever the photo's size), ready for ``normalize``."""
    return np.asarray(model_view(data, spec, max_pixels))


def validate(data: bytes, max_pixels: int) -> None:
    """Refuse what would not decode, as cheaply as the format allows: a JPEG is decoded at 1/8
    scale (every entropy-coded byte is read, so truncation still shows; almost no IDCT work)."""
    decode(data, max_pixels, min_side=1)


def model_view(data: bytes, spec: BackboneSpec, max_pixels: int = 40_000_000) -> Image.Image:
    """The backbone's input as a picture (before normalization): what the dashboard shows."""
    return crop(decode(data, max_pixels, spec.resize), spec)


def preprocess(data: bytes, spec: BackboneSpec, max_pixels: int = 40_000_000) -> np.ndarray:
    """The one path from bytes to the backbone's input, shared by serving, training and /extract."""
    return normalize(model_pixels(data, spec, max_pixels), spec)
