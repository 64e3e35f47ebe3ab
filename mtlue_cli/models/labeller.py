"""A generator's labeller: predicts the generator's task labels from the images, for photos that have none
(issue 30). `models.persistence` saves it beside the generator (`labeller.safetensors` + `labeller.json`); `protect`
uses it for every task the user's labels lack.

One module, two feature maps, then one linear head per task:
- "clusters" (fitted by `fit.pseudo`, for a generator fitted without labels): the image at `feature_size` px,
  standardised per pixel and projected on the set's principal components. Each head is one k-means clustering of
  those features, written as a linear layer: the nearest centroid, argmin ||f - c||^2, is argmax 2 c.f - ||c||^2.
  Its classes are the clusters, so the same images always get the same pseudo-labels.
- "classifier" (trained by `fit.pseudo.train_labeller` on labelled photos, e.g. for the faces generator): a small
  CNN whose pooled features the heads read.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KINDS = ("clusters", "classifier")
MAX_CLASSES, MAX_TASKS = 1000, 64
MAX_BASIS = 1 << 24  # a clusters labeller's principal components, in floats (64 MB): 3 x 64 x 64 x 1024 fits


def _cnn(in_channels: int, width: int) -> nn.Sequential:
    """Four conv-BN-ReLU blocks, each halving the side, then global average pooling: (B, 8*width) features."""
    layers: list[nn.Module] = []
    channels = in_channels
    for mult in (1, 2, 4, 8):
        layers += [nn.Conv2d(channels, width * mult, 3, padding=1, bias=False), nn.BatchNorm2d(width * mult),
                   nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        channels = width * mult
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())


class Labeller(nn.Module):
    """Images in [0, 1] (B, C, H, W), any side -> one logits tensor (B, C_k) per task.

    Args:
        tasks: task name -> class names, in the generator's order and vocabulary.
        kind: "clusters" (pixels -> principal components -> nearest centroid) or "classifier" (a small CNN).
        feature_size: the side the images are resized to before the features.
        features: the feature width (principal components kept, or the CNN's 8 * width).
        in_channels: 3 (RGB) or 1 (grey).
        width: the CNN's first-block channels (classifier only).
    """

    def __init__(self, tasks: dict[str, list[str]], kind: str = "clusters", feature_size: int = 32,
                 features: int = 64, in_channels: int = 3, width: int = 16) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown labeller kind {kind!r}: use one of {', '.join(KINDS)}")
        if not 0 < len(tasks) <= MAX_TASKS or min(len(c) for c in tasks.values()) < 2 or \
                max(len(c) for c in tasks.values()) > MAX_CLASSES:
            raise ValueError(f"a labeller needs 1 to {MAX_TASKS} tasks of 2 to {MAX_CLASSES} classes each")
        # Caps before anything is allocated: a labeller.json from the Hub is not trusted (persistence.load_labeller).
        if not (8 <= feature_size <= 256 and 1 <= features <= 1024 and 1 <= width <= 128 and in_channels in (1, 3)) or (
                kind == "clusters" and in_channels * feature_size ** 2 * features > MAX_BASIS):
            raise ValueError(f"labeller sizes out of range: feature_size {feature_size}, features {features}, "
                             f"width {width}, in_channels {in_channels}")
        self.tasks = {str(t): [str(c) for c in classes] for t, classes in tasks.items()}
        self.kind, self.feature_size, self.in_channels, self.width = kind, int(feature_size), int(in_channels), int(width)
        if kind == "clusters":
            pixels = self.in_channels * self.feature_size ** 2
            self.register_buffer("mean", torch.zeros(pixels))
            self.register_buffer("scale", torch.ones(pixels))
            self.register_buffer("basis", torch.zeros(pixels, int(features)))
        else:
            features = 8 * self.width
            self.cnn = _cnn(self.in_channels, self.width)
        self.features = int(features)
        self.heads = nn.ModuleList(nn.Linear(self.features, len(c)) for c in self.tasks.values())

    @property
    def config(self) -> dict[str, Any]:
        return {"tasks": self.tasks, "kind": self.kind, "feature_size": self.feature_size, "features": self.features,
                "in_channels": self.in_channels, "width": self.width}

    def embed(self, x: Tensor) -> Tensor:
        """(B, C, H, W) in [0, 1] -> (B, features)."""
        if x.shape[1] != self.in_channels:
            x = x.mean(1, keepdim=True) if self.in_channels == 1 else x.expand(-1, self.in_channels, -1, -1)
        if x.shape[-1] != self.feature_size or x.shape[-2] != self.feature_size:
            x = F.interpolate(x, size=(self.feature_size, self.feature_size), mode="bilinear", antialias=True,
                              align_corners=False)
        if self.kind == "clusters":
            return ((x.flatten(1) - self.mean) / self.scale) @ self.basis
        return self.cnn(x)

    def forward(self, x: Tensor) -> list[Tensor]:
        f = self.embed(x)
        return [head(f) for head in self.heads]

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """(B, K) class indices, one column per task."""
        return torch.stack([logits.argmax(1) for logits in self(x)], 1)
