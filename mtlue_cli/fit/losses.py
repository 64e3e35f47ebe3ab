"""MTL-UE objectives as pure tensor functions (method-spec §3).

Base losses L_b take the surrogate's per-task outputs (one (B, 1) or (B, C_k) tensor per task, as
`MTLClassifier` returns them; a map per label-map task from `DenseMTLNet`) and the targets ((B, K) class indices,
or one target per task with label maps); `num_classes` is the class counts or the kinds. Every one is minimised
by the generator.
"""

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mtlue_cli.config import BINARY_MODES, ER_FORMS
from mtlue_cli.data.kinds import kinds_of
from mtlue_cli.models.classifiers import Targets, column, task_losses


def shifted_targets(labels: Targets, num_classes: Sequence[Any]) -> Targets:
    """TAP/SEP targets t^k = (y^k + floor(C_k / 2)) mod C_k (§3.2); a flip 1 - y for binary tasks; each label-map
    kind's own target (data.dense_kinds, method-spec §8). (B, K) class indices in, (B, K) out; a per-task list in
    (label maps), a list out."""
    kinds = kinds_of(num_classes)
    if not isinstance(labels, Tensor):
        if len(labels) != len(kinds):
            raise ValueError(f"got targets for {len(labels)} tasks but {len(kinds)} tasks")
        return [kind.shifted(t) for t, kind in zip(labels, kinds)]
    if labels.dim() != 2 or labels.shape[1] != len(kinds):
        raise ValueError(f"labels must have shape (B, {len(kinds)}), got {tuple(labels.shape)}")
    return torch.stack([kind.shifted(labels[:, k]) for k, kind in enumerate(kinds)], dim=1)  # (B, K)


def em_loss(logits: list[Tensor], labels: Targets, num_classes: Sequence[Any]) -> Tensor:
    """Error-minimising objective: mean over tasks of the loss on the true labels (§3.2 EM)."""
    return task_losses(logits, labels, num_classes).mean()


def tap_loss(
    logits: list[Tensor], labels: Targets, num_classes: Sequence[Any], binary_mode: str = "untargeted"
) -> Tensor:
    """Targeted-adversarial-poisoning objective, mean over tasks (§3.2 TAP).

    Multi-class tasks: CE to the shifted targets. Binary tasks: "untargeted" is -BCE on the true
    labels, as the official binary script does (§13.6); "targeted" is BCE to the flipped label.
    """
    if binary_mode not in BINARY_MODES:
        raise ValueError(f"unknown binary_mode {binary_mode!r}: use one of {', '.join(BINARY_MODES)}")
    losses = []
    for k, (z, kind) in enumerate(zip(logits, kinds_of(num_classes))):
        if kind.tap_untargeted(binary_mode):
            losses.append(-kind.loss(z, column(labels, k)))
        else:
            losses.append(kind.loss(z, kind.shifted(column(labels, k))))
    return torch.stack(losses).mean()


def sep_loss(logits_per_checkpoint: list[list[Tensor]], labels: Targets, num_classes: Sequence[Any]) -> Tensor:
    """Self-ensemble-protection objective: sum over checkpoints of the targeted loss (§3.2 SEP).

    The targeted loss is the mean over tasks of BCE to the flipped label (binary) or CE to the
    shifted target (multi-class). Summed, not averaged, over checkpoints, as upstream.
    """
    if not logits_per_checkpoint:
        raise ValueError("sep_loss needs the logits of at least one checkpoint")
    targets = shifted_targets(labels, num_classes)  # (B, K)
    per_checkpoint = [task_losses(logits, targets, num_classes).mean() for logits in logits_per_checkpoint]
    return torch.stack(per_checkpoint).sum()


def _cosines(embeddings: list[Tensor]) -> tuple[Tensor, Tensor]:
    # One Gram matrix over all classes of all tasks: a single matmul instead of K^2 small ones.
    unit = torch.cat([F.normalize(e, dim=1) for e in embeddings])  # (sum C_k, D)
    task = torch.cat([torch.full((e.shape[0],), k, device=unit.device) for k, e in enumerate(embeddings)])
    return unit @ unit.T, task  # (sum C_k, sum C_k), (sum C_k,)


def intra_task_er(embeddings: list[Tensor], form: str = "code") -> Tensor:
    """Intra-task embedding regulariser on per-task tables (C_k, D): pushes a task's classes apart (§3.1).

    "code": per task, mean off-diagonal cosine + 1, averaged over tasks (range [0, 2]; every task
    weighs the same). "paper": 2 / sum_k C_k(C_k - 1) * sum_k sum_{m<n} cos(e^k_m, e^k_n) (every
    class pair weighs the same). Zero when there are no embeddings (z_only generator).
    """
    if form not in ER_FORMS:
        raise ValueError(f"unknown form {form!r}: use one of {', '.join(ER_FORMS)}")
    if not embeddings:
        return torch.zeros(())
    if min(e.shape[0] for e in embeddings) < 2:
        raise ValueError("every task needs at least 2 class embeddings")
    cos, task = _cosines(embeddings)
    off_diagonal = (task[:, None] == task[None, :]) & ~torch.eye(len(task), dtype=torch.bool, device=cos.device)
    if form == "paper":
        return cos[off_diagonal].mean()
    per_task = [cos[off_diagonal & (task[:, None] == k)].mean() + 1 for k in range(len(embeddings))]
    return torch.stack(per_task).mean()


def inter_task_er(embeddings: list[Tensor]) -> Tensor:
    """Inter-task embedding regulariser: mean |cos| over all cross-task class pairs (§3.1).

    Every (k < l, m, n) pair weighs the same; pushes different tasks' embeddings towards
    orthogonality. Zero when there are fewer than two tasks.
    """
    if len(embeddings) < 2:
        return embeddings[0].new_zeros(()) if embeddings else torch.zeros(())
    cos, task = _cosines(embeddings)
    # Both triangles hold each unordered pair once, so the mean over them equals the mean over k < l.
    return cos[task[:, None] != task[None, :]].abs().mean()


def embedding_regulariser(
    embeddings: list[Tensor], lambda_intra: float = 10.0, lambda_inter: float = 200.0, form: str = "code"
) -> Tensor:
    """lambda_1 * L_intra + lambda_2 * L_inter with the paper's hard-coded weights 10 and 200 (§3.1)."""
    return lambda_intra * intra_task_er(embeddings, form) + lambda_inter * inter_task_er(embeddings)


def class_mean_penalty(delta: Tensor, labels: Tensor, num_classes: Sequence[int], epsilon: float) -> Tensor:
    """Issue 29 (1a): how much of δ (B, C, H, W) is its class's mean in pixel space, the part a per-class linear
    classifier finds and orthogonal projection removes. For each task (a column of `labels` (B, K) with
    `num_classes[k]` classes), the batch's per-class mean of δ/ε, squared and averaged over pixels, weighted by
    the class's share of the batch; the mean over tasks. 0 when every class's δ averages to nothing; 1 when all of
    δ is ±ε and the same for the whole class."""
    flat = (delta / epsilon).flatten(1).float()
    total = flat.new_zeros(())
    for k, classes in enumerate(num_classes):
        onehot = F.one_hot(labels[:, k].long(), classes).float()  # (B, C_k)
        counts = onehot.sum(0)
        means = (onehot.T @ flat) / counts.clamp(min=1)[:, None]  # (C_k, P)
        total = total + (counts / len(flat) * means.pow(2).mean(1)).sum()
    return total / max(len(num_classes), 1)
