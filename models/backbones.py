"""What each backbone expects: input size, normalization, feature width. Shared by export (torch)
and serving (numpy), so the two cannot drift apart."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    features: int
    size: int
    resize: int  # shorter side before the centre crop
    mean: tuple[float, float, float]  # in 0..255 pixel units
    std: tuple[float, float, float]


BACKBONES = {
    # torchvision's ImageNet weights: mean/std normalization.
    "resnet50": BackboneSpec("resnet50", 2048, 224, 256, (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
    # The TF-trained EfficientNet-Lite0 weights expect (x - 127) / 128, not ImageNet mean/std.
    "efficientnet_lite0": BackboneSpec("efficientnet_lite0", 1280, 224, 224, (127.0, 127.0, 127.0),
                                       (128.0, 128.0, 128.0)),
}
