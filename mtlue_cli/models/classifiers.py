"""Multi-task classifier used as surrogate and as victim: trunk, shared 256-d ELU layer, one head per task.

Head design from method-spec §6.1. Trunks come from torchvision with weights=None (never a
download). Inputs are in [0, 1] with no mean/std normalisation (§14.2).
"""

import math
from typing import Any, Sequence, Union

import torch
import torchvision
from torch import Tensor, nn

from mtlue_cli.config import ARCHS, CLASSIFIER_STEMS
from mtlue_cli.data.kinds import kinds_of

SHARED_FEATURES = 256  # §6.1
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def _kaiming_conv(conv: nn.Conv2d, mode: str = "fan_out") -> nn.Conv2d:
    # A replaced first conv must match the init of the rest of the trunk (§14.2).
    nn.init.kaiming_normal_(conv.weight, mode=mode, nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def _resnet(arch: str, in_channels: int, stem: str) -> tuple[nn.Module, int]:
    trunk = getattr(torchvision.models, arch)(weights=None)
    if stem == "cifar":
        trunk.conv1 = _kaiming_conv(nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False))
        trunk.maxpool = nn.Identity()
    elif in_channels != 3:
        trunk.conv1 = _kaiming_conv(nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False))
    features = trunk.fc.in_features
    trunk.fc = nn.Identity()
    return trunk, features


def _vgg16(in_channels: int) -> tuple[nn.Module, int]:
    # Only VGG-16-BN's conv stack + global average pooling (§6.1); building torchvision's vgg16_bn
    # would allocate and initialise ~120M classifier weights that are thrown away.
    layers: list[nn.Module] = []
    channels = in_channels
    for v in _VGG16:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            conv = _kaiming_conv(nn.Conv2d(channels, v, kernel_size=3, padding=1))
            layers += [conv, nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            channels = v
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten()), channels


def _densenet121(in_channels: int, stem: str) -> tuple[nn.Module, int]:
    trunk = torchvision.models.densenet121(weights=None)
    features = trunk.features
    if stem == "cifar":
        # The official DenseNet-121 victim is this CIFAR-style variant (§6.1).
        conv0 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        features.conv0 = _kaiming_conv(conv0, mode="fan_in")  # torchvision's DenseNet init
        features.pool0 = nn.Identity()
    elif in_channels != 3:
        conv0 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        features.conv0 = _kaiming_conv(conv0, mode="fan_in")
    # torchvision's features end at norm5; the ReLU before pooling is in its forward (§6.1 "BN-ReLU").
    out = trunk.classifier.in_features
    return nn.Sequential(features, nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()), out


class _ClassToken(nn.Module):
    """torchvision ViT without its head: returns the class-token output (B, 768)."""

    def __init__(self, image_size: int, in_channels: int) -> None:
        super().__init__()
        vit = torchvision.models.vit_b_16(weights=None, image_size=image_size)
        if in_channels != 3:
            conv = nn.Conv2d(in_channels, vit.hidden_dim, kernel_size=vit.patch_size, stride=vit.patch_size)
            # Same init torchvision gives its own patch projection.
            nn.init.trunc_normal_(conv.weight, std=math.sqrt(1 / (in_channels * vit.patch_size**2)))
            nn.init.zeros_(conv.bias)
            vit.conv_proj = conv
        vit.heads = nn.Identity()
        self.vit = vit

    def forward(self, x: Tensor) -> Tensor:
        return self.vit(x)  # (B, 768)


