"""Image Shortcut Squeezing and filtering defences (method-spec §6.6, ecosystem §2.10-2.12): applied to
the victim's training images before it sees them, and to its test images too where the defence is a
preprocessing the attacker's deployed model would also apply (grayscale, blur, median, down-up
resize; ISS applies JPEG and bit depth to training images only). Adversarial training lives in
engine.pgd_attack."""

from __future__ import annotations

import re
from typing import Callable

import torch

from mtlue_cli.errors import ConfigError

Defense = Callable[[torch.Tensor], torch.Tensor]  # uint8 (N,C,H,W) -> uint8 (N,C,H,W)
NAMES_HELP = ("none, grayscale, jpegQ (e.g. jpeg10), bdrB (e.g. bdr2), blurS (Gaussian, sigma S px, e.g. blur1), "
              "medianK (K x K median, e.g. median3), resizeF (down by F and back up, e.g. resize2)")


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


def gaussian_blur(sigma: float) -> Defense:
    def apply(images: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as F

        kernel = 2 * max(1, round(2 * sigma)) + 1  # +-2 sigma
        return F.gaussian_blur(images, [kernel, kernel], [sigma, sigma])

    return apply


def median(k: int) -> Defense:
    """K x K median filter per channel, edges replicated."""

    def apply(images: torch.Tensor) -> torch.Tensor:
        pad = k // 2
        out = torch.empty_like(images)
        for i in range(0, len(images), 256):  # bounded memory: K*K copies of a chunk
            x = torch.nn.functional.pad(images[i : i + 256].float(), (pad, pad, pad, pad), mode="replicate")
            patches = x.unfold(2, k, 1).unfold(3, k, 1)  # (N, C, H, W, k, k)
            out[i : i + 256] = patches.reshape(*patches.shape[:4], -1).median(dim=-1).values.to(images.dtype)
        return out

    return apply


def down_up(factor: int) -> Defense:
    """Resize down by `factor` (antialiased) and back up (bilinear): removes the finest detail."""

    def apply(images: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as F

        h, w = images.shape[-2:]
        small = F.resize(images, [max(1, h // factor), max(1, w // factor)], antialias=True)
        return F.resize(small, [h, w], antialias=True)

    return apply


def applies_at_test(name: str) -> bool:
    """Whether the attacker's deployed model applies this defence to its inputs too (ecosystem §2.11)."""
    name = name.strip().lower()
    return name == "grayscale" or name.startswith(("blur", "median", "resize"))


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
    if (m := re.fullmatch(r"blur(\d+(?:\.\d+)?)", name)) and 0 < float(m.group(1)) <= 8:
        return gaussian_blur(float(m.group(1)))
    if (m := re.fullmatch(r"median([3579])", name)):
        return median(int(m.group(1)))
    if (m := re.fullmatch(r"resize([2-8])", name)):
        return down_up(int(m.group(1)))
    raise ConfigError(f"unknown defence {name!r}; use {NAMES_HELP}")
