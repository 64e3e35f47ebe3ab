"""Task kinds: what a task's labels are, and so how they are lossed, predicted, shifted, scored and baselined.

Every stage asks a task's kind instead of testing `num_classes == 2` (style.md: add a kind, not `if` branches):
the classifier's head width (`outputs`) and `loss`, the `predict`ion, TAP/SEP's target (`shifted`,
`tap_untargeted`, method-spec §3.2), the `flip` of joint augmentation, the `resize` to the working size, the score
(`meter()`, its `primary` key, `higher_is_better`) and the no-skill baseline a victim must beat (`trivial`). A
classification task's kind follows from its class count (two classes: `Binary`, one logit and BCE, §3.2; more:
`MultiClass`); the label-map kinds (`dense` True) live in data.dense_kinds and are re-exported here.

In-memory conventions, S the working size (B a batch, no B for one sample as `resize` takes it, numpy there):

    kind          target                              output (`outputs`)   loss                    predict
    multiclass    (B,) int64 class index              (B, C) logits        CE                      argmax (B,)
    binary        (B,) int64 0/1                      (B, 1) logit         BCE with logits         logit > 0
    segmentation  (B, S, S) int64, ignored = -1       (B, C, S, S) logits  CE over non-ignored     argmax (B, S, S)
    depth         (B, 1, S, S) float32, invalid = 0   (B, 1, S, S)         L1 over valid           as is
    normals       (B, 3, S, S) float32 unit vectors,  (B, 3, S, S)         1 - cos over valid      normalised
                  invalid = the zero vector

The dense losses are means over the valid pixels of the whole batch and 0 (a zero gradient, not nan) without any.
Readers (data.label_maps) turn every file convention into these: a file's void value -> -1, NaN depth -> 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence, Union

from mtlue_cli.config import DENSE_KINDS
from mtlue_cli.data.dense_kinds import IGNORE, Depth, Normals, Segmentation, nearest  # noqa: F401 (re-exported)
from mtlue_cli.metrics import AccuracyMeter

if TYPE_CHECKING:
    from torch import Tensor


@dataclass(frozen=True)
class MultiClass:
    """A class index in [0, classes): C_k logits, cross-entropy, argmax."""

    classes: int
    name = "multiclass"
    dense = False
    primary = "accuracy"
    agreement = "accuracy"  # the meter's share of predictions that match a target: what fit's stop rule counts
    higher_is_better = True

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

    def resize(self, target: Any, size: int) -> Any:
        """A class index has no pixels: unchanged."""
        return target

    def flip(self, target: Tensor) -> Tensor:
        """A mirrored image keeps its class."""
        return target

    def meter(self) -> AccuracyMeter:
        return AccuracyMeter()

    def agree(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """(matches, count) of a batch as float tensors on the prediction's device, so ranks can sum them: the parts
        of `meter().result()[agreement]`."""
        hits = (pred.reshape(-1) == target.reshape(-1).to(pred.device)).sum().float()
        return hits, hits.new_tensor(float(target.numel()))

    def trivial(self, train: Tensor, test: Tensor) -> dict[str, float]:
        """The training majority class's score on `test`, keyed as `meter().result()`."""
        return {"accuracy": self.majority(train, test)}

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


TaskKind = Union[MultiClass, Binary, Segmentation, Depth, Normals]
KINDS = (MultiClass, Binary, Segmentation, Depth, Normals)


def kind_of(classes: int) -> TaskKind:
    """A classification task's kind from its class count."""
    if classes < 2:
        raise ValueError(f"a task needs at least 2 classes, got {classes}")
    return Binary() if classes == 2 else MultiClass(classes)


def kinds_of(tasks: Sequence[int | TaskKind]) -> list[TaskKind]:
    """Kinds for a list of class counts (or kinds, passed through)."""
    return [t if isinstance(t, KINDS) else kind_of(int(t)) for t in tasks]


def kind_named(name: str, classes: int) -> TaskKind:
    """The kind a TaskSpec records by name ("multiclass", "binary", "segmentation", "depth", "normals")."""
    if name in ("multiclass", "binary"):
        kind = kind_of(classes)
        if kind.name != name:
            raise ValueError(f"a {name} task cannot have {classes} classes (binary: exactly 2, multiclass: more)")
        return kind
    if name not in DENSE_KINDS:
        raise ValueError(f"unknown task kind {name!r}: use one of multiclass, binary, {', '.join(DENSE_KINDS)}")
    if name != "segmentation" and classes:
        raise ValueError(f"a {name} task has no classes, got {classes}")
    return Segmentation(classes) if name == "segmentation" else Depth() if name == "depth" else Normals()