class MTLClassifier(nn.Module):
    """Shared trunk, Linear(feat -> 256) + ELU, then Linear(256 -> 1 or C_k) per task (§6.1).

    Binary tasks (C_k == 2) get a single logit, trained with BCE (§3.2).

    Args:
        num_classes: C_k for each task, in task order.
        arch: one of ARCHS.
        in_channels: 3 (RGB) or 1 (grey).
        stem: "imagenet" (7x7/2 conv + max-pool, the paper's ResNet victim) or "cifar" (3x3/1 conv,
            no max-pool); applies to resnet18/50 and densenet121; vgg16 and vit_b_16 have no stem
            to change and ignore it.
        image_size: input side; needed by vit_b_16 (a multiple of 16) for its position embedding.
    """

    def __init__(
        self,
        num_classes: list[int],
        arch: str = "resnet18",
        in_channels: int = 3,
        stem: str = "imagenet",
        image_size: int = 64,
    ) -> None:
        super().__init__()
        num_classes = [int(c) for c in num_classes]
        if not num_classes or min(num_classes) < 2:
            raise ValueError(f"num_classes needs one entry >= 2 per task, got {num_classes}")
        if arch not in ARCHS:
            raise ValueError(f"unknown arch {arch!r}: use one of {', '.join(ARCHS)}")
        if stem not in CLASSIFIER_STEMS:
            raise ValueError(f"unknown stem {stem!r}: use one of {', '.join(CLASSIFIER_STEMS)}")
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 (grey) or 3 (RGB), got {in_channels}")
        if arch == "vit_b_16" and (image_size < 16 or image_size % 16):
            raise ValueError(f"vit_b_16 needs image_size to be a multiple of its 16-px patch, got {image_size}")
        self.num_classes = num_classes
        self.arch = arch
        self.in_channels = in_channels
        self.stem = stem
        self.image_size = image_size

        trunk: nn.Module
        if arch in ("resnet18", "resnet50"):
            trunk, features = _resnet(arch, in_channels, stem)
        elif arch == "vgg16":
            trunk, features = _vgg16(in_channels)
        elif arch == "densenet121":
            trunk, features = _densenet121(in_channels, stem)
        else:
            trunk, features = _ClassToken(image_size, in_channels), 768
        self.trunk = trunk
        self.shared = nn.Sequential(nn.Linear(features, SHARED_FEATURES), nn.ELU())
        self.heads = nn.ModuleList(nn.Linear(SHARED_FEATURES, kind.outputs) for kind in kinds_of(num_classes))

    def features(self, x: Tensor) -> Tensor:
        """Shared representation (B, 256) that all heads read."""
        return self.shared(self.trunk(x))  # (B, 256)

    def forward(self, x: Tensor) -> list[Tensor]:
        """One logits tensor per task: (B, 1) for binary tasks, (B, C_k) otherwise."""
        h = self.features(x)  # (B, 256)
        return [head(h) for head in self.heads]


Targets = Union[Tensor, Sequence[Tensor]]  # (B, K) class indices, or one target per task (data.kinds' conventions)


def column(targets: Targets, k: int) -> Tensor:
    """Task k's targets: a column of a (B, K) class-index tensor, or the k-th of a per-task list (label maps)."""
    return targets[:, k] if isinstance(targets, Tensor) else targets[k]


def _check(logits: list[Tensor], targets: Targets, tasks: Sequence[Any]) -> None:
    if len(logits) != len(tasks):
        raise ValueError(f"got logits for {len(logits)} tasks but num_classes for {len(tasks)}")
    if isinstance(targets, Tensor):
        if targets.dim() != 2 or targets.shape[1] != len(tasks):
            raise ValueError(f"targets must have shape (B, {len(tasks)}), got {tuple(targets.shape)}")
    elif len(targets) != len(tasks):
        raise ValueError(f"got targets for {len(targets)} tasks but num_classes for {len(tasks)}")


def task_losses(logits: list[Tensor], targets: Targets, num_classes: Sequence[Any]) -> Tensor:
    """Batch-mean loss per task (K,), each by its kind (BCE on the single logit of a binary task, CE otherwise,
    the label-map kinds' masked losses).

    targets: (B, K) class indices, or one target per task; num_classes: class counts or kinds. Per-task weighting
    is the caller's business.
    """
    _check(logits, targets, num_classes)
    kinds = kinds_of(num_classes)
    return torch.stack([kind.loss(z, column(targets, k)) for k, (z, kind) in enumerate(zip(logits, kinds))])  # (K,)


def predict(logits: list[Tensor], num_classes: Sequence[Any]) -> Targets:
    """Predictions per task: (B, K) class indices when every task is a classification one (logit > 0 for binary
    tasks, §6.4, argmax otherwise), else one prediction per task (data.kinds' conventions)."""
    if len(logits) != len(num_classes):
        raise ValueError(f"got logits for {len(logits)} tasks but num_classes for {len(num_classes)}")
    kinds = kinds_of(num_classes)
    columns = [kind.predict(z) for z, kind in zip(logits, kinds)]
    return columns if any(kind.dense for kind in kinds) else torch.stack(columns, dim=1)  # (B, K)
