"""UEraser-lite (Qin et al., lafeat/ueraser; ecosystem §2.11): heavy augmentation in the victim's training
loop, one augmented copy per batch. Training-time only: the victim is tested on the clean images as they are.

UEraser builds its pipeline from kornia (RandomPlasmaBrightness, RandomPlasmaContrast, RandomChannelShuffle,
then TrivialAugment). Here the plasma fields are a few lines of torch (octaves of upsampled random fields,
the diamond-square spectrum) and TrivialAugmentWide is torchvision's, so no new dependency.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

P = 0.5  # each of the three colour augmentations is applied to half the images (UEraser's p)
ROUGHNESS = (0.3, 0.7)
INTENSITY = (0.5, 1.0)  # plasma brightness


def plasma(shape: tuple[int, int, int, int], roughness: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """Fractal noise in [0, 1] per image and channel (B,C,H,W): octave i of side 2^(i+1) weighs roughness^i,
    so a rough field (0.7) keeps fine blotches and a smooth one (0.3) is mostly broad shading."""
    b, c, h, w = shape
    field = torch.zeros(shape, device=device)
    side, weight = 2, torch.ones(b, 1, 1, 1, device=device)
    while side <= 2 * max(h, w):
        noise = torch.randn(b, c, side, side, device=device)
        field += weight * F.interpolate(noise, size=(h, w), mode="bilinear", align_corners=False)
        side, weight = side * 2, weight * roughness.view(-1, 1, 1, 1).to(device)
    lo = field.amin(dim=(2, 3), keepdim=True)
    hi = field.amax(dim=(2, 3), keepdim=True)
    return (field - lo) / (hi - lo).clamp_min(1e-8)


def _uniform(n: int, bounds: tuple[float, float], device: torch.device) -> torch.Tensor:
    return torch.empty(n, device=device).uniform_(*bounds)


def ueraser_lite(x: torch.Tensor) -> torch.Tensor:
    """One UEraser augmentation of a float batch in [0, 1] (B,C,H,W): plasma brightness, plasma contrast and
    a channel shuffle (each with probability 1/2 per image), then TrivialAugmentWide per image. Draws from
    torch's global generator, which verify seeds per victim."""
    from torchvision.transforms import v2

    out = colour_stage(x)
    trivial = v2.TrivialAugmentWide()
    # Per image: applied to a batch, torchvision draws one operation for the whole batch.
    return torch.stack([trivial(img) for img in out]).clamp_(0, 1)


def colour_stage(x: torch.Tensor) -> torch.Tensor:
    """UEraser's colour augmentations of a float batch in [0, 1] (B,C,H,W), each with probability 1/2 per image:
    plasma brightness, plasma contrast, channel shuffle. Differentiable in x (the generator's loop trains
    through it: robust.py); draws from torch's global generator."""
    b, c, _, _ = x.shape
    dev = x.device
    out = x
    pick = torch.rand(3, b, device=dev) < P
    if pick[0].any():  # kornia RandomPlasmaBrightness: x + intensity * (2 * plasma - 1)
        field = 2 * plasma(x.shape, _uniform(b, ROUGHNESS, dev), dev) - 1
        shift = field * _uniform(b, INTENSITY, dev).view(-1, 1, 1, 1)
        out = torch.where(pick[0].view(-1, 1, 1, 1), (out + shift).clamp(0, 1), out)
    if pick[1].any():  # kornia RandomPlasmaContrast: (x - 0.5) * 4 * plasma + 0.5
        gain = 4 * plasma(x.shape, _uniform(b, ROUGHNESS, dev), dev)
        out = torch.where(pick[1].view(-1, 1, 1, 1), ((out - 0.5) * gain + 0.5).clamp(0, 1), out)
    if pick[2].any() and c > 1:
        order = torch.argsort(torch.rand(b, c, device=dev), dim=1)  # (B,C) a permutation per image
        shuffled = torch.gather(out, 1, order.view(b, c, 1, 1).expand_as(out))
        out = torch.where(pick[2].view(-1, 1, 1, 1), shuffled, out)
    return out
