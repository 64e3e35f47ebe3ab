"""The surrogates a generator attacks (method-spec §5): prepared once per fit (cached for --resume), and
their accuracy on x + G(x, y), which the stop rule reads.

Each base method has one provider in fit.methods.METHODS: EM trains a fresh surrogate alternately with the
generator (§4.2); TAP attacks the final state of a clean pre-trained model (§4.3); SEP attacks its
periodic checkpoints (§4.4).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from mtlue_cli.config import FitConfig, milestones
from mtlue_cli.data.dataset import MultiTaskImageDataset
from mtlue_cli.data.kinds import TaskKind
from mtlue_cli.events import OnEvent, log
from mtlue_cli.fit.squeezes import random_squeeze
from mtlue_cli.models.classifiers import Targets, column
from mtlue_cli.models.dense import build_model
from mtlue_cli.models.engine import (
    ClassifierTrainer,
    Dist,
    augment,
    autocast,
    batch_indices,
    evaluate,
    save_atomic,
    to_float,
    train_classifier,
)


@dataclass
class FitContext:
    """What every stage of a fit shares: the training set on the host and the run plumbing."""

    dataset: MultiTaskImageDataset  # images uint8 (N,3,S,S), labels long (N,K), the label maps of dense tasks
    crop: int
    device: torch.device
    dist: Dist
    gen: torch.Generator  # drives shuffles, crops and squeezes
    amp: str
    on_event: OnEvent

    @property
    def images(self) -> torch.Tensor:
        return self.dataset.images

    @property
    def labels(self) -> torch.Tensor:
        return self.dataset.labels

    @property
    def kinds(self) -> list[TaskKind]:
        """Each task's kind: what the losses, predictions and the stop rule read (data.kinds)."""
        return self.dataset.spec.kinds

    @property
    def task_names(self) -> tuple[str, ...]:
        return self.dataset.spec.names

    @property
    def dense(self) -> bool:
        return any(self.dataset.spec.dense)

    @property
    def targets(self) -> Any:
        """What the classifier engine trains on: the (N, K) labels, or with label maps the dataset (`targets(idx)`)."""
        return self.dataset if self.dense else self.labels

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Targets]:
        """x (float, on the device), y (B, K) class indices for the generator, and the targets the surrogate's
        losses read: y itself, or with label maps one target per task (data.kinds' conventions)."""
        x, y = to_float(self.images[idx], self.device), self.labels[idx].to(self.device)
        if not self.dense:
            return x, y, y
        return x, y, [t.to(self.device) for t in self.dataset.targets(idx)]

    def maps(self, targets: Targets) -> list[torch.Tensor | None] | None:
        """The generator's `maps` argument for a batch's (unaugmented) targets: None without label maps."""
        if not self.dense:
            return None
        return [t if kind.dense else None for t, kind in zip(targets, self.kinds)]


@dataclass
class Surrogates:
    """The frozen models the generator attacks, or EM's live one."""

    attacked: list[nn.Module]  # every batch's target (SEP: one pass per checkpoint)
    squeezed: list[nn.Module] = field(default_factory=list)  # paired_surrogates: the squeezed batches' target
    trainer: ClassifierTrainer | None = None  # EM: trained between generation steps (§4.2)
    clean_acc: list[float] | None = None  # per task, of the final clean model on its training set

    def for_squeeze(self, name: str) -> list[nn.Module]:
        """The surrogates a batch drawn through squeeze `name` attacks."""
        return self.squeezed if self.squeezed and name != "identity" else self.attacked


SurrogateProvider = Callable[[FitContext, FitConfig, Path], Surrogates]
TargetRule = Callable[[Targets, list[Any]], Targets]  # a batch's targets and the kinds -> what the stop check compares


def _model(ctx: FitContext, cfg: FitConfig) -> nn.Module:
    return build_model(ctx.kinds, arch=cfg.surrogate, stem=cfg.surrogate_stem, image_size=ctx.crop)


def _freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def fresh(ctx: FitContext, cfg: FitConfig, cache: Path) -> Surrogates:
    """EM (§4.2): an untrained surrogate, updated on A(x + G(x, y)) between generation steps."""
    trainer = ClassifierTrainer(_model(ctx, cfg), ctx.kinds, device=ctx.device, amp=ctx.amp, dist=ctx.dist)
    return Surrogates([trainer.model], trainer=trainer)


def final(ctx: FitContext, cfg: FitConfig, cache: Path) -> Surrogates:
    """TAP (§4.3): the clean model at the end of its training."""
    return _pretrained(ctx, cfg, cache, checkpoints=False)


def checkpoints(ctx: FitContext, cfg: FitConfig, cache: Path) -> Surrogates:
    """SEP (§4.4): the clean model's states every `sep_every` epochs (§5)."""
    return _pretrained(ctx, cfg, cache, checkpoints=True)


