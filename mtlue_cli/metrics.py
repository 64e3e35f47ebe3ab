"""Image-quality measures of written files: measured L-inf, PSNR and SSIM (on 0-255 arrays)."""

from __future__ import annotations

import math

import numpy as np


def linf(a: np.ndarray, b: np.ndarray) -> int:
    """Largest absolute pixel difference in 1/255 units."""
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max(initial=0))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03) on luma."""
    import torch
    import torch.nn.functional as F

    def luma(x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(x.astype(np.float32))
        if t.ndim == 3:
            t = t[..., 0] * 0.299 + t[..., 1] * 0.587 + t[..., 2] * 0.114
        return t[None, None]  # (1,1,H,W)

    x, y = luma(a), luma(b)
    size = min(11, x.shape[-1], x.shape[-2])
    if size < 3:
        return 1.0 if np.array_equal(a, b) else float("nan")
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * 1.5**2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :])[None, None]

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())


def roc_auc(scores: "torch.Tensor", positive: "torch.Tensor") -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); nan without both classes."""
    import torch

    scores, positive = scores.double().flatten(), positive.bool().flatten()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = torch.argsort(scores)
    sorted_scores = scores[order]
    ranks = torch.empty_like(scores)
    _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    average = ends - (counts.double() - 1) / 2  # 1-based average rank of each tie group
    ranks[order] = average[inverse]
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
