"""Measures: image quality of written files (L-inf, PSNR, SSIM on 0-255 arrays) and ROC-AUC (a task kind picks its score)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def linf(a: np.ndarray, b: np.ndarray) -> int:
    """Largest absolute pixel difference in 1/255 units."""
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max(initial=0))


def squared_error(a: np.ndarray, b: np.ndarray) -> float:
    """Sum of squared pixel differences (the numerator of the MSE) of uint8 pixels, exact. Integer arithmetic, not
    BLAS: OpenBLAS's threads spin after each call, on the cores protect's workers need (they cost it 40% of its CPU)."""
    d = a.astype(np.int32) - b.astype(np.int32)
    return float(np.square(d).sum(dtype=np.int64))


def psnr_of(mse: float) -> float:
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return psnr_of(squared_error(a, b) / max(a.size, 1))


SSIM_WINDOW, SSIM_SIGMA = 11, 1.5
SSIM_BAND = 128  # rows of SSIM map per pass: the float buffers stay a few MB whatever the image size


def ssim_window(height: int, width: int) -> int:
    """Side of the Gaussian window: 11, or the image's shorter side if smaller."""
    return min(SSIM_WINDOW, height, width)


def _gaussian(window: int) -> np.ndarray:
    coords = np.arange(window, dtype=np.float32) - np.float32((window - 1) / 2)
    g = np.exp(-(coords**2) / np.float32(2 * SSIM_SIGMA**2))
    return g / g.sum()


def _luma(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    return x[..., 0] * np.float32(0.299) + x[..., 1] * np.float32(0.587) + x[..., 2] * np.float32(0.114) if x.ndim == 3 else x


def _correlate(maps: np.ndarray, g: np.ndarray, axis: int) -> np.ndarray:
    """`maps` correlated with the 1-D window `g` along `axis`, at the positions where it fits ('valid')."""
    n = maps.shape[axis] - len(g) + 1

    def shifted(i: int) -> np.ndarray:  # a view, not a copy
        index = [slice(None)] * maps.ndim
        index[axis] = slice(i, i + n)
        return maps[tuple(index)]

    out = shifted(0) * g[0]
    tmp = np.empty_like(out)
    for i in range(1, len(g)):
        out += np.multiply(shifted(i), g[i], out=tmp)
    return out


def ssim_sum(a: np.ndarray, b: np.ndarray, window: int) -> tuple[float, int]:
    """Sum and count of the SSIM map (Wang et al. 2004: Gaussian window, K1 0.01, K2 0.03, on luma) over
    the positions where a `window`-sized window fits in these rows. The Gaussian is separable: two 1-D
    passes over the five local moments at once cost 2x11 taps a pixel instead of 121."""
    x, y = _luma(a), _luma(b)  # (h,w) float32
    # Moments about the mean of these rows: the (co)variances are unchanged, and float32 no longer loses them to
    # cancellation in E[x^2] - E[x]^2 (about zero, a flat 200-vs-90 pair measured 1.4e-4 off).
    sx, sy = x.mean(dtype=np.float64).astype(np.float32), y.mean(dtype=np.float64).astype(np.float32)
    x, y = x - sx, y - sy
    g = _gaussian(window)
    moments = np.stack([x, y, x * x, y * y, x * y])  # (5,h,w)
    mx, my, xx, yy, xy = _correlate(_correlate(moments, g, 2), g, 1)  # each (h-window+1, w-window+1)
    vx, vy, cxy = xx - mx * mx, yy - my * my, xy - mx * my
    mx, my = mx + sx, my + sy
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s.sum(dtype=np.float64)), s.size


