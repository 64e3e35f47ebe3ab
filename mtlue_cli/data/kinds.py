"""Task kinds: what a task's labels are, and so how they are lossed, predicted, shifted, scored and baselined.

Every stage asks a task's kind instead of testing `num_classes == 2` (style.md: add a kind, not `if` branches):
the classifier's head width and loss, the prediction, TAP/SEP's target (method-spec §3.2), the no-skill
baseline a victim must beat and the score it is judged by. A classification task's kind follows from its
class count (two classes: `Binary`, one logit and BCE, §3.2; more: `MultiClass`); label-map kinds
(segmentation, depth, normals) join here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence, Union

if TYPE_CHECKING:
    from torch import Tensor


@dataclass(frozen=True)
class MultiClass:
    """A class index in [0, classes): C_k logits, cross-entropy, argmax."""

    classes: int
    name = "multiclass"

    @property
    def outputs(self) -> int:
        """Width of the classifier head."""
        return self.classes

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """Batch-mean loss; logits (B, outputs), target (B,) class indices."""
        import torch.nn.functional as F

        return F.cross_entropy(logits, target.long())

    def predict(self, logits: Tensor) -> Tensor:
        return logits.argmax(dim=1)  # (B,)

    def shifted(self, target: Tensor) -> Tensor:
        """TAP/SEP's target t = (y + floor(C / 2)) mod C (§3.2)."""
        return (target + self.classes // 2) % self.classes

    def tap_untargeted(self, binary_mode: str) -> bool:
        """Whether TAP pushes away from the true label (-loss) instead of towards the shifted one."""
        return False

    @property
    def chance(self) -> float:
        """Accuracy of a uniform guess."""
        return 1 / self.classes

    def majority(self, train: Tensor, test: Tensor) -> float:
        """Accuracy on `test` (N,) of always predicting the most frequent class of `train`."""
        import torch

        most = int(torch.bincount(train, minlength=self.classes).argmax())
        return float((test == most).float().mean())

    def auc(self, scores: Tensor, labels: Tensor) -> float:
        """Macro one-vs-rest ROC-AUC over the classes present; scores (N, outputs), labels (N,)."""
        from mtlue_cli.metrics import roc_auc

        per_class = [roc_auc(scores[:, j], labels == j) for j in range(self.classes)]
        valid = [a for a in per_class if a == a]
        return sum(valid) / len(valid) if valid else float("nan")


@dataclass(frozen=True)
class Binary(MultiClass):
    """Two classes: one logit, BCE-with-logits, logit > 0 (§3.2, §6.4)."""

    classes: int = 2
    name = "binary"

    @property
    def outputs(self) -> int:
        return 1

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        import torch.nn.functional as F

        return F.binary_cross_entropy_with_logits(logits[:, 0], target.to(logits.dtype))

    def predict(self, logits: Tensor) -> Tensor:
        return (logits[:, 0] > 0).long()

    def shifted(self, target: Tensor) -> Tensor:
        """The flip 1 - y ((y + 1) mod 2, §3.2)."""
        return (target + 1) % 2

    def tap_untargeted(self, binary_mode: str) -> bool:
        # The official binary script maximises BCE on the true label; the UTKFace script flips it (§13.6).
        return binary_mode == "untargeted"

    def auc(self, scores: Tensor, labels: Tensor) -> float:
        from mtlue_cli.metrics import roc_auc

        return roc_auc(scores[:, 0], labels == 1)


TaskKind = Union[MultiClass, Binary]


def kind_of(classes: int) -> TaskKind:
    """A classification task's kind from its class count."""
    if classes < 2:
        raise ValueError(f"a task needs at least 2 classes, got {classes}")
    return Binary() if classes == 2 else MultiClass(classes)


def kinds_of(tasks: Sequence[int | TaskKind]) -> list[TaskKind]:
    """Kinds for a list of class counts (or kinds, passed through)."""
    return [t if isinstance(t, MultiClass) else kind_of(int(t)) for t in tasks]
