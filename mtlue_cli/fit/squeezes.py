"""The attacker's cheap squeezes as a layer of the generator's training loop (expectation over
transformation, EOT).

ISS (method-spec §6.6; ecosystem §2.10) removes much of a perturbation that was only ever trained on
raw pixels: grayscale averages away independent per-channel signs, JPEG-10 and 2-bit depth remove
small high-frequency patterns. Our default recipe therefore shows the surrogate a squeezed x+δ on
every batch: one squeeze drawn at random, applied for real in the forward pass, with the true
gradient where the squeeze is differentiable (grayscale, resize-blur) and a straight-through
gradient (BPDA, Athalye et al. 2018) where it is not (JPEG, bit depth). This is a deviation from the
paper (§4.1 trains on raw x+δ only); `--no-robust` turns it off and the `paper-*` recipes leave it off.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

JPEG_QUALITIES = (10, 60)  # drawn uniformly per batch
BIT_DEPTHS = (2, 3, 4)
BLUR_SCALES = (0.35, 0.75)  # down-up resize factor range


def straight_through(x: torch.Tensor, squeezed: torch.Tensor) -> torch.Tensor:
    """The squeezed values in the forward pass, the identity's gradient in the backward pass (BPDA)."""
    return x + (squeezed - x).detach()


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma replicated over 3 channels; differentiable (a channel average). (B,3,H,W) -> (B,3,H,W).
    The same torchvision function as the victim-time defence, on float pixels."""
    from torchvision.transforms.v2 import functional as TF

    return TF.rgb_to_grayscale(x, num_output_channels=3)


def jpeg_uint8(images: torch.Tensor, quality: int) -> torch.Tensor:
    """Real JPEG encode + decode at `quality` (torchvision, CPU); uint8 (N,C,H,W) -> uint8 (N,C,H,W).
    The victim-time defence (verify.defenses) applies the same function."""
    from torchvision.transforms.v2 import functional as TF

    return torch.stack([TF.jpeg(img, quality) for img in images])


def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Real JPEG at `quality` (via torchvision, on the CPU), straight-through gradient."""
    as_uint8 = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    decoded = jpeg_uint8(as_uint8, quality).to(x.device, x.dtype) / 255
    return straight_through(x, decoded)


def bit_depth(x: torch.Tensor, bits: int) -> torch.Tensor:
    """floor(2^b x) / 2^b as the victim-time defence does, straight-through gradient."""
    levels = 2**bits
    return straight_through(x, torch.floor(x * levels).clamp(max=levels) / levels)


def resize_blur(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Downsample by `scale` with antialiasing and back up: a blur with the true gradient."""
    h, w = x.shape[-2:]
    small = (max(2, round(h * scale)), max(2, round(w * scale)))
    down = F.interpolate(x, size=small, mode="bilinear", align_corners=False, antialias=True)
    return F.interpolate(down, size=(h, w), mode="bilinear", align_corners=False)


def random_squeeze(names: tuple[str, ...], gen: torch.Generator,
                   projection: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   ) -> tuple[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Draw one of `names` (config.SQUEEZES and EXTRA_SQUEEZES, checked by FitConfig) and its strength for a batch;
    returns its label and the function. `projection`: the `op` squeeze's current projection (None: identity)."""
    if not names:
        return "identity", lambda x: x
    name = names[int(torch.randint(len(names), (1,), generator=gen))]
    if name == "op":
        # Orthogonal projection in the loop (issue 29, not in the default mix): the attacker's per-task linear
        # classifiers, refitted on x+δ after each generator epoch (fit.py), their span projected out with the true
        # gradient (a linear map). Before the first refit there is none yet: the batch goes through unsqueezed.
        return ("op", projection) if projection is not None else ("identity", lambda x: x)
    if name == "grayscale":
        return name, grayscale
    if name == "jpeg":
        q = int(torch.randint(JPEG_QUALITIES[0], JPEG_QUALITIES[1] + 1, (1,), generator=gen))
        return f"jpeg{q}", lambda x: jpeg(x, q)
    if name == "bits":
        b = BIT_DEPTHS[int(torch.randint(len(BIT_DEPTHS), (1,), generator=gen))]
        return f"bdr{b}", lambda x: bit_depth(x, b)
    if name == "ueraser":
        # UEraser-lite's colour stage (issue 29, not in the default mix): plasma brightness and contrast and a
        # channel shuffle, with their true gradient. Its TrivialAugment stage stays out of the loop: its geometric
        # operations are the crop/flip family the fit already augments with, and Sharpness, AutoContrast and
        # Equalize pass no gradient. Draws from torch's global generator (seeded by the fit).
        from mtlue_cli.fit.ueraser import colour_stage

        return name, colour_stage
    if name == "blur":
        lo, hi = BLUR_SCALES
        s = lo + (hi - lo) * float(torch.rand((), generator=gen))
        return f"blur{s:.2f}", lambda x: resize_blur(x, s)
    return "identity", lambda x: x