def ssim(a: np.ndarray, b: np.ndarray, band: int = SSIM_BAND) -> float:
    """Mean SSIM of two images (h,w[,3]), computed in bands of `band` map rows (bounded memory)."""
    height, width = a.shape[:2]
    window = ssim_window(height, width)
    if window < 3:
        return 1.0 if np.array_equal(a, b) else float("nan")
    total, count = 0.0, 0
    for start in range(0, height - window + 1, band):
        stop = min(height, start + band + window - 1)  # the rows a band of map rows reads
        s, n = ssim_sum(a[start:stop], b[start:stop], window)
        total, count = total + s, count + n
    return total / count


def roc_auc(scores: torch.Tensor, positive: torch.Tensor) -> float:
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


# ----------------------------------------------------------------------------- dense tasks (LibMTL's definitions)
# ecosystem §2.13: mIoU from ONE confusion matrix over the whole test set (mtan's per-image mean gives other numbers),
# depth errors and normal angles over the valid pixels of the whole set. Targets follow data.dense_kinds' conventions.

ANGLE_THRESHOLDS = (11.25, 22.5, 30.0)  # degrees: the shares of normals "within" each (LibMTL, strict <)


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, classes: int) -> torch.Tensor:
    """(C, C) int64 pixel counts, rows the true class, columns the predicted one; pixels whose target is outside
    [0, C) (ignored: -1) are left out."""
    import torch

    t, p = target.reshape(-1).long(), pred.reshape(-1).long()
    keep = (t >= 0) & (t < classes)
    cells = torch.bincount(t[keep] * classes + p[keep].clamp(0, classes - 1), minlength=classes * classes)
    return cells.view(classes, classes).cpu()


def segmentation_scores(confusion: torch.Tensor) -> dict[str, float]:
    """mIoU and pixel accuracy of a confusion matrix. IoU_c = TP / (TP + FP + FN); classes that neither occur nor are
    predicted are left out of the mean (LibMTL's plain mean would be nan); nan without any scored pixel."""
    import torch

    h = confusion.double()
    tp = torch.diag(h)
    union = h.sum(0) + h.sum(1) - tp
    iou = tp[union > 0] / union[union > 0]
    total = h.sum()
    return {"miou": float(iou.mean()) if len(iou) else math.nan,
            "pixel_accuracy": float(tp.sum() / total) if total > 0 else math.nan}


