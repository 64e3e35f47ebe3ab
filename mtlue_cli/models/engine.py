"""Classifier training and evaluation shared by surrogate pre-training, EM's inner steps and `verify`, with the
per-sample (joint) augmentation they train through. The run plumbing (device, autocast, seeding, DDP, batches)
lives in `runtime` and is re-exported here for the modules that import it from the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn

from mtlue_cli.data.augment import flip_targets
from mtlue_cli.data.kinds import kinds_of
from mtlue_cli.events import OnEvent, noop
from mtlue_cli.models.classifiers import predict, task_losses
from mtlue_cli.models.runtime import (  # noqa: F401 (re-exported)
    Dist,
    autocast,
    batch_indices,
    needs_grad_scaler,
    resolve_device,
    save_atomic,
    seed_everything,
    to_float,
)


def augment(x: torch.Tensor, crop: int, gen: torch.Generator | None = None, targets: list[torch.Tensor] | None = None,
            kinds: list[Any] | None = None) -> Any:
    """Per-sample RandomCrop(crop) + horizontal flip, differentiable (the official code shares one crop
    per batch, method-spec §13.5; victims augment per sample, so we do too).

    With `targets` (one per task, data.kinds' conventions) returns (x, targets): the label maps take the same crop
    and their kind's flip (mirrored; a normal map's x negated), class labels pass unchanged (joint augmentation,
    ecosystem §2.13). The random draws are the same with or without targets."""
    b, _, h, w = x.shape  # (B,C,H,W)
    oy = torch.randint(0, h - crop + 1, (b,), generator=gen).to(x.device)
    ox = torch.randint(0, w - crop + 1, (b,), generator=gen).to(x.device)
    flip = (torch.rand(b, generator=gen) < 0.5).to(x.device)
    ar = torch.arange(crop, device=x.device)
    rows = (oy[:, None] + ar)  # (B,crop)
    straight = ox[:, None] + ar
    cols = torch.where(flip[:, None], straight.flip(1), straight)
    bi = torch.arange(b, device=x.device)[:, None, None]
    out = x.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]  # (B,crop,crop,C)
    # Contiguous NCHW: the permuted (channels-last strided) view takes a CPU conv path ~4x slower,
    # measured by benchmarks/run.py (victim img/s).
    out = out.permute(0, 3, 1, 2).contiguous()
    if targets is None:
        return out
    cropped = []
    for target, kind in zip(targets, kinds or []):
        target = target.to(x.device)
        if kind.dense:  # the image's crop, unmirrored: flip_targets mirrors each kind its own way
            channels = target.dim() == 4  # depth, normals (B,C,H,W); segmentation (B,H,W)
            spatial = target.permute(0, 2, 3, 1) if channels else target  # (B,H,W[,C])
            target = spatial[bi, rows[:, :, None], straight[:, None, :]]
            if channels:
                target = target.permute(0, 3, 1, 2).contiguous()
        cropped.append(target)
    return out, flip_targets(cropped, kinds or [], flip)


def center_crop(x: torch.Tensor, crop: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    top, left = (h - crop) // 2, (w - crop) // 2
    return x[..., top : top + crop, left : left + crop].contiguous()


# ----------------------------------------------------------------------------- classifier training


class ClassifierTrainer:
    """Adam + MultiStepLR + grad-norm clip 5 (method-spec §6.2), with EW/UW/RLW task weighting (§6.5;
    `weighting` is one of config.WEIGHTINGS, checked by VerifyConfig)."""

    def __init__(self, model: nn.Module, num_classes: list[int], *, lr: float = 1e-3, weight_decay: float = 1e-4,
                 milestones: tuple[int, ...] = (), weighting: str = "ew", device: torch.device | None = None,
                 amp: str = "auto", dist: Dist | None = None, task_weights: torch.Tensor | None = None) -> None:
        self.device = device or torch.device("cpu")
        self.num_classes, self.weighting, self.amp = num_classes, weighting, amp
        self.dist = dist or Dist()
        self.model = model.to(self.device)
        self.module = self.dist.wrap(self.model, self.device)
        k = len(num_classes)
        # UW: one learnable log-variance per task, initialised to -0.5 (§6.5).
        self.log_vars = nn.Parameter(torch.full((k,), -0.5, device=self.device)) if weighting == "uw" else None
        params = list(self.model.parameters()) + ([self.log_vars] if self.log_vars is not None else [])
        self.optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, list(milestones), gamma=0.1)
        self.task_weights = task_weights.to(self.device) if task_weights is not None else None  # STL one-hot
        self.scaler = torch.amp.GradScaler("cuda") if needs_grad_scaler(self.device, amp) else None

    def combine(self, losses: torch.Tensor) -> torch.Tensor:  # (K,) -> scalar
        if self.task_weights is not None:
            return (losses * self.task_weights).sum()
        if self.weighting == "uw":
            return (losses / (2 * self.log_vars.exp()) + self.log_vars / 2).sum()
        if self.weighting == "rlw":
            weights = len(losses) * torch.softmax(torch.randn(len(losses), device=losses.device), 0)
            return (losses * weights).mean()
        return losses.mean()

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor]:
        """One update on float inputs (B,C,H,W); returns the loss and the predictions (B,K)."""
        self.module.train()
        with autocast(self.device, self.amp):
            logits = self.module(x)
            loss = self.combine(task_losses(logits, y, self.num_classes))
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), 5.0)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            nn.utils.clip_grad_norm_(self.model.parameters(), 5.0)
            self.optimizer.step()
        return float(loss.detach()), predict([t.detach().float() for t in logits], self.num_classes)


def pgd_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: list[int], epsilon: float = 8 / 255,
               steps: int = 10, step_size: float = 2 / 255) -> torch.Tensor:
    """Madry PGD for adversarial training (method-spec §6.6): model in eval mode for the attack."""
    was_training = model.training
    model.eval()
    # §14.1: the official random start is neither clamped nor projected; we clamp it to the image range.
    x_adv = (x + 2 / 255 * torch.randn_like(x)).clamp(0, 1).detach()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = task_losses(model(x_adv), y, num_classes).mean()
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + step_size * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - epsilon), x + epsilon).clamp(0, 1)
    model.train(was_training)
    return x_adv.detach()


@dataclass
class TrainResult:
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoints: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)  # epoch -> state_dict


def train_classifier(
    trainer: ClassifierTrainer,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    crop: int,
    gen: torch.Generator,
    input_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    adv_train: bool = False,
    checkpoint_every: int | None = None,
    evaluate_on: tuple[torch.Tensor, torch.Tensor] | None = None,
    metric: str = "acc",
    on_event: OnEvent = noop,
    stage: str = "victim",
    description: str = "Training",
) -> TrainResult:
    """Train for `epochs` on uint8 `images` (N,C,H,W) with per-sample crop+flip; optionally save the state
    after every epoch whose index is divisible by `checkpoint_every` (SEP checkpoints, method-spec §5)."""
    result = TrainResult()
    n, device = len(images), trainer.device
    steps_per_epoch = max(1, -(-len(trainer.dist.shard(torch.arange(n))) // batch_size))
    on_event("start", {"stage": stage, "total": epochs * steps_per_epoch, "description": description})
    done = 0
    kinds = kinds_of(trainer.num_classes)
    dense = any(kind.dense for kind in kinds)
    for epoch in range(epochs):
        correct, seen, loss_sum = None, 0, 0.0
        meters = [kind.meter() for kind in kinds]
        for idx in batch_indices(n, batch_size, True, gen, drop_last=True, dist=trainer.dist):
            x = to_float(images[idx], device)
            if input_transform is not None:
                x = input_transform(x)
            if dense:  # label maps: `labels` is the dataset (its `targets`), augmented with the images
                x, y = augment(x, crop, gen, labels.targets(idx), kinds)
            else:
                x = augment(x, crop, gen)
                y = labels[idx].to(device)
            if adv_train:
                x = pgd_attack(trainer.model, x, y, trainer.num_classes)
            loss, pred = trainer.step(x, y)
            if dense:
                for meter, p, t in zip(meters, pred, y):
                    meter.update(p, t)
            else:
                hits = (pred == y).sum(0).float()
                correct = hits if correct is None else correct + hits
            seen += len(idx)
            loss_sum += loss * len(idx)
            done += 1
            on_event("progress", {"stage": stage, "done": done, "epoch": epoch + 1, "loss": loss})
        trainer.scheduler.step()
        extra = {}
        if dense:  # each task's primary score; train_acc: the mean of the ones where higher is better (acc, mIoU)
            train = [meter.result()[kind.primary] for meter, kind in zip(meters, kinds)]
            better = [s for s, kind in zip(train, kinds) if kind.higher_is_better]
            train_acc, extra = (sum(better) / len(better) if better else float("nan")), {"train_tasks": train}
        else:
            train_acc = float(correct.mean() / seen) if correct is not None else 0.0
        record = {"epoch": epoch + 1, "loss": loss_sum / max(seen, 1), "train_acc": train_acc, **extra}
        if evaluate_on is not None:
            per_task = evaluate(trainer.model, *evaluate_on, trainer.num_classes, crop, device, metric=metric)
            record["test_acc"] = sum(per_task) / len(per_task)
            record["test_acc_tasks"] = per_task  # type: ignore[assignment]
        result.history.append(record)
        if checkpoint_every and epoch % checkpoint_every == 0:
            result.checkpoints[epoch] = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    on_event("end", {"stage": stage})
    return result


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: Any, num_classes: list[Any], crop: int,
             device: torch.device, batch_size: int = 256, amp: str = "auto", metric: str = "acc",
             score: str = "primary") -> list[float]:
    """Per-task top-1 accuracy (`metric` "acc") or ROC-AUC ("auc": macro one-vs-rest for multi-class) on centre
    crops (§6.3, §6.4). With label-map tasks (`labels` is then the dataset), each task's `score`: its kind's
    "primary" score (mIoU, depth error, angle) or its "agreement" (pixel accuracy, delta1, within 11.25°)."""
    kinds = kinds_of(num_classes)
    if any(kind.dense for kind in kinds):
        return [scores[getattr(kind, score)] for scores, kind in zip(score_tasks(model, images, labels, kinds, crop,
                                                                                 device, batch_size, amp), kinds)]
    model.eval()
    correct = torch.zeros(len(num_classes))
    scores: list[list[torch.Tensor]] = [[] for _ in num_classes]
    for idx in batch_indices(len(images), batch_size, False, None):
        x = center_crop(to_float(images[idx], device), crop)
        with autocast(device, amp):
            logits = [t.float() for t in model(x)]
        if metric == "acc":
            correct += (predict(logits, num_classes).cpu() == labels[idx]).sum(0).float()
        else:  # AUC needs every score; accuracy needs none of them kept
            for k, t in enumerate(logits):
                scores[k].append(t.cpu())
    if metric == "acc":
        return (correct / max(len(images), 1)).tolist()
    return [kind.auc(torch.cat(scores[k]), labels[:, k]) for k, kind in enumerate(kinds)]


@torch.no_grad()
def score_tasks(model: nn.Module, images: torch.Tensor, dataset: Any, kinds: list[Any], crop: int,
                device: torch.device, batch_size: int = 256, amp: str = "auto") -> list[dict[str, float]]:
    """Every score of every task's meter (accuracy; mIoU and pixel accuracy; depth and angular errors) on centre
    crops, the label maps cropped with their images; `dataset` gives the targets (`targets(idx)`)."""
    model.eval()
    meters = [kind.meter() for kind in kinds]
    for idx in batch_indices(len(images), batch_size, False, None):
        x = center_crop(to_float(images[idx], device), crop)
        with autocast(device, amp):
            outputs = [t.float() for t in model(x)]
        for meter, kind, out, target in zip(meters, kinds, outputs, dataset.targets(idx)):
            meter.update(kind.predict(out), center_crop(target, crop) if kind.dense else target)
    return [meter.result() for meter in meters]
