"""Joint augmentation: what moves the pixels of an image moves its label maps with it (ecosystem §2.13: mtan's
flip mirrors the maps and negates the normals' x). Each task's kind says how its targets follow (`kind.flip`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from torch import Tensor

    from mtlue_cli.data.kinds import TaskKind


def flip_targets(targets: Sequence[Tensor], kinds: Sequence[TaskKind], mask: Tensor) -> list[Tensor]:
    """Every task's targets of the samples where `mask` (B,) is True, as their mirrored image shows them (its
    `kind.flip`: maps mirrored, normals' x negated, class labels unchanged); the others as they are. New tensors."""
    if len(targets) != len(kinds):
        raise ValueError(f"one target per task: {len(targets)} targets, {len(kinds)} kinds")
    return [_pick(mask, t, kind.flip(t)) for t, kind in zip(targets, kinds)]


def joint_flip(images: Tensor, targets: Sequence[Tensor], kinds: Sequence[TaskKind],
               mask: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Mirror (left-right) the samples where `mask` (B,) is True: the images (B, C, S, S) and every task's targets
    (`flip_targets`). New tensors; differentiable in the images."""
    return _pick(mask, images, images.flip(-1)), flip_targets(targets, kinds, mask)


def _pick(mask: Tensor, x: Tensor, flipped: Tensor) -> Tensor:
    """`flipped` for the samples where `mask` (B,) is True, `x` for the others."""
    import torch

    mask = mask.to(x.device).bool()
    return torch.where(mask.view(-1, *([1] * (x.dim() - 1))), flipped, x)