def angular_errors(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Degrees between predicted and true normals (B, 3, S, S) at the valid pixels (target not the zero vector);
    the prediction is normalised first."""
    import torch
    import torch.nn.functional as F

    valid = target.abs().sum(1) > 0  # (B,S,S)
    cos = (F.normalize(pred.double(), dim=1) * target.double()).sum(1)
    return torch.rad2deg(torch.acos(cos[valid].clamp(-1, 1)))  # (n_valid,)


def angle_scores(errors: torch.Tensor) -> dict[str, float]:
    """Mean and median angular error and the share of pixels within each of ANGLE_THRESHOLDS (nan without pixels)."""
    if errors.numel() == 0:
        nan = math.nan
        return {"mean_angle": nan, "median_angle": nan, **{f"within_{t:g}": nan for t in ANGLE_THRESHOLDS}}
    e = errors.double().cpu().numpy()
    return {"mean_angle": float(e.mean()), "median_angle": float(np.median(e)),  # np.median: the mean of the middles
            **{f"within_{t:g}": float((e < t).mean()) for t in ANGLE_THRESHOLDS}}


DELTA1 = 1.25  # depth "accuracy": the share of valid pixels with max(d / d*, d* / d) < 1.25 (Eigen et al. 2014)


def within_delta1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Whether each predicted depth is within DELTA1 of its (valid, > 0) target: max(d / d*, d* / d) < 1.25; a
    prediction <= 0 never is. Same shapes in and out."""
    import torch

    t = target.clamp(min=1e-12)
    return (pred > 0) & (torch.maximum(pred / t, t / pred.clamp(min=1e-12)) < DELTA1)


def depth_error_sums(pred: torch.Tensor, target: torch.Tensor) -> tuple[float, float, int, int]:
    """Sums of |d - d*| and |d - d*| / d* over the valid pixels (d* > 0), the pixels within DELTA1 and their count."""
    valid = target > 0
    d, t = pred.double()[valid], target.double()[valid]
    err = (d - t).abs()
    return float(err.sum()), float((err / t).sum()), int(within_delta1(d, t).sum()), int(valid.sum())


def protection_ratio(protected: float, clean: float, trivial: float, higher_is_better: bool) -> float | None:
    """(protected - trivial) / (clean - trivial): the share of the clean victim's lead over the trivial baseline that
    the protected-trained victim keeps (1: no protection, 0: no better than trivial, < 0: worse). The formula holds
    for errors too (all three signs flip); None when the clean victim does not beat the baseline or a value is nan."""
    lead = (clean - trivial) if higher_is_better else (trivial - clean)
    if not lead > 0 or protected != protected:
        return None
    return (protected - trivial) / (clean - trivial)


# ----------------------------------------------------------------------------- meters: a score accumulated over batches
# Every task kind's `meter()` returns one: `update(pred, target)` per batch (a kind's `predict` output and its
# targets), `result()` once, a dict whose keys the kind's `trivial` baseline shares.


class AccuracyMeter:
    """Share of correct class predictions (classification kinds)."""

    def __init__(self) -> None:
        self.correct, self.total = 0, 0

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self.correct += int((pred.reshape(-1) == target.reshape(-1).to(pred.device)).sum())
        self.total += target.numel()

    def result(self) -> dict[str, float]:
        return {"accuracy": self.correct / self.total if self.total else math.nan}


class SegmentationMeter:
    """mIoU and pixel accuracy from one confusion matrix over every batch (ignored pixels: -1)."""

    def __init__(self, classes: int) -> None:
        import torch

        self.classes, self.confusion = classes, torch.zeros(classes, classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self.confusion += confusion_matrix(pred, target.to(pred.device), self.classes)

    def result(self) -> dict[str, float]:
        return segmentation_scores(self.confusion)


class DepthMeter:
    """Absolute and relative depth error, each a mean over all valid pixels of all batches (LibMTL weights its
    per-batch means by their valid pixels, which is the same)."""

    def __init__(self) -> None:
        self.abs_sum, self.rel_sum, self.within, self.count = 0.0, 0.0, 0, 0

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        a, r, w, n = depth_error_sums(pred, target.to(pred.device))
        self.abs_sum, self.rel_sum, self.within, self.count = self.abs_sum + a, self.rel_sum + r, self.within + w, self.count + n

    def result(self) -> dict[str, float]:
        n = self.count
        return {"abs_error": self.abs_sum / n if n else math.nan, "rel_error": self.rel_sum / n if n else math.nan,
                "delta1": self.within / n if n else math.nan}


class NormalsMeter:
    """Mean and median angular error and the shares within 11.25/22.5/30 degrees over every valid pixel. Keeps the
    errors (float32, 4 bytes a valid pixel) for the exact median."""

    def __init__(self) -> None:
        self.errors: list[torch.Tensor] = []

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self.errors.append(angular_errors(pred, target.to(pred.device)).float().cpu())

    def result(self) -> dict[str, float]:
        import torch

        return angle_scores(torch.cat(self.errors) if self.errors else torch.zeros(0))


def format_score(value: float, metric: str | None = None) -> str:
    """A task's score as a card or table shows it: shares (accuracy, pixel accuracy, delta1, within-t) as
    percentages, mIoU to three places, depth errors to three significant digits, angles in degrees."""
    if metric in (None, "accuracy", "auc", "pixel_accuracy", "delta1") or str(metric).startswith("within_"):
        return f"{value:.1%}" if metric != "auc" else f"{value:.3f}"
    if metric.endswith("_angle"):
        return f"{value:.1f}°"
    return f"{value:.3f}" if metric == "miou" else f"{value:.3g}"