def _pretrained(ctx: FitContext, cfg: FitConfig, cache: Path, checkpoints: bool) -> Surrogates:
    # robust_surrogate (a deviation from §5, off in paper-*): the surrogate also learns from squeezed
    # images, so the gradient that reaches δ through a squeeze comes from a model that reads such images.
    # paired_surrogates keeps the clean one too, for the unsqueezed batches (the no-defence strength).
    kinds = (["clean"] if not cfg.robust_surrogate or cfg.paired_surrogates else []) + (
        ["squeezed"] if cfg.robust_surrogate else [])
    if cfg.resume and cache.is_file():
        saved_all = torch.load(cache, map_location="cpu", weights_only=True)
        saved_all = {kinds[0]: saved_all} if "final" in saved_all else saved_all  # a checkpoint of mtlue <= 0.1
    else:
        saved_all = {kind: _train(ctx, cfg, kind, checkpoints) for kind in kinds}
        if ctx.dist.is_main:
            save_atomic(saved_all, cache)
    surrogates = Surrogates([])
    for kind in kinds:
        saved = saved_all[kind]
        for state in list(saved["checkpoints"].values()) if checkpoints else [saved["final"]]:
            model = _model(ctx, cfg)
            model.load_state_dict(state, strict=True)
            paired = kind == "squeezed" and cfg.paired_surrogates
            (surrogates.squeezed if paired else surrogates.attacked).append(_freeze(model.to(ctx.device)))
    clean = _model(ctx, cfg)
    clean.load_state_dict(saved_all[kinds[0]]["final"], strict=True)
    # Label maps: their agreement (pixel accuracy, delta1, within 11.25°), a share like accuracy, so the mean is one.
    surrogates.clean_acc = evaluate(clean.to(ctx.device), ctx.images, ctx.targets, ctx.kinds, ctx.crop, ctx.device,
                                    score="agreement")
    log(ctx.on_event, "clean surrogate train accuracy: " + ", ".join(
        f"{t} {a:.1%}" + (f" ({kind.agreement})" if kind.dense else "")
        for t, a, kind in zip(ctx.task_names, surrogates.clean_acc, ctx.kinds))
        + f" ({len(surrogates.attacked)} surrogate(s) attacked)")
    return surrogates


def _train(ctx: FitContext, cfg: FitConfig, kind: str, checkpoints: bool) -> dict[str, dict]:
    """Train one clean (or, `kind` "squeezed", squeeze-trained) surrogate (§5); its final state and checkpoints."""
    trainer = ClassifierTrainer(_model(ctx, cfg), ctx.kinds,
                                milestones=milestones(cfg.surrogate_epochs, cfg.surrogate_milestones),
                                device=ctx.device, amp=ctx.amp, dist=ctx.dist)
    squeezed = (lambda x: random_squeeze(tuple(cfg.robust), ctx.gen)[1](x)) if kind == "squeezed" else None
    result = train_classifier(
        trainer, ctx.images, ctx.targets, epochs=cfg.surrogate_epochs, batch_size=cfg.batch_size, crop=ctx.crop,
        gen=ctx.gen, checkpoint_every=cfg.sep_every if checkpoints else None, input_transform=squeezed,
        on_event=ctx.on_event, stage="surrogate", description=f"{kind.capitalize()} surrogate",
    )
    return {"final": {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()},
            "checkpoints": {str(e): s for e, s in result.checkpoints.items()}}


def perturbed(x: torch.Tensor, y: torch.Tensor, generator: nn.Module, maps: list[Any] | None = None) -> torch.Tensor:
    """x + G(x, y), clamped to the image range as the released files will be (§13.4 fixed); `maps`: the dense tasks'
    label maps (`FitContext.maps`)."""
    delta = generator(x, y) if maps is None else generator(x, y, maps=maps)
    return (x + delta).clamp(0, 1)


def augment_batch(ctx: FitContext, x: torch.Tensor, targets: Targets) -> tuple[torch.Tensor, Targets]:
    """The training augmentation A(.) of x and, with label maps, the same crop and flip of the maps (joint)."""
    if not ctx.dense:
        return augment(x, ctx.crop, ctx.gen), targets
    return augment(x, ctx.crop, ctx.gen, list(targets), ctx.kinds)


@torch.no_grad()
def accuracy_on_perturbed(ctx: FitContext, generator: nn.Module, model: nn.Module, batch_size: int, target: TargetRule,
                          augmented: bool, train_mode: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-task agreement (K,) of `model` on x + G(x, y) (augmented as A(.) if `augmented`) over the whole training
    set (§4.1), against `target(targets)` and against the true targets: accuracy for a classification task, the
    kind's `agreement` for a label map (pixel accuracy, delta1, within 11.25°). The generator runs in eval mode."""
    generator.eval()
    # §14.1: the official EM check runs the surrogate in train mode (batch BN statistics); 'eval' is ours.
    model.train(train_mode)
    kinds, device = ctx.kinds, ctx.device
    sums = torch.zeros(3, len(kinds), device=device)  # hits against the target, hits against the truth, counts
    for idx in batch_indices(len(ctx.images), batch_size, False, None, dist=ctx.dist):
        x, y, t = ctx.batch(idx)
        with autocast(device, ctx.amp):
            xp = perturbed(x, y, generator, ctx.maps(t))
            if augmented:
                xp, t = augment_batch(ctx, xp, t)
            outputs = [o.float() for o in model(xp)]
        goal = target(t, kinds)
        for k, (out, kind) in enumerate(zip(outputs, kinds)):
            pred = kind.predict(out)
            hits, count = kind.agree(pred, column(goal, k))
            sums[0, k] += hits
            sums[1, k] += kind.agree(pred, column(t, k))[0]
            sums[2, k] += count
    model.eval()
    ctx.dist.all_sum(sums)
    return sums[0] / sums[2].clamp(min=1), sums[1] / sums[2].clamp(min=1)
