"""Dense multi-task network used as surrogate and victim (issue 28): a ResNet-18 trunk with one light decoder per
dense task (segmentation, depth, normals) and, for the classification tasks of the same run, the classifier's
heads (pooled features -> Linear 256 + ELU -> Linear per task, method-spec §6.1).

The trunk is `classifiers._resnet` (torchvision, weights=None, ImageNet stem by default as the paper's ResNet
victim). Each decoder is an FPN-lite over the stem and the four stages: a 1x1 lateral per level, top-down
bilinear upsampling and addition, one 3x3 conv + BN + ReLU, a 1x1 conv to the task's channels and bilinear
upsampling to the input size. Outputs are raw: logits for segmentation, the depth itself, an unnormalised
normal (the task's loss and prediction normalise it).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from mtlue_cli.config import CLASSIFIER_STEMS
from mtlue_cli.models.classifiers import SHARED_FEATURES, _kaiming_conv, _resnet

DENSE_OUTPUTS = {"segmentation": None, "depth": 1, "normals": 3}  # channels of each dense kind's map (None: C)
CLASSIFICATION_KINDS = ("multiclass", "binary")
_LEVELS = (64, 64, 128, 256, 512)  # ResNet-18 channels: stem (stride 2), layer1 (4), layer2 (8), layer3 (16), layer4 (32)


class _Decoder(nn.Module):
    """FPN-lite: laterals to `width` channels, top-down sum, 3x3 conv + BN + ReLU, 1x1 conv to `outputs`."""

    def __init__(self, outputs: int, width: int) -> None:
        super().__init__()
        self.laterals = nn.ModuleList(nn.Conv2d(c, width, kernel_size=1) for c in _LEVELS)
        self.fuse = nn.Sequential(_kaiming_conv(nn.Conv2d(width, width, kernel_size=3, padding=1, bias=False)),
                                  nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.out = nn.Conv2d(width, outputs, kernel_size=1)

    def forward(self, levels: list[Tensor], size: tuple[int, int]) -> Tensor:
        h = self.laterals[-1](levels[-1])
        for lateral, level in zip(reversed(self.laterals[:-1]), reversed(levels[:-1])):
            h = lateral(level) + F.interpolate(h, size=level.shape[-2:], mode="bilinear", align_corners=False)
        h = self.out(self.fuse(h))  # (B, outputs, H/2, W/2)
        return F.interpolate(h, size=size, mode="bilinear", align_corners=False)  # (B, outputs, H, W)


class DenseMTLNet(nn.Module):
    """ResNet-18 trunk, one FPN-lite decoder per dense task, the §6.1 heads for the classification tasks.

    Args:
        tasks: one `{"kind": name, "outputs": width}` per task, in task order. Dense kinds: "segmentation"
            (outputs = C classes), "depth" (1), "normals" (3). Classification kinds: "multiclass" (C logits),
            "binary" (1 logit), as `data.kinds` names them and sizes their heads.
        in_channels: 3 (RGB) or 1 (grey).
        stem: "imagenet" (7x7/2 conv + max-pool, the paper's ResNet victim) or "cifar" (3x3/1 conv, no max-pool).
        decoder_width: channels inside each decoder.
    """

    def __init__(self, tasks: list[dict[str, Any]], in_channels: int = 3, stem: str = "imagenet",
                 decoder_width: int = 64) -> None:
        super().__init__()
        tasks = [{"kind": str(t["kind"]), "outputs": int(t["outputs"])} for t in tasks]
        if not tasks:
            raise ValueError("tasks needs at least one {'kind': ..., 'outputs': ...}")
        for t in tasks:
            if t["kind"] not in DENSE_OUTPUTS and t["kind"] not in CLASSIFICATION_KINDS:
                raise ValueError(f"unknown task kind {t['kind']!r}: use one of "
                                 f"{', '.join([*DENSE_OUTPUTS, *CLASSIFICATION_KINDS])}")
            fixed = DENSE_OUTPUTS.get(t["kind"])
            if t["outputs"] < 1 or (fixed is not None and t["outputs"] != fixed):
                raise ValueError(f"a {t['kind']} task has {fixed or 'one or more'} outputs, got {t['outputs']}")
        if stem not in CLASSIFIER_STEMS:
            raise ValueError(f"unknown stem {stem!r}: use one of {', '.join(CLASSIFIER_STEMS)}")
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 (grey) or 3 (RGB), got {in_channels}")
        self.tasks, self.in_channels, self.stem, self.decoder_width = tasks, in_channels, stem, decoder_width

        self.trunk, features = _resnet("resnet18", in_channels, stem)
        dense = [t["kind"] in DENSE_OUTPUTS for t in tasks]
        # Parts no task reads are not built, so every parameter gets a gradient (style rule 10).
        self.decoders = nn.ModuleDict({str(k): _Decoder(t["outputs"], decoder_width)
                                       for k, t in enumerate(tasks) if dense[k]})
        self.shared = nn.Sequential(nn.Linear(features, SHARED_FEATURES), nn.ELU()) if not all(dense) else None
        self.heads = nn.ModuleDict({str(k): nn.Linear(SHARED_FEATURES, t["outputs"])
                                    for k, t in enumerate(tasks) if not dense[k]})

    @property
    def kinds(self) -> list[str]:
        return [t["kind"] for t in self.tasks]

    def levels(self, x: Tensor) -> list[Tensor]:
        """The trunk's feature maps: stem, layer1 ... layer4 (the torchvision ResNet forward without pool and fc)."""
        t = self.trunk
        stem = t.relu(t.bn1(t.conv1(x)))  # (B, 64, H/2, W/2) with the ImageNet stem
        levels = [stem, t.layer1(t.maxpool(stem))]
        for layer in (t.layer2, t.layer3, t.layer4):
            levels.append(layer(levels[-1]))
        return levels  # strides 2, 4, 8, 16, 32 (ImageNet stem) or 1, 1, 2, 4, 8 (CIFAR stem)

    def forward(self, x: Tensor) -> list[Tensor]:
        """One tensor per task, in task order: (B, outputs, H, W) for dense tasks, (B, outputs) otherwise."""
        levels = self.levels(x)
        shared = self.shared(levels[-1].mean(dim=(2, 3))) if self.shared is not None else None  # (B, 256)
        out = []
        for k in range(len(self.tasks)):
            if str(k) in self.decoders:
                out.append(self.decoders[str(k)](levels, x.shape[-2:]))  # (B, outputs, H, W)
            else:
                out.append(self.heads[str(k)](shared))  # (B, outputs)
        return out


def build_model(kinds: list[Any], arch: str = "resnet18", stem: str = "imagenet", image_size: int = 64) -> nn.Module:
    """The surrogate or victim for tasks of these kinds (data.kinds): the §6.1 `MTLClassifier` when every task is a
    classification task, else a `DenseMTLNet` (ResNet-18 only: the label-map decoders read its stages)."""
    from mtlue_cli.models.classifiers import MTLClassifier

    if not any(kind.dense for kind in kinds):
        return MTLClassifier([kind.classes for kind in kinds], arch=arch, stem=stem, image_size=image_size)
    if arch != "resnet18":
        raise ValueError(f"label-map tasks train on a resnet18 trunk with one decoder per map, not {arch}")
    return DenseMTLNet([{"kind": kind.name, "outputs": kind.outputs} for kind in kinds], stem=stem)
