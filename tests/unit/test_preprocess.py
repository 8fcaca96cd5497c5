"""Run-time preprocessing (numpy + Pillow) and its refusals."""

import io

import numpy as np
import pytest
from PIL import Image

from app.core.errors import InvalidImage, TooManyPixels
from models.backbones import BACKBONES
from models.preprocess import BACKGROUND, decode, normalize, preprocess, probe, to_array, validate


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


def test_normalize_gives_the_bundles_training_values_bit_for_bit():
    """Bundles are trained on these exact float32 values: the fast path (channels moved on the
    uint8 pixels, one float32 pass) must equal the plain formula, not merely be close to it."""
    pixels = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    for name, spec in BACKBONES.items():
        plain = (pixels.astype(np.float32) - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
        x = normalize(pixels, spec)
        assert x.flags.c_contiguous and x.dtype == np.float32, name
        assert np.array_equal(x, plain.transpose(2, 0, 1)), name


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


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def _scene(w=320, h=240) -> Image.Image:
    """A picture with a recognisable top: red top half, blue bottom half."""
    im = Image.new("RGB", (w, h), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, w, h // 2))
    return im


def test_exif_orientation_is_applied():
    """A phone stores the picture sideways and tags it with orientation 6 (rotate 90 degrees
    clockwise to show): the decoded picture is the one shown, its red half on top again."""
    stored = _scene().transpose(Image.Transpose.ROTATE_90)  # red half now on the left
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    stored.save(buf, "JPEG", exif=exif, quality=95)
    shown = np.asarray(decode(buf.getvalue(), 10**8))
    assert shown.shape == (240, 320, 3)
    top, bottom = shown[:100].mean(axis=(0, 1)), shown[-100:].mean(axis=(0, 1))
    assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]


def test_16_bit_grayscale_is_scaled_not_clipped():
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (16, 1))
    im = Image.fromarray(ramp)  # mode I;16
    data = _png(im)
    assert Image.open(io.BytesIO(data)).mode.startswith("I")  # what Pillow decodes it to
    out = np.asarray(decode(data, 10**8))
    assert out.dtype == np.uint8 and (out[..., 0] == out[..., 1]).all()
    row = out[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255 and row[128] in range(126, 130)  # not all white
    assert (np.diff(row) >= 0).all()


def test_transparent_pixels_show_the_background_not_what_lies_under_them():
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., :3] = (0, 255, 0)  # green under fully transparent pixels
    rgba[:, 10:, 3] = 255  # right half opaque black-green
    rgba[:, 10:, :3] = (10, 20, 30)
    out = np.asarray(decode(_png(Image.fromarray(rgba)), 10**8))
    assert (out[:, :10] == BACKGROUND).all() and (out[:, 10:] == (10, 20, 30)).all()
    # palette images with a transparent index, and grayscale with alpha, likewise
    p = Image.new("P", (8, 8), 0)
    p.putpalette([0, 255, 0] + [0, 0, 0] * 255)
    p.info["transparency"] = 0
    assert (np.asarray(decode(_png(p), 10**8)) == BACKGROUND).all()
    la = Image.fromarray(np.dstack([np.full((8, 8), 40, np.uint8), np.zeros((8, 8), np.uint8)]))
    assert (np.asarray(decode(_png(la), 10**8)) == BACKGROUND).all()


def test_large_jpegs_decode_with_dct_scaling_to_at_least_the_resize():
    spec = BACKBONES["resnet50"]
    buf = io.BytesIO()
    _scene(4032, 3024).save(buf, "JPEG", quality=85)
    data = buf.getvalue()
    small = decode(data, 10**8, spec.resize)
    assert small.size == (504, 378)  # 1/8: the smallest scale whose shorter side is >= 256
    assert decode(data, 10**8, 400).size == (1008, 756)  # 1/4 for a larger target
    assert decode(data, 10**8).size == (4032, 3024)  # no target: full size
    x = preprocess(data, spec)
    assert x.shape == (3, 224, 224)
    # the same picture as the full decode gives, to within the scaled IDCT's rounding
    full = to_array(decode(data, 10**8), spec)
    assert np.abs(x - full).mean() < 0.02


def test_truncated_jpeg_is_refused_at_every_scale():
    buf = io.BytesIO()
    _scene(2048, 1536).save(buf, "JPEG")
    data = buf.getvalue()[: len(buf.getvalue()) * 2 // 3]
    for side in (0, 1, 256):
        with pytest.raises(InvalidImage):
            decode(data, 10**8, side)
    with pytest.raises(InvalidImage):
        validate(data, 10**8)


def test_cifar_inputs_are_bit_identical_to_a_plain_full_decode(sample_images):
    """CIFAR-10's 32x32 JPEGs are far below the DCT-scaling threshold and carry no orientation or
    alpha: the backbone sees exactly what a plain full decode gave (checked once over all 50,000
    training images, which hold the held-out split; here over 300), so accuracy cannot move."""
    for name, spec in BACKBONES.items():
        for _, data in sample_images:
            assert np.array_equal(preprocess(data, spec), to_array(Image.open(io.BytesIO(data)).convert("RGB"), spec)), name
