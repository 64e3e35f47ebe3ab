"""Image Shortcut Squeezing and filtering defences (method-spec §6.6, ecosystem §2.10-2.12): applied to
the victim's training images before it sees them, and to its test images too where the defence is a
preprocessing the attacker's deployed model would also apply (grayscale, blur, median, down-up
resize; ISS applies JPEG and bit depth to training images only). Two informed-attacker defences need
more than the pixels and are applied through `prepare`: orthogonal projection (projection.py, fitted
on the training images and labels) and UEraser-lite (ueraser.py, in the training loop). Adversarial
training lives in engine.pgd_attack."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch

from mtlue_cli.errors import ConfigError
from mtlue_cli.fit.squeezes import jpeg_uint8

Defense = Callable[[torch.Tensor], torch.Tensor]  # uint8 (N,C,H,W) -> uint8 (N,C,H,W)
NAMES_HELP = ("none, grayscale, jpegQ (e.g. jpeg10), bdrB (e.g. bdr2), blurS (Gaussian, sigma S px, e.g. blur1), "
              "medianK (K x K median, e.g. median3), resizeF (down by F and back up, e.g. resize2), "
              "op (orthogonal projection), ueraser-lite, or all")
ADAPTIVE = ("op", "ueraser-lite")  # need the labels or the training loop: applied by `prepare`
ALL = ("none", "grayscale", "jpeg10", "bdr2", "blur1", "median3", "resize2", *ADAPTIVE)  # --defense all


def grayscale(images: torch.Tensor) -> torch.Tensor:
    from torchvision.transforms.v2 import functional as F

    return F.rgb_to_grayscale(images, num_output_channels=3)


def jpeg(quality: int) -> Defense:
    return lambda images: jpeg_uint8(images, quality)


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
    return name in ("grayscale", "op") or name.startswith(("blur", "median", "resize"))


def parse_defense(name: str) -> Defense | None:
    """'none' -> None; otherwise the transform. Unknown names are a usage error."""
    name = name.strip().lower()
    if name == "none":
        return None
    if name in ADAPTIVE:
        raise ConfigError(f"defence {name!r} needs the labels or the training loop: apply it with defenses.prepare")
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


def expand_defenses(names: tuple[str, ...] | list[str]) -> list[str]:
    """The defences a verify run trains victims for: 'all' expanded, duplicates dropped, 'none' first, every
    name checked (an unknown one is a usage error before any victim trains)."""
    out: list[str] = []
    for name in (n.strip().lower() for n in names):
        for one in ALL if name == "all" else (name,):
            if one not in ADAPTIVE:
                parse_defense(one)
            if one not in out:
                out.append(one)
    return ["none", *(d for d in out if d != "none")]


@dataclass
class Prepared:
    """What a victim trained under one defence sees."""

    images: torch.Tensor  # its training images, uint8 (N,C,H,W)
    test_images: torch.Tensor | None  # its test images where the defence is a deployed preprocessing; None: as they are
    batch_transform: Callable[[torch.Tensor], torch.Tensor] | None  # per training batch, float [0,1] (B,C,H,W)


def prepare(name: str, images: torch.Tensor, labels: torch.Tensor, num_classes: list[int], test_images: torch.Tensor,
            seed: int = 0) -> Prepared:
    """Apply defence `name` the way the attacker would: to the training set (with its labels, for the
    projection), to the test images where the deployed model would apply it too, or in the training loop."""
    name = name.strip().lower()
    if name == "op":
        from mtlue_cli.fit.projection import fit_projection

        projection = fit_projection(images, labels, num_classes, seed)
        return Prepared(projection(images), projection(test_images), None)
    if name == "ueraser-lite":
        from mtlue_cli.fit.ueraser import ueraser_lite

        return Prepared(images, None, ueraser_lite)
    transform = parse_defense(name)
    if transform is None:
        return Prepared(images, None, None)
    return Prepared(transform(images), transform(test_images) if applies_at_test(name) else None, None)
