"""`fit_generator`: ONE generator-training loop for EM, TAP and SEP (method-spec §4, style rule 4).

The methods differ only by their row of `methods.METHODS`: the objective, the surrogates they attack (a provider
from surrogate.py), the labels the stop check compares with, whether x+δ is augmented, the default stop
error, how much the LR schedule is compressed, and how the regularisers are weighted.
"""

from __future__ import annotations

import functools
import platform
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn

from mtlue_cli import __version__
from mtlue_cli.config import FitConfig, default_crop, milestones
from mtlue_cli.data.dataset import MultiTaskImageDataset
from mtlue_cli.errors import ConfigError, Interrupted
from mtlue_cli.events import OnEvent, log, noop
from mtlue_cli.fit.losses import class_mean_penalty, embedding_regulariser, sep_loss
from mtlue_cli.fit.methods import METHODS, Method, Regulariser, binary_mode, tap_kinds, true_labels
from mtlue_cli.fit.squeezes import random_squeeze
from mtlue_cli.fit.surrogate import FitContext, Surrogates, accuracy_on_perturbed, augment_batch, perturbed
from mtlue_cli.models.classifiers import Targets
from mtlue_cli.models.embedding import label_columns
from mtlue_cli.models.engine import (
    ClassifierTrainer,
    Dist,
    autocast,
    batch_indices,
    resolve_device,
    save_atomic,
    seed_everything,
)
from mtlue_cli.models.generator import PerturbationGenerator

# What the benchmark scenes showed of the budget label maps need (issue 28; benchmarks/RESULTS.md, "Dense tasks").
DENSE_EPSILON = 16 / 255
DENSE_BUDGET_NOTE = ("below 16/255 no generator tried kept victims from learning all the maps of the benchmark "
                     "scenes (benchmarks/RESULTS.md, \"Dense tasks\"); at 16/255 (--preset high, twice the visible "
                     "change) a TAP generator fitted 100 epochs did, with no defence and after grayscale, not after a "
                     "2-bit reduction. Check with `mtlue verify`.")
OP_IMAGES = 10_000  # the `op` squeeze refits its projection on at most this many of an epoch's x+δ (memory)


@dataclass
class FitResult:
    out: Path
    method: str
    epochs_run: int
    stop_error: float
    final_error: float
    stopped_early: bool
    surrogate_clean_acc: list[float] | None
    attacked_train_acc: list[float]  # surrogate accuracy on x+δ against the TRUE labels (collapse shows here)
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    stop_reason: str = "epoch cap"


def _validate(cfg: FitConfig, dataset: MultiTaskImageDataset, state_file: Path) -> None:
    """The checks that need the dataset or the output folder (FitConfig checked its own fields when built)."""
    if dataset.size != cfg.image_size:  # FitConfig owns the working size (and checked that it suits the stem)
        raise ConfigError(f"the images were decoded at {dataset.size} px but --image-size is {cfg.image_size}: "
                          "decode them at the working size (DataConfig.size)")
    unknown = [t for t in cfg.unprotected if t not in dataset.spec.names]
    if unknown:
        raise ConfigError(f"--unprotected names unknown task(s) {unknown}; tasks are {list(dataset.spec.names)}")
    if len(cfg.unprotected) == len(dataset.spec.names):
        raise ConfigError("--unprotected lists every task: nothing would be protected")
    dense = [f"{name} ({kind.name})" for name, kind in zip(dataset.spec.names, dataset.spec.kinds) if kind.dense]
    if dense and "op" in cfg.robust:
        raise ConfigError(f"the op squeeze fits one linear classifier per class: it cannot take the label-map tasks "
                          f"{', '.join(dense)}; leave op out of --robust")
    if cfg.resume and not state_file.is_file():
        raise ConfigError(f"--resume: no checkpoint in {state_file.parent}; run without --resume to start afresh")


