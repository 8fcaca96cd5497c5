"""ONNX export against torch, and numpy preprocessing against torch's (in the export env).

These run the real export (``imgstream models export`` installs torch into its own cached
environment the first time); in CI the environment is always built.
"""

import json
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from tools import exportenv
from app.core.settings import Settings
from models.backbones import BACKBONES, BackboneSpec
from models.preprocess import preprocess
from tests.conftest import IN_CI

pytestmark = pytest.mark.export


@pytest.fixture(scope="module")
def export_python() -> Path:
    settings = Settings()
    python = settings.cache_dir / "export-venv" / "bin" / "python"
    if not python.exists() and not IN_CI:
        pytest.skip("export environment not built (run `imgstream models export` once)")
    return exportenv.ensure(settings)


def _export(tmp_path: Path, backbone: str, *extra: str) -> tuple[Path, dict]:
    out = tmp_path / f"{backbone}.onnx"
    exportenv.run(Settings(), "--backbone", backbone, "--out", str(out), *extra)
    return out, json.loads(out.with_suffix(".json").read_text())


@pytest.fixture(scope="module")
def lite0(tmp_path_factory, export_python):
    return _export(tmp_path_factory.mktemp("onnx"), "efficientnet_lite0")


def test_efficientnet_lite0_onnx_matches_torch_and_has_dynamic_batch(lite0):
    path, info = lite0
    assert info["max_abs_diff_vs_torch"] < 1e-3
    assert info["random_init"] is False and "efficientnet-lite0" in info["weights"]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 3):
        out = sess.run(None, {"images": np.zeros((n, 3, 224, 224), np.float32)})[0]
        assert out.shape == (n, 1280)


def test_resnet50_random_init_is_recorded(tmp_path, export_python):
    path, info = _export(tmp_path, "resnet50", "--random-init")
    assert info["random_init"] is True and info["weights"] == "random-init"
    assert info["features"] == 2048 and info["max_abs_diff_vs_torch"] < 1e-3
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"images": np.zeros((2, 3, 224, 224), np.float32)})[0].shape == (2, 2048)


def _photo() -> Path:
    import sklearn.datasets

    return Path(sklearn.datasets.__file__).parent / "images" / "flower.jpg"


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_numpy_preprocessing_matches_torchvision(tmp_path, export_python, backbone):
    photo = _photo()
    small = tmp_path / "odd.png"
    Image.open(photo).resize((97, 61)).save(small)  # a non-square, upscaled case too
    large = tmp_path / "large.jpg"  # decoded with DCT scaling (shorter side >= 2x the resize)
    Image.open(photo).resize((2400, 1600)).save(large, quality=90)
    paths = (photo, small, large)
    ref = tmp_path / "ref.npy"
    proc = subprocess.run([str(export_python), "-m", "models.export", "reference", "--backbone", backbone,
                           "--out", str(ref), *map(str, paths)], cwd=exportenv.REPO_ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    theirs = np.load(ref)
    ours = np.stack([preprocess(p.read_bytes(), BACKBONES[backbone]) for p in paths])
    assert ours.shape == theirs.shape
    # Pillow does the resize in both; only float rounding differs.
    assert np.abs(ours - theirs).max() < 1e-4


def test_known_photo_is_a_daisy_with_tf_normalization(lite0):
    """flower.jpg (sklearn) is ImageNet class 985 'daisy'. With the (x-127)/128 these weights were
    trained with, the model is more than twice as sure of it as with ImageNet mean/std
    (measured: 0.19 against 0.075)."""
    path, _ = lite0
    head = np.load(path.with_suffix(".head.npz"))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    tf_style = BACKBONES["efficientnet_lite0"]
    mean_std = BackboneSpec("mean/std", 1280, 224, 224, BACKBONES["resnet50"].mean, BACKBONES["resnet50"].std)

    def daisy(spec):
        x = preprocess(_photo().read_bytes(), spec)[None]
        z = (sess.run(None, {"images": x})[0] @ head["weight"].T + head["bias"])[0]
        p = np.exp(z - z.max())
        p /= p.sum()
        return int(p.argmax()), float(p[985])

    top, p_tf = daisy(tf_style)
    _, p_ms = daisy(mean_std)
    assert top == 985
    assert p_tf > 2 * p_ms


def test_resnet50_from_a_weights_file(tmp_path, export_python):
    """--weights FILE: torchvision's state dict from disk (here one saved from a fresh model)."""
    weights = tmp_path / "resnet50.pth"
    proc = subprocess.run([str(export_python), "-c", "import torch, torchvision; torch.manual_seed(1); "
                           f"torch.save(torchvision.models.resnet50().state_dict(), {str(weights)!r})"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    path, info = _export(tmp_path, "resnet50", "--weights", str(weights))
    assert info["random_init"] is False and info["weights"] == "file:resnet50.pth"
    assert info["max_abs_diff_vs_torch"] < 1e-3
