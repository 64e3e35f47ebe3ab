"""Orthogonal projection (Sandoval-Segura et al., NeurIPS 2023; ecosystem §2.11): the informed attacker's
answer to a class-wise, linearly separable shortcut. Fit a bias-free linear classifier on the flattened
training images, take an orthonormal basis Q of its (normalised) class rows and remove that subspace from
every image, x <- x - Q Q^T x, before training the victim. For several tasks, one classifier per task and
all their rows stacked (the label-conditioned MTL-UE embeddings make this the most pointed test).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

EPOCHS, LR, BATCH = 20, 0.1, 1024  # the paper's linear model: SGD 0.1, batch 1024, 20 epochs, drops at 50%/75%
CHUNK = 1024  # images converted to float at a time (bounded memory on large sets)


@dataclass
class Projection:
    """x <- x - Q Q^T (x - mean) on flattened [0, 1] images, then an affine map back into [0, 1].

    Projecting x - mean instead of x only adds the same image Q Q^T mean to every picture (harmless to a
    classifier) and keeps the result near the pixel range; the affine map, fitted on the training images,
    puts any excursion back in range without clipping, and the same map serves the test images."""

    basis: torch.Tensor  # (D, R) orthonormal columns
    mean: torch.Tensor  # (D,) training mean image
    lo: float = 0.0
    hi: float = 1.0

    def project(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B,C,H,W) -> the projected float images (B,C,H,W), before the range map."""
        return self.project_float(images.float() / 255)

    def project_float(self, x: torch.Tensor) -> torch.Tensor:
        """Float images in [0, 1] (B,C,H,W) -> projected (B,C,H,W), before the range map. Linear in x, so the
        generator's loop trains through it with the true gradient (robust.py's `op` squeeze)."""
        flat = x.flatten(1)  # (B, D)
        basis, mean = self.basis.to(x), self.mean.to(x)
        return (flat - ((flat - mean) @ basis) @ basis.T).view(x.shape)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """What the attacker's victim trains on, in float and differentiable: projected, range-mapped, in [0, 1]
        (B,C,H,W). `__call__` is this, quantised to uint8."""
        return ((self.project_float(x) - self.lo) / (self.hi - self.lo)).clamp(0, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N,C,H,W) -> uint8 (N,C,H,W), CHUNK images at a time (bounded memory). Re-quantised so the
        victim pipeline (crops, flips, every other defence) takes the projected images as it takes any
        others: rounding moves a pixel by at most half a grey level of the range map, unrelated to the labels."""
        out = torch.empty_like(images)
        for i in range(0, len(images), CHUNK):
            y = (self.project(images[i : i + CHUNK]) - self.lo) / (self.hi - self.lo)
            out[i : i + CHUNK] = (y.clamp(0, 1) * 255).round().to(torch.uint8)
        return out


def fit_projection(images: torch.Tensor, labels: torch.Tensor, num_classes: list[int], seed: int = 0,
                   epochs: int = EPOCHS) -> Projection:
    """The projection an attacker fits on its training set: uint8 images (N,C,H,W), labels (N,K)."""
    gen = torch.Generator().manual_seed(seed)
    n = len(images)
    d = images[0].numel()
    # Zero start: the weights stay in the span of the images, so the basis holds no random direction.
    weight = torch.zeros(sum(num_classes), d, requires_grad=True)
    opt = torch.optim.SGD([weight], lr=LR)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [int(epochs * 0.5), int(epochs * 0.75)])
    starts = torch.tensor([0, *num_classes]).cumsum(0).tolist()
    for _ in range(epochs):
        for idx in torch.randperm(n, generator=gen).split(BATCH):
            x = images[idx].flatten(1).float() / 255  # (B, D)
            logits = x @ weight.T  # (B, sum C_k)
            # One softmax classifier per task; summing their losses keeps their updates independent.
            loss = sum(F.cross_entropy(logits[:, a:b], labels[idx, k]) for k, (a, b) in enumerate(zip(starts, starts[1:])))
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    rows = weight.detach()
    rows = rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)
    # An orthonormal basis of the rows' span: the paper's QR, but by SVD with a rank cut, since a softmax
    # classifier's rows sum to zero from a zero start and QR would turn that dependency into a stray direction.
    u, s, _ = torch.linalg.svd(rows.T, full_matrices=False)  # rows.T: (D, sum C_k)
    basis = u[:, s > s.max() * 1e-4]  # (D, R)
    mean = torch.zeros(d)
    for i in range(0, n, CHUNK):
        mean += images[i : i + CHUNK].flatten(1).float().sum(0) / 255
    proj = Projection(basis, mean / max(n, 1))
    lo, hi = 0.0, 1.0
    for i in range(0, n, CHUNK):
        y = proj.project(images[i : i + CHUNK])
        lo, hi = min(lo, float(y.min())), max(hi, float(y.max()))
    proj.lo, proj.hi = lo, hi
    return proj
