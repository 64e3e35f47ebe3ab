"""What the generator may do to its decoder's output before the ε bound, against the informed attacker (issue 29;
deviations from method-spec §2.3, off by default): move each image's δ by an amount drawn from its own pixels
(`decorrelate`), so the class signal cannot be one class-wise template that orthogonal projection removes."""

from __future__ import annotations

import torch
from torch import Tensor


def decorrelate(out: Tensor, x: Tensor, zero_mean: bool = False) -> Tensor:
    """Deviation from §2.3 (option decorrelate, issue 29): circularly shift each image's decoder output by its own
    (dy, dx), and flip it horizontally for half the images, before the bound. The surrogate sees δ so moved, so
    the class signal the generator learns has to survive any placement (a texture, not a class-wise template), and
    the class mean of the released δ is spread over every position: less of it lies in the span of a per-class
    linear classifier, which orthogonal projection removes. With `zero_mean`, each channel's spatial mean is
    removed first, so no class-wise colour offset (the one template a shift leaves in place) survives either.

    The amounts come from the image's own pixels (`image_code`), not a random generator: one image gets the same
    placement in every batch, in `fit` and in `protect`, and protect stays deterministic and batch-independent.
    The generator cannot predict them from what it is given. (B,C,H,W), x (B,C',H,W) -> (B,C,H,W)."""
    b, c, h, w = out.shape
    if zero_mean:
        out = out - out.mean(dim=(2, 3), keepdim=True)
    code = image_code(x)  # (B,)
    dy, dx, flip = code % h, (code // h) % w, (code // (h * w)) % 2 == 1
    rows = (torch.arange(h, device=out.device) - dy[:, None]) % h  # (B, H): output row i reads row i - dy
    cols = (torch.arange(w, device=out.device) - dx[:, None]) % w  # (B, W)
    cols = torch.where(flip[:, None], w - 1 - cols, cols)
    out = out.gather(2, rows.view(b, 1, h, 1).expand(b, c, h, w))
    return out.gather(3, cols.view(b, 1, 1, w).expand(b, c, h, w))


def image_code(x: Tensor) -> Tensor:
    """A pseudo-random integer per image (B,) in [0, 2^31 - 1) from its 8-bit pixels: a fixed weighted sum, mod a prime."""
    q = (x.detach().clamp(0, 1) * 255).round().to(torch.int64).flatten(1)  # (B, D)
    prime = 2**31 - 1
    weights = (torch.arange(1, q.shape[1] + 1, device=x.device, dtype=torch.int64) * 2654435761) % prime  # (D,)
    code = (q * weights).sum(1) % prime  # < 255 * 2^31 * D: no int64 overflow below D = 1.6e7
    return (code * 48271) % prime  # one Lehmer step: neighbouring sums land far apart