def fit_generator(dataset: MultiTaskImageDataset, cfg: FitConfig, out: Path, on_event: OnEvent | None = None) -> FitResult:
    """Train an MTL-UE generator on `dataset` and write it to `out` (see `hub.save_generator`)."""
    from mtlue_cli.models.persistence import save_generator  # hub imports generator; keep fit importable on its own

    on_event = on_event or noop
    out = Path(out)
    _validate(cfg, dataset, out / "checkpoint" / "state.pt")
    started = time.perf_counter()
    dist = Dist.from_env()
    device = resolve_device(cfg.device, dist.local_rank if dist.enabled else None)
    dist.init(device)
    ctx = FitContext(dataset, cfg.crop or default_crop(cfg.image_size), device, dist, seed_everything(cfg.seed), cfg.amp,
                     on_event)
    method = METHODS[cfg.method]
    stop_error = cfg.stop_error if cfg.stop_error is not None else (
        method.stop_binary if all(dataset.spec.binary) else method.stop_multiclass)
    if dist.is_main:
        (out / "checkpoint").mkdir(parents=True, exist_ok=True)
    n = len(ctx.images)
    log(on_event, f"{cfg.method.upper()} on {n} images at {cfg.image_size} px, device {device}"
        + (f", {dist.world} processes" if dist.enabled else ""))
    maps = [name for name, kind in zip(dataset.spec.names, dataset.spec.kinds) if kind.dense]
    if maps and cfg.epsilon < DENSE_EPSILON:
        log(on_event, f"label maps ({', '.join(maps)}) at {cfg.epsilon * 255:.3g}/255: {DENSE_BUDGET_NOTE}", "warning")

    surrogates = method.surrogates(ctx, cfg, out / "checkpoint" / "surrogate.pt")
    generator = _build_generator(dataset, cfg, method, len(surrogates.attacked)).to(device)
    g_module = dist.wrap(generator, device)
    optimizer = torch.optim.Adam(generator.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched_steps = cfg.scheduler_steps_per_epoch or method.scheduler_steps
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(milestones(cfg.epochs, cfg.milestones)), gamma=0.1)
    # §4.4: SEP stops after epochs/4 generation epochs (UTKFace: 25 epochs, LR drops at 15 and 20).
    max_epochs = epoch_cap = max(1, cfg.epochs // sched_steps)
    parts = {"generator": generator, "optimizer": optimizer, "scheduler": scheduler}
    if surrogates.trainer is not None:
        parts.update(surrogate=surrogates.trainer.model, surrogate_optimizer=surrogates.trainer.optimizer)
    checkpoint = _Checkpoint(out / "checkpoint" / "state.pt", parts, ctx.gen, dist.is_main)
    start_epoch, history = checkpoint.restore() if cfg.resume else (0, [])
    if cfg.resume:
        log(on_event, f"resumed after epoch {start_epoch}")
    attack = _Attack(method, surrogates, binary_mode(cfg.tap_binary, dataset.spec.binary),
                     tap_kinds(dataset.spec.kinds, cfg.tap_dense), tuple(cfg.robust),
                     functools.partial(embedding_regulariser, lambda_intra=cfg.lambda_intra,
                                       lambda_inter=cfg.lambda_inter, form=cfg.intra_form),
                     method.regulariser_scale(len(surrogates.attacked), cfg.sep_recompute),
                     recompute=method.ensemble and cfg.sep_recompute, class_mean=cfg.class_mean)
    em_batches = _cycle(lambda: batch_indices(n, cfg.batch_size, True, ctx.gen, dist=dist))
    final_error, epoch, stopped, stop_reason = 1.0, start_epoch, False, "epoch cap"
    steps = max(1, -(-len(dist.shard(torch.arange(n))) // cfg.batch_size))
    on_event("start", {"stage": "generator", "total": (max_epochs - start_epoch) * steps,
                       "description": f"Generator ({cfg.method.upper()})"})
    progress = _Progress(on_event)
    clean_mean = sum(surrogates.clean_acc) / len(surrogates.clean_acc) if surrogates.clean_acc else None
    try:
        while epoch < max_epochs:
            epoch_started = time.perf_counter()
            loss = _generator_epoch(ctx, attack, g_module, generator, optimizer, cfg.batch_size,
                                    lambda value: progress.step(epoch + 1, value))
            for _ in range(sched_steps):
                scheduler.step()
            if attack.seen:  # the `op` squeeze: the attacker's projection of this epoch's x+δ (issue 29)
                from mtlue_cli.fit.projection import fit_projection

                images, labels = (torch.cat(part) for part in zip(*attack.seen))
                attack.projection, attack.seen = fit_projection(images, labels, dataset.spec.num_classes,
                                                                cfg.seed + epoch), []
            if surrogates.trainer is not None:  # §4.2 (b): two surrogate minibatches on A(x + G(x, y))
                _train_em_surrogate(ctx, surrogates.trainer, g_module, generator, em_batches, cfg.em_train_steps)
            train_mode = surrogates.trainer is not None and cfg.em_stop_mode == "train"
            final_error, true_acc = _stop_check(ctx, generator, surrogates.attacked[-1], method, cfg.batch_size,
                                                train_mode)
            acc_attacked = sum(true_acc) / len(true_acc)
            history.append({"epoch": epoch + 1, "loss": loss, "stop_error": final_error, "true_acc": acc_attacked,
                            "true_acc_tasks": true_acc, "lr": optimizer.param_groups[0]["lr"],
                            "seconds": time.perf_counter() - started})
            # The plan follows the latest epoch's speed until the first LR drop (rank 0's clock decides for every
            # rank, so DDP processes never disagree): a fit that starts while another job shares the CPU would
            # otherwise plan too few epochs and stop at a fraction of its budget.
            first = epoch == start_epoch
            if cfg.time_budget is not None and (first or epoch + 1 < min(scheduler.milestones, default=0) // sched_steps):
                planned = dist.from_main(_plan_epochs(epoch + 1, epoch_cap, time.perf_counter() - epoch_started,
                                                      cfg.time_budget - (time.perf_counter() - started)))
                drops = milestones(planned * sched_steps, None)
                if first or (planned != max_epochs and min(drops) > (epoch + 1) * sched_steps):  # no drop skipped
                    stop_reason = f"the time budget's plan of {planned} epochs"
                    if planned != max_epochs:
                        max_epochs, scheduler.milestones = planned, Counter(drops)
                        on_event("progress", {"stage": "generator", "done": progress.done,
                                              "total": (max_epochs - start_epoch) * steps})
                    log(on_event, f"--time-budget {cfg.time_budget:.0f} s: {max_epochs} generator epochs "
                        f"({time.perf_counter() - epoch_started:.0f} s each; LR drops after epochs "
                        f"{', '.join(str(m // sched_steps) for m in sorted(scheduler.milestones))})"
                        + ("" if first else ", re-planned"))
            on_event("epoch", {"stage": "generator", "epoch": epoch + 1, "of": max_epochs, "loss": loss,
                               "clean_acc": clean_mean, "attacked_acc": acc_attacked, "stop_error": final_error,
                               "seconds": time.perf_counter() - started})
            on_event("progress", {"stage": "generator", "done": progress.done, "epoch": epoch + 1,
                                  "loss": loss, "acc on x+δ": acc_attacked})
            epoch += 1
            if epoch % cfg.checkpoint_every == 0:
                checkpoint.save(epoch, history)
            if final_error <= stop_error:
                stopped, stop_reason = True, f"stop error {final_error:.4g} <= {stop_error:g}"
                break
            if cfg.stop_acc is not None and acc_attacked <= cfg.stop_acc:
                stopped, stop_reason = True, f"surrogate accuracy on x+δ collapsed to {acc_attacked:.1%}"
                break
            # The plan was made after the first epoch; a machine that slows down later still ends on time.
            if cfg.time_budget is not None and epoch < max_epochs and dist.from_main(int(
                    time.perf_counter() - started + (time.perf_counter() - epoch_started) > cfg.time_budget)):
                stop_reason = f"time budget ({epoch} of {max_epochs} planned epochs)"
                break
    except KeyboardInterrupt:
        checkpoint.save(epoch, history)
        raise Interrupted(f"stopped during epoch {epoch + 1}; `mtlue fit ... --out {out} --resume` continues "
                          f"from epoch {epoch}") from None
    on_event("end", {"stage": "generator"})
    checkpoint.save(epoch, history)
    attacked = _attacked_accuracy(ctx, generator, surrogates.attacked[-1], cfg.batch_size)
    result = FitResult(out, cfg.method, epoch, stop_error, final_error, stopped, surrogates.clean_acc, attacked,
                       time.perf_counter() - started, history, stop_reason)
    if dist.is_main:
        save_generator(generator, out, method=cfg.method, record=_record(cfg, dataset, device, dist.world, result))
    dist.barrier()
    return result


def _build_generator(dataset: MultiTaskImageDataset, cfg: FitConfig, method: Method, surrogates: int) -> PerturbationGenerator:
    tasks, task_kinds = dataset.spec.generator_tasks()
    generator = PerturbationGenerator(
        tasks=tasks, task_kinds=task_kinds, image_size=cfg.image_size, epsilon=cfg.epsilon, stem=cfg.stem,
        unprotected=list(cfg.unprotected) or None, conditioning=cfg.conditioning, bound=cfg.bound, width=cfg.width,
        decorrelate=cfg.decorrelate, colour=cfg.colour,
    )
    if method.ensemble and cfg.sep_paper_weighting:
        # §14.1: the official loop moves BN statistics 15x per batch (effective momentum ~0.79).
        for m in generator.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = 1 - 0.9**surrogates
    return generator


@dataclass
class _Checkpoint:
    """The generator loop's resumable state in `path` (only rank 0 writes it): the state dicts of `parts`
    (generator, optimiser, schedule and EM's surrogate), both RNGs, and the epochs done with their history."""

    path: Path
    parts: dict[str, Any]  # name -> an object with state_dict / load_state_dict (modules load strictly)
    gen: torch.Generator
    is_main: bool

    def restore(self) -> tuple[int, list[dict[str, Any]]]:
        """Load the state; returns the epochs done and their history."""
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        for name, part in self.parts.items():
            part.load_state_dict(state[name])
        self.gen.set_state(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        return int(state["epoch"]), list(state["history"])

    def save(self, epoch: int, history: list[dict[str, Any]]) -> None:
        if self.is_main:
            save_atomic({**{name: part.state_dict() for name, part in self.parts.items()}, "rng": self.gen.get_state(),
                         "torch_rng": torch.get_rng_state(), "epoch": epoch, "history": history}, self.path)


@dataclass
class _Progress:
    """Counts generator steps for the progress bar."""

    on_event: OnEvent
    done: int = 0

    def step(self, epoch: int, loss: float) -> None:
        self.done += 1
        self.on_event("progress", {"stage": "generator", "done": self.done, "epoch": epoch, "loss": loss})


@dataclass
class _Attack:
    """The loss of one generation step (§4.1): x + G(x, y), through a drawn squeeze and the method's
    augmentation, into the attacked surrogates, plus the weighted embedding regularisers."""

    method: Method
    surrogates: Surrogates
    binary_mode: str
    kinds: list[Any]  # what the objective reads: the tasks' kinds with --tap-dense applied (methods.tap_kinds)
    robust: tuple[str, ...]
    regulariser: Regulariser
    reg_scale: float
    recompute: bool  # SEP the official way: δ regenerated per checkpoint (sep_recompute, §11)
    projection: Any = None  # the `op` squeeze's projection.Projection, refitted after every epoch
    seen: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # this epoch's uint8 x+δ and labels
    class_mean: float = 0.0  # weight of the class-mean penalty on δ (FitConfig.class_mean, issue 29)

    def backward(self, ctx: FitContext, g_module: nn.Module, generator: PerturbationGenerator, x: torch.Tensor,
                 y: torch.Tensor, targets: Targets) -> torch.Tensor:
        """Backpropagate the step's loss into the generator; returns it. `targets`: what the surrogate's losses read
        (`FitContext.batch`)."""
        if self.recompute:
            return _sep_recompute(ctx, g_module, generator, self.surrogates.attacked, x, y, targets, self.regulariser)
        # EOT over the attacker's squeezes (robust.py; a deviation from §4.1, off in paper-*)
        name, squeeze = random_squeeze(self.robust, ctx.gen, self.projection.apply if self.projection else None)
        xp = perturbed(x, y, g_module, ctx.maps(targets))
        if "op" in self.robust and sum(len(i) for i, _ in self.seen) < OP_IMAGES:  # the attacker fits on released pixels
            self.seen.append(((xp.detach().float().cpu() * 255).round().to(torch.uint8), y.cpu()))
        penalty = self.class_mean * _class_mean(generator, xp - x, y) if self.class_mean else 0.0
        xp = squeeze(xp)  # the images only: a squeeze leaves the label maps as they are
        if self.method.augment:
            xp, targets = augment_batch(ctx, xp, targets)
        logits = [[t.float() for t in s(xp)] for s in self.surrogates.for_squeeze(name)]
        loss = self.method.objective(logits, targets, self.kinds, self.binary_mode) + self.reg_scale * self.regulariser(
            generator.embedding_weights()) + penalty
        loss.backward()
        return loss


def _class_mean(generator: PerturbationGenerator, delta: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """`losses.class_mean_penalty` over the generator's classification tasks (the columns of y they read)."""
    names = [name for name in generator.tasks if name not in generator.task_kinds]
    cols = label_columns(list(generator.tasks), generator.task_kinds, y, len(y))
    return class_mean_penalty(delta, y[:, [cols[n] for n in names]], [len(generator.tasks[n]) for n in names],
                              generator.epsilon)


def _generator_epoch(ctx: FitContext, attack: _Attack, g_module: nn.Module, generator: PerturbationGenerator,
                     optimizer: torch.optim.Optimizer, batch_size: int, on_step: Callable[[float], None]) -> float:
    """One pass of generator updates over this rank's share of the training set; returns the mean loss."""
    g_module.train()
    loss_sum, seen = 0.0, 0
    for idx in batch_indices(len(ctx.images), batch_size, True, ctx.gen, dist=ctx.dist):
        x, y, targets = ctx.batch(idx)
        optimizer.zero_grad(set_to_none=True)
        with autocast(ctx.device, ctx.amp):
            loss = attack.backward(ctx, g_module, generator, x, y, targets)
        optimizer.step()
        loss_sum += float(loss.detach()) * len(idx)
        seen += len(idx)
        on_step(float(loss.detach()))
    return loss_sum / max(seen, 1)


def _train_em_surrogate(ctx: FitContext, trainer: ClassifierTrainer, g_module: nn.Module,
                        generator: PerturbationGenerator, batches: Iterator[torch.Tensor], steps: int) -> None:
    """§4.2 (b): `steps` minibatches of ordinary surrogate training on A(x + G(x, y)), G in eval mode."""
    g_module.eval()
    for _ in range(steps):
        idx = next(batches)
        x, y, targets = ctx.batch(idx)
        with torch.no_grad():
            xp, targets = augment_batch(ctx, perturbed(x, y, generator, ctx.maps(targets)), targets)
        trainer.step(xp, targets)


def _plan_epochs(done: int, cap: int, per_epoch: float, left: float) -> int:
    """Generator epochs that fit the time left after `done` of them (each `per_epoch` s), at most `cap`.
    One epoch's worth is kept back for the final check and the save."""
    return max(done, min(cap, done + int((left - per_epoch) // max(per_epoch, 1e-9))))


def _cycle(make: Callable[[], Any]) -> Any:
    """EM's surrogate batches come from one persistent iterator across generation steps (§14.2)."""
    while True:
        yield from make()


def _sep_recompute(ctx: FitContext, g_module: nn.Module, generator: PerturbationGenerator, surrogates: list[nn.Module],
                   x: torch.Tensor, y: torch.Tensor, targets: Targets, regulariser: Regulariser) -> torch.Tensor:
    """The official SEP step (§4.4, §11): regenerate δ and add the regularisers for every checkpoint,
    summing gradients before one optimiser step. Kept for cost comparisons; ~n_ckpt x slower."""
    total = torch.zeros((), device=x.device)
    for model in surrogates:
        xp = perturbed(x, y, g_module, ctx.maps(targets))
        loss = sep_loss([[t.float() for t in model(xp)]], targets, ctx.kinds) + regulariser(generator.embedding_weights())
        loss.backward()
        total = total + loss.detach()
    return total


def _stop_check(ctx: FitContext, generator: PerturbationGenerator, model: nn.Module, method: Method, batch_size: int,
                train_mode: bool) -> tuple[float, list[float]]:
    """The stop rule's error (against the method's stop target, with its augmentation) and the per-task
    true-label accuracy of the attacked surrogate on x+δ."""
    target_acc, true_acc = accuracy_on_perturbed(ctx, generator, model, batch_size, method.stop_target, method.augment,
                                          train_mode)
    return 1 - float(target_acc.mean()), true_acc.tolist()


def _attacked_accuracy(ctx: FitContext, generator: PerturbationGenerator, model: nn.Module, batch_size: int) -> list[float]:
    """Per-task true-label accuracy of `model` on A(x + G(x, y)): the result's `attacked_train_acc`."""
    return accuracy_on_perturbed(ctx, generator, model, batch_size, true_labels, augmented=True)[1].tolist()


def _record(cfg: FitConfig, dataset: MultiTaskImageDataset, device: torch.device, processes: int,
            result: FitResult) -> dict[str, Any]:
    """fit_record.json: the run's software, config, dataset fingerprint and result."""
    return {
        "tool": "mtlue", "version": __version__, "torch": torch.__version__, "python": platform.python_version(),
        "device": str(device), "processes": processes, "config": _jsonable(asdict(cfg)),
        "dataset": {"root": str(dataset.table.root), "layout": dataset.table.layout, "images": len(dataset.images),
                    "fingerprint": dataset.fingerprint(), "skipped": len(dataset.skipped)},
        "result": _jsonable({k: v for k, v in asdict(result).items() if k != "out"}),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
