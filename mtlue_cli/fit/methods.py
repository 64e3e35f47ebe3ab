"""The base methods as rows of one table (method-spec §4, style rule 4): EM, TAP and SEP differ by an objective,
the surrogates they attack, the labels the stop check compares with, whether x+δ is augmented, the default
stop error and how the LR schedule and the regularisers are scaled. `fit.loop` runs any row.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from mtlue_cli.fit import surrogate
from mtlue_cli.fit.losses import em_loss, sep_loss, shifted_targets, tap_loss
from mtlue_cli.fit.surrogate import SurrogateProvider, TargetRule
from mtlue_cli.models.classifiers import Targets

Objective = Callable[[list[list[torch.Tensor]], Targets, list[Any], str], torch.Tensor]  # outputs, targets, kinds, binary mode
Regulariser = Callable[[list[torch.Tensor]], torch.Tensor]


def _em(logits: list[list[torch.Tensor]], y: Targets, nc: list[Any], binary_mode: str) -> torch.Tensor:
    return em_loss(logits[0], y, nc)


def _tap(logits: list[list[torch.Tensor]], y: Targets, nc: list[Any], binary_mode: str) -> torch.Tensor:
    return tap_loss(logits[0], y, nc, binary_mode=binary_mode)


def _sep(logits: list[list[torch.Tensor]], y: Targets, nc: list[Any], binary_mode: str) -> torch.Tensor:
    return sep_loss(logits, y, nc)


def true_labels(labels: Targets, num_classes: list[Any]) -> Targets:
    return labels


@dataclass(frozen=True)
class Method:
    objective: Objective
    surrogates: SurrogateProvider  # what the generator attacks: fresh (EM), final (TAP), checkpoints (SEP)
    stop_target: TargetRule  # what the stop check compares predictions with
    augment: bool  # SEP attacks un-augmented x+δ (§3.2)
    stop_multiclass: float  # default stop error with any multi-class task (§4.6, UTKFace script)
    stop_binary: float  # with binary tasks only (CelebA script; error against the flipped labels)
    scheduler_steps: int = 1  # LR scheduler steps per generation epoch (§4.4: SEP compresses the schedule 4x)
    ensemble: bool = False  # the attacked surrogates are one objective's passes (SEP's checkpoints, §4.4)

    def regulariser_scale(self, surrogates: int, recompute: bool) -> float:
        # The official SEP adds the regularisers once per checkpoint pass; computing δ once keeps the same
        # objective only with them weighted by the number of checkpoints (§14.1).
        return float(surrogates) if self.ensemble and not recompute else 1.0


# §4.2-4.4 and §4.6. For binary tasks, error against the flipped labels = 1 - true-label error, so
# "true-label error >= 0.9" (TAP, CelebA) is "flipped error <= 0.1": one stop rule for all.
METHODS: dict[str, Method] = {
    "em": Method(_em, surrogate.fresh, true_labels, True, 0.01, 0.01),
    "tap": Method(_tap, surrogate.final, shifted_targets, True, 1e-4, 0.1),
    "sep": Method(_sep, surrogate.checkpoints, shifted_targets, False, 1e-4, 0.01, scheduler_steps=4, ensemble=True),
}


def binary_mode(tap_binary: str, binary: tuple[bool, ...]) -> str:
    """TAP on binary tasks: the CelebA script is untargeted, the UTKFace script flips gender (§13.6).
    'auto' reproduces each: untargeted when every task is binary, targeted when any is multi-class."""
    if tap_binary == "auto":
        return "untargeted" if all(binary) else "targeted"
    return tap_binary


def tap_kinds(kinds: Sequence[Any], tap_dense: str) -> list[Any]:
    """The task kinds the objective reads: with tap_dense "untargeted", every label-map kind's TAP pushes away from
    the true map instead of towards its own target (method-spec §8 names no dense targets; data.dense_kinds)."""
    if tap_dense == "auto":
        return list(kinds)
    return [dataclasses.replace(k, tap_target=tap_dense) if k.dense else k for k in kinds]
