"""The label-map task kinds (issue 28): `Segmentation`, `Depth`, `Normals`. Their in-memory conventions are in
data.kinds' docstring; `data.label_maps` reads files into them, these classes do everything after.

TAP/SEP targets for label maps (method-spec §8: "the paper's exact dense targets are unknown", so this is OUR
choice, an assumption): a class shift per pixel (the classification rule of §3.2), depth reflected over each
image's own valid range, normals negated. Each kind's `tap_target` switches to "untargeted" (TAP pushes away from
the true map instead: -loss), the other form §8 names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mtlue_cli.metrics import (
    ANGLE_THRESHOLDS,
    DepthMeter,
    NormalsMeter,
    SegmentationMeter,
    angular_errors,
    within_delta1,
)

if TYPE_CHECKING:
    from torch import Tensor

IGNORE = -1  # in-memory value of a segmentation pixel that no loss or score counts


def nearest(arr: np.ndarray, size: int) -> np.ndarray:
    """(..., H, W) -> (..., size, size), nearest neighbour at pixel centres (as PIL's NEAREST): labels are never
    blended, so a resized map holds only values of the original."""
    h, w = arr.shape[-2:]
    rows = np.minimum(((np.arange(size) + 0.5) * h / size).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(size) + 0.5) * w / size).astype(np.int64), w - 1)
    return arr[..., rows[:, None], cols[None, :]]


def _check_target(kind: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{kind} tap_target {value!r}: use one of {', '.join(allowed)}")


class _Dense:
    """What the three label-map kinds share: flagged dense, a TAP switch, the trivial baseline's choice."""

    dense = True
    tap_target: str

    def tap_untargeted(self, binary_mode: str) -> bool:
        """TAP pushes away from the true map (-loss) instead of towards `shifted` (the `tap_target` switch)."""
        return self.tap_target == "untargeted"

    def trivial(self, train: Tensor, test: Tensor) -> dict[str, float]:
        """The better (on `test`, by `primary`) of the global and the per-pixel no-skill predictor fitted on `train`
        (ecosystem §2.13); same keys as `meter().result()`. Ties go to the global one."""
        best: dict[str, float] | None = None
        for prediction in self.trivial_predictions(train).values():
            meter = self.meter()  # type: ignore[attr-defined]
            meter.update(prediction.expand(len(test), *prediction.shape), test)
            result = meter.result()
            if best is None:
                best = result
                continue
            score, kept = result[self.primary], best[self.primary]  # type: ignore[attr-defined]
            better = score > kept if self.higher_is_better else score < kept  # type: ignore[attr-defined]
            if kept != kept or better:  # nan never wins
                best = result
        return best or {}

    def trivial_predictions(self, train: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def flip(self, target: Tensor) -> Tensor:
        """Mirror the map left-right (joint augmentation); a kind whose values have a direction adds to it."""
        return target.flip(-1)


def _per_pixel_or_global(per_pixel: Tensor, empty: Tensor, global_value: Tensor) -> Tensor:
    """Per-pixel statistic, the global one where no training image had a valid pixel."""
    import torch

    return torch.where(empty, global_value.reshape(-1, 1, 1).to(per_pixel.dtype), per_pixel)


@dataclass(frozen=True)
class Segmentation(_Dense):
    """A class index per pixel: C logit maps, cross-entropy over the non-ignored pixels, argmax, mIoU.

    `ignore_index` is the void value in the label FILES (VOC 255); readers turn it into IGNORE (-1), the only
    void value in memory."""

    classes: int
    ignore_index: int = 255
    tap_target: str = "shift"  # shift | untargeted
    name = "segmentation"
    primary = "miou"
    agreement = "pixel_accuracy"
    higher_is_better = True

    def __post_init__(self) -> None:
        if self.classes < 1:
            raise ValueError(f"segmentation needs at least 1 class, got {self.classes}")
        _check_target(self.name, self.tap_target, ("shift", "untargeted"))

    @property
    def outputs(self) -> int:
        return self.classes

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """Mean CE over the pixels not ignored; logits (B, C, S, S), target (B, S, S). 0 (with a zero gradient, not
        nan) when every pixel is ignored."""
        import torch.nn.functional as F

        t = target.long()
        total = F.cross_entropy(logits, t, ignore_index=IGNORE, reduction="sum")
        return total / (t != IGNORE).sum().clamp(min=1)

    def predict(self, logits: Tensor) -> Tensor:
        return logits.argmax(dim=1)  # (B, S, S)

    def shifted(self, target: Tensor) -> Tensor:
        """(t + floor(C / 2)) mod C at every pixel, ignored pixels kept (§3.2's rule per pixel; §8: our choice)."""
        import torch

        t = target.long()
        return torch.where(t == IGNORE, t, (t + self.classes // 2) % self.classes).to(target.dtype)

    def resize(self, target: np.ndarray, size: int) -> np.ndarray:
        return nearest(target, size)  # (S, S)

    def meter(self) -> SegmentationMeter:
        return SegmentationMeter(self.classes)

    def agree(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """(correctly classified, scored) pixels: the parts of pixel accuracy."""
        t = target.to(pred.device).long()
        valid = (t >= 0) & (t < self.classes)
        return ((pred == t) & valid).sum().float(), valid.sum().float()

    def trivial_predictions(self, train: Tensor) -> dict[str, Tensor]:
        """The most frequent training class over all pixels ("global") and at each pixel ("per-pixel"; the global
        one where a pixel is ignored in every image). Ties go to the lower class index. Each (S, S)."""
        import torch

        t = train.long().reshape(len(train), -1)  # (N, P)
        p = t.shape[1]
        valid = (t >= 0) & (t < self.classes)
        cells = (t * p + torch.arange(p, device=t.device))[valid]
        counts = torch.bincount(cells, minlength=self.classes * p).view(self.classes, p)
        top = counts.sum(1).argmax()
        per_pixel = _per_pixel_or_global(counts.argmax(0).view(1, -1), (counts.sum(0) == 0).view(1, -1), top)
        shape = train.shape[1:]
        return {"global": top.expand(shape).clone(), "per-pixel": per_pixel.view(shape)}


@dataclass(frozen=True)
class Depth(_Dense):
    """A depth per pixel, 0 = invalid: one output map, L1 over the valid pixels, absolute and relative error."""

    tap_target: str = "reflect"  # reflect | untargeted
    name = "depth"
    primary = "abs_error"
    agreement = "delta1"
    higher_is_better = False
    outputs = 1

    def __post_init__(self) -> None:
        _check_target(self.name, self.tap_target, ("reflect", "untargeted"))

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        """Mean |d - d*| over the valid pixels (d* > 0); pred and target (B, 1, S, S). 0 when none is valid."""
        import torch

        valid = target > 0
        return _masked_mean(torch.where(valid, pred - target, torch.zeros_like(target)).abs(), valid)

    def predict(self, pred: Tensor) -> Tensor:
        return pred  # (B, 1, S, S)

    def shifted(self, target: Tensor) -> Tensor:
        """min + max - d on each image's valid pixels, over that image's own range (§8: our choice): near becomes
        far, the range is kept; invalid pixels stay 0."""
        import torch

        valid = target > 0
        inf = torch.tensor(float("inf"), dtype=target.dtype, device=target.device)
        low = torch.where(valid, target, inf).amin(dim=(1, 2, 3), keepdim=True)
        high = torch.where(valid, target, -inf).amax(dim=(1, 2, 3), keepdim=True)
        return torch.where(valid, low + high - target, torch.zeros_like(target))

    def resize(self, target: np.ndarray, size: int) -> np.ndarray:
        # The whole frame is resized, so the scene's distances stay (mtan divides depth by its random scale factor,
        # which models moving closer: not this).
        return nearest(target, size)  # (1, S, S)

    def meter(self) -> DepthMeter:
        return DepthMeter()

    def agree(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """(pixels within delta1, valid pixels): the parts of `delta1`."""
        t = target.to(pred.device).float()
        valid = t > 0
        return (valid & within_delta1(pred.float(), t)).sum().float(), valid.sum().float()

    def trivial_predictions(self, train: Tensor) -> dict[str, Tensor]:
        """The median training depth (it minimises L1) over all valid pixels and at each pixel; torch's median, the
        lower of the two middle values. Each (1, S, S)."""
        import torch

        masked = torch.where(train > 0, train.float(), torch.tensor(float("nan")))
        top = torch.nanmedian(masked.flatten())
        per_pixel = torch.nanmedian(masked, dim=0).values  # (1, S, S)
        return {"global": top.expand(train.shape[1:]).clone(),
                "per-pixel": _per_pixel_or_global(per_pixel, per_pixel.isnan(), top)}


@dataclass(frozen=True)
class Normals(_Dense):
    """A unit surface normal per pixel, the zero vector = invalid: three output maps (normalised in the loss and
    the prediction), 1 - cosine over the valid pixels, angular errors."""

    tap_target: str = "negate"  # negate | untargeted
    name = "normals"
    primary = "mean_angle"
    agreement = "within_11.25"
    higher_is_better = False
    outputs = 3

    def __post_init__(self) -> None:
        _check_target(self.name, self.tap_target, ("negate", "untargeted"))

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        """Mean 1 - cos(n, n*) over the valid pixels; pred and target (B, 3, S, S). 0 when none is valid."""
        import torch
        import torch.nn.functional as F

        valid = target.abs().sum(1) > 0  # (B, S, S)
        safe = torch.where(valid.unsqueeze(1), pred, torch.ones_like(pred))
        return _masked_mean(1 - (F.normalize(safe, dim=1) * target).sum(1), valid)

    def predict(self, pred: Tensor) -> Tensor:
        import torch.nn.functional as F

        return F.normalize(pred, dim=1)  # (B, 3, S, S)

    def shifted(self, target: Tensor) -> Tensor:
        """-n* at the valid pixels (§8: our choice); the zero vector stays."""
        return -target

    def resize(self, target: np.ndarray, size: int) -> np.ndarray:
        out = nearest(target, size).astype(np.float32)  # (3, S, S)
        norm = np.linalg.norm(out, axis=0, keepdims=True)
        return np.divide(out, norm, out=np.zeros_like(out), where=norm > 0)

    def flip(self, target: Tensor) -> Tensor:
        """Mirror the map and negate x: a normal facing right faces left in the mirror image."""
        import torch

        out = target.flip(-1)
        return torch.cat([-out[..., :1, :, :], out[..., 1:, :, :]], dim=-3)

    def meter(self) -> NormalsMeter:
        return NormalsMeter()

    def agree(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """(pixels within 11.25 degrees, valid pixels): the parts of `within_11.25`."""
        errors = angular_errors(pred, target.to(pred.device))  # (n_valid,) degrees
        return (errors < ANGLE_THRESHOLDS[0]).sum().float(), errors.new_tensor(float(errors.numel()))

    def trivial_predictions(self, train: Tensor) -> dict[str, Tensor]:
        """The normalised mean training normal over all valid pixels and at each pixel. Each (3, S, S)."""
        import torch.nn.functional as F

        total = train.float().sum(0)  # (3, S, S): invalid pixels are zero vectors and add nothing
        top = F.normalize(total.sum((1, 2)), dim=0)  # (3,)
        per_pixel = F.normalize(total, dim=0)
        return {"global": top.reshape(3, 1, 1).expand(total.shape).clone(),
                "per-pixel": _per_pixel_or_global(per_pixel, total.abs().sum(0) == 0, top)}


def _masked_mean(error: Tensor, valid: Tensor) -> Tensor:
    """Mean of `error` over the `valid` pixels, 0 without any. The callers mask the prediction with `torch.where`
    BEFORE any non-linear step, so a nan or inf predicted at an invalid pixel reaches neither the value nor the
    gradient (multiplying by the mask would give 0 * nan)."""
    import torch

    valid = valid.reshape(error.shape)
    return torch.where(valid, error, torch.zeros_like(error)).sum() / valid.sum().clamp(min=1)
