"""Image Shortcut Squeezing defences (method-spec §6.6, ecosystem §2.10): applied to the victim's
training images before it sees them. Adversarial training lives in engine.pgd_attack."""

from __future__ import annotations

import re
from typing import Callable

import torch

from mtlue_cli.errors import ConfigError

Defense = Callable[[torch.Tensor], torch.Tensor]  # uint8 (N,C,H,W) -> uint8 (N,C,H,W)
NAMES_HELP = "none, grayscale, jpegQ (e.g. jpeg10), bdrB (e.g. bdr2)"


def grayscale(images: torch.Tensor) -> torch.Tensor:
    from torchvision.transforms.v2 import functional as F

    return F.rgb_to_grayscale(images, num_output_channels=3)


def jpeg(quality: int) -> Defense:
    def apply(images: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as F

        return torch.stack([F.jpeg(img, quality) for img in images])

    return apply


def bit_depth(bits: int) -> Defense:
    """x <- floor(2^b x) / 2^b on [0,1] (the official --bdr with b = 2)."""

    def apply(images: torch.Tensor) -> torch.Tensor:
        levels = 2**bits
        x = images.float() / 255
        return (torch.floor(x * levels).clamp(max=levels) / levels * 255).round().to(torch.uint8)

    return apply


def parse_defense(name: str) -> Defense | None:
    """'none' -> None; otherwise the transform. Unknown names are a usage error."""
    name = name.strip().lower()
    if name == "none":
        return None
    if name == "grayscale":
        return grayscale
    if m := re.fullmatch(r"jpeg(\d{1,3})", name):
        q = int(m.group(1))
        if 1 <= q <= 100:
            return jpeg(q)
    if m := re.fullmatch(r"bdr([1-7])", name):
        return bit_depth(int(m.group(1)))
    raise ConfigError(f"unknown defence {name!r}; use {NAMES_HELP}")
