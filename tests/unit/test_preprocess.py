"""Run-time preprocessing (numpy + Pillow) and its refusals."""

import io

import numpy as np
import pytest
from PIL import Image

from app.errors import InvalidImage, TooManyPixels
from models.backbones import BACKBONES
from models.preprocess import decode, preprocess, probe


def _jpeg(w=64, h=48, color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, "JPEG")
    return buf.getvalue()


def test_output_is_nchw_float32_normalized_per_backbone():
    for name, spec in BACKBONES.items():
        x = preprocess(_jpeg(), spec)
        assert x.shape == (3, 224, 224) and x.dtype == np.float32, name
    # TF-style (x - 127) / 128 for EfficientNet-Lite0: pure red -> R ~ (200-127)/128
    x = preprocess(_jpeg(color=(200, 30, 30)), BACKBONES["efficientnet_lite0"])
    assert abs(float(x[0].mean()) - (200 - 127) / 128) < 0.05


def test_refuses_empty_garbage_and_non_images():
    for bad in (b"", b"hello world", b"%PDF-1.4 not an image", b"\xff\xd8\xff" + b"\0" * 10):
        with pytest.raises(InvalidImage):
            probe(bad, 10**8)


def test_refuses_truncated_jpeg_on_decode():
    data = _jpeg(256, 256)
    with pytest.raises(InvalidImage):
        decode(data[: len(data) // 2], 10**8)


def test_refuses_decompression_bomb_before_decoding():
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, "PNG")  # a few KB on disk, 400 Mpx when decoded
    assert len(buf.getvalue()) < 200_000
    with pytest.raises(TooManyPixels):
        probe(buf.getvalue(), 40_000_000)


def test_refuses_other_formats():
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "GIF")
    with pytest.raises(InvalidImage, match="unsupported"):
        probe(buf.getvalue(), 10**6)


def test_png_with_alpha_and_grayscale_become_rgb():
    for mode in ("RGBA", "L", "P"):
        buf = io.BytesIO()
        Image.new(mode, (30, 40)).save(buf, "PNG")
        assert preprocess(buf.getvalue(), BACKBONES["resnet50"]).shape == (3, 224, 224)
