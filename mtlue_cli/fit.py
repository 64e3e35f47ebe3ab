"""`fit_generator`: ONE generator-training loop for EM, TAP and SEP (method-spec §4, style rule 4).

The methods differ only by the row of `METHODS`: which surrogate(s) they attack, which targets the
objective and the stop check use, whether x+δ is augmented, and the default stop error.
"""

from __future__ import annotations

import os
import platform
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from mtlue_cli import __version__
from mtlue_cli.classifiers import MTLClassifier, predict
from mtlue_cli.config import FitConfig, default_crop, milestones
from mtlue_cli.data import MultiTaskImageDataset
from mtlue_cli.engine import (ClassifierTrainer, Dist, augment, autocast, batch_indices, evaluate, resolve_device,
                              seed_everything, to_float, train_classifier)
from mtlue_cli.errors import ConfigError, Interrupted
from mtlue_cli.events import OnEvent, log, noop
from mtlue_cli.generator import PerturbationGenerator
from mtlue_cli.losses import em_loss, embedding_regulariser, sep_loss, shifted_targets, tap_loss
from mtlue_cli.robust import check_squeezes, random_squeeze

Objective = Callable[[list[list[torch.Tensor]], torch.Tensor, list[int], str], torch.Tensor]


def _em(logits: list[list[torch.Tensor]], y: torch.Tensor, nc: list[int], binary_mode: str) -> torch.Tensor:
    return em_loss(logits[0], y, nc)


def _tap(logits: list[list[torch.Tensor]], y: torch.Tensor, nc: list[int], binary_mode: str) -> torch.Tensor:
    return tap_loss(logits[0], y, nc, binary_mode=binary_mode)


def _sep(logits: list[list[torch.Tensor]], y: torch.Tensor, nc: list[int], binary_mode: str) -> torch.Tensor:
    return sep_loss(logits, y, nc)


@dataclass(frozen=True)
class Method:
    objective: Objective
    surrogate: str  # "fresh": trained alternately (EM); "final": clean model (TAP); "checkpoints" (SEP)
    target: str  # what the stop check compares predictions with: "true" or "shifted" labels
    augment: bool  # SEP attacks un-augmented x+δ (§3.2)
    stop_multiclass: float  # default stop error with any multi-class task (§4.6, UTKFace script)
    stop_binary: float  # with binary tasks only (CelebA script; error against the flipped labels)


# §4.2-4.4 and §4.6. For binary tasks, error against the flipped labels = 1 - true-label error, so
# "true-label error >= 0.9" (TAP, CelebA) is "flipped error <= 0.1": one stop rule for all.
METHODS: dict[str, Method] = {
    "em": Method(_em, "fresh", "true", True, 0.01, 0.01),
    "tap": Method(_tap, "final", "shifted", True, 1e-4, 0.1),
    "sep": Method(_sep, "checkpoints", "shifted", False, 1e-4, 0.01),
}


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


def _binary_mode(cfg: FitConfig, binary: tuple[bool, ...]) -> str:
    """TAP on binary tasks: the CelebA script is untargeted, the UTKFace script flips gender (§13.6).
    'auto' reproduces each: untargeted when every task is binary, targeted when any is multi-class."""
    if cfg.tap_binary == "auto":
        return "untargeted" if all(binary) else "targeted"
    if cfg.tap_binary not in ("untargeted", "targeted"):
        raise ConfigError(f"--tap-binary must be auto, untargeted or targeted, not {cfg.tap_binary!r}")
    return cfg.tap_binary


def _validate(cfg: FitConfig, dataset: MultiTaskImageDataset) -> None:
    if cfg.method not in METHODS:
        raise ConfigError(f"--method must be em, tap or sep, not {cfg.method!r}")
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ConfigError("--epochs and --batch-size must be at least 1")
    crop = cfg.crop or default_crop(dataset.size)
    if not 8 <= crop <= dataset.size:
        raise ConfigError(f"--crop {crop} must be between 8 and the working size {dataset.size}")
    unknown = [t for t in cfg.unprotected if t not in dataset.spec.names]
    if unknown:
        raise ConfigError(f"--unprotected names unknown task(s) {unknown}; tasks are {list(dataset.spec.names)}")
    if len(cfg.unprotected) == len(dataset.spec.names):
        raise ConfigError("--unprotected lists every task: nothing would be protected")
    check_squeezes(tuple(cfg.robust))
    if cfg.time_budget is not None and cfg.time_budget <= 0:
        raise ConfigError("--time-budget must be positive (e.g. 15m)")


def _freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def fit_generator(dataset: MultiTaskImageDataset, cfg: FitConfig, out: Path, on_event: OnEvent | None = None) -> FitResult:
    """Train an MTL-UE generator on `dataset` and write it to `out` (see `hub.save_generator`)."""
    from mtlue_cli.hub import save_generator  # hub imports generator; keep fit importable on its own

    on_event = on_event or noop
    _validate(cfg, dataset)
    started = time.perf_counter()
    dist = Dist.from_env()
    device = resolve_device(cfg.device, dist.local_rank if dist.enabled else None)
    dist.init(device)
    gen = seed_everything(cfg.seed)
    spec, nc = dataset.spec, dataset.spec.num_classes
    method = METHODS[cfg.method]
    binary_mode = _binary_mode(cfg, spec.binary)
    stop_error = cfg.stop_error if cfg.stop_error is not None else (
        method.stop_binary if all(spec.binary) else method.stop_multiclass)
    crop = cfg.crop or default_crop(dataset.size)
    out = Path(out)
    ckpt_dir = out / "checkpoint"
    if dist.is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    images, labels = dataset.images, dataset.labels  # uint8 (N,3,S,S), long (N,K)
    n = len(images)
    log(on_event, f"{cfg.method.upper()} on {n} images at {dataset.size} px, device {device}"
        + (f", {dist.world} processes" if dist.enabled else ""))

    def surrogate_model() -> MTLClassifier:
        return MTLClassifier(nc, arch=cfg.surrogate, stem=cfg.surrogate_stem, image_size=crop)

    # --- surrogates (§5): the clean model and its periodic checkpoints, cached for --resume
    surrogates: list[nn.Module] = []
    squeezed_surrogates: list[nn.Module] = []  # paired_surrogates: attacked by the squeezed batches
    em_trainer: ClassifierTrainer | None = None
    clean_acc: list[float] | None = None
    surrogate_file = ckpt_dir / "surrogate.pt"
    if method.surrogate == "fresh":
        em_trainer = ClassifierTrainer(surrogate_model(), nc, device=device, amp=cfg.amp, dist=dist)
        surrogates = [em_trainer.model]
    else:
        # robust_surrogate (a deviation from §5, off in paper-*): the surrogate also learns from squeezed
        # images, so the gradient that reaches δ through a squeeze comes from a model that reads such images.
        # paired_surrogates keeps the clean one too, for the unsqueezed batches (the no-defence strength).
        kinds = (["clean"] if not cfg.robust_surrogate or cfg.paired_surrogates else []) + (
            ["squeezed"] if cfg.robust_surrogate else [])
        if cfg.resume and surrogate_file.is_file():
            saved_all = torch.load(surrogate_file, map_location="cpu", weights_only=True)
            saved_all = {kinds[0]: saved_all} if "final" in saved_all else saved_all  # a checkpoint of mtlue <= 0.1
        else:
            saved_all = {}
            for kind in kinds:
                trainer = ClassifierTrainer(surrogate_model(), nc, milestones=milestones(cfg.surrogate_epochs, cfg.surrogate_milestones),
                                            device=device, amp=cfg.amp, dist=dist)
                squeezed = (lambda x: random_squeeze(tuple(cfg.robust), gen)[1](x)) if kind == "squeezed" else None
                result = train_classifier(
                    trainer, images, labels, epochs=cfg.surrogate_epochs, batch_size=cfg.batch_size, crop=crop, gen=gen,
                    checkpoint_every=cfg.sep_every if method.surrogate == "checkpoints" else None, input_transform=squeezed,
                    on_event=on_event, stage="surrogate", description=f"{kind.capitalize()} surrogate",
                )
                saved_all[kind] = {"final": {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()},
                                   "checkpoints": {str(e): s for e, s in result.checkpoints.items()}}
            if dist.is_main:
                _atomic_save(saved_all, surrogate_file)
        for kind in kinds:
            saved = saved_all[kind]
            states = list(saved["checkpoints"].values()) if method.surrogate == "checkpoints" else [saved["final"]]
            for state in states:
                model = surrogate_model()
                model.load_state_dict(state, strict=True)
                (squeezed_surrogates if kind == "squeezed" and cfg.paired_surrogates else surrogates).append(
                    _freeze(model.to(device)))
        saved = saved_all[kinds[0]]
        final = surrogate_model()
        final.load_state_dict(saved["final"], strict=True)
        clean_acc = evaluate(final.to(device), images, labels, nc, crop, device)
        log(on_event, f"clean surrogate train accuracy: " + ", ".join(
            f"{t} {a:.1%}" for t, a in zip(spec.names, clean_acc)) + f" ({len(surrogates)} surrogate(s) attacked)")

    # --- generator, optimiser, schedule (§4.1, §4.4)
    generator = PerturbationGenerator(
        tasks=spec.to_dict(), image_size=dataset.size, epsilon=cfg.epsilon, stem=cfg.stem,
        unprotected=list(cfg.unprotected) or None, conditioning=cfg.conditioning, bound=cfg.bound, width=cfg.width,
    ).to(device)
    n_ckpt = len(surrogates)
    if cfg.method == "sep" and cfg.sep_paper_weighting:
        # §14.1: the official loop moves BN statistics 15x per batch (effective momentum ~0.79).
        for m in generator.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = 1 - 0.9**n_ckpt
    g_module = dist.wrap(generator, device)
    optimizer = torch.optim.Adam(generator.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(milestones(cfg.epochs, cfg.milestones)), gamma=0.1)
    # §4.4: SEP compresses the schedule, stepping the scheduler 4x per generation epoch and stopping
    # after epochs/4 of them (UTKFace: 25 epochs, LR drops at 15 and 20).
    sched_steps = cfg.scheduler_steps_per_epoch or (4 if cfg.method == "sep" else 1)
    max_epochs = max(1, cfg.epochs // sched_steps)
    # The official SEP adds the regularisers once per checkpoint pass; computing δ once keeps the same
    # objective only with them weighted by the number of checkpoints (§14.1).
    reg_scale = float(n_ckpt) if cfg.method == "sep" and not cfg.sep_recompute else 1.0
    start_epoch, history = 0, []
    state_file = ckpt_dir / "state.pt"
    if cfg.resume:
        if not state_file.is_file():
            raise ConfigError(f"--resume: no checkpoint in {ckpt_dir}; run without --resume to start afresh")
        state = torch.load(state_file, map_location="cpu", weights_only=True)
        generator.load_state_dict(state["generator"], strict=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        gen.set_state(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch, history = int(state["epoch"]), list(state["history"])
        if em_trainer is not None:
            em_trainer.model.load_state_dict(state["surrogate"], strict=True)
            em_trainer.optimizer.load_state_dict(state["surrogate_optimizer"])
        log(on_event, f"resumed after epoch {start_epoch}")

    def save_state(epoch: int) -> None:
        if not dist.is_main:
            return
        state = {"generator": generator.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "rng": gen.get_state(), "torch_rng": torch.get_rng_state(),
                 "epoch": epoch, "history": history}
        if em_trainer is not None:
            state["surrogate"] = em_trainer.model.state_dict()
            state["surrogate_optimizer"] = em_trainer.optimizer.state_dict()
        _atomic_save(state, state_file)

    def perturbed(x: torch.Tensor, y: torch.Tensor, module: nn.Module) -> torch.Tensor:
        # x+δ is clamped to the image range, as the released files will be (§13.4 fixed).
        return (x + module(x, y)).clamp(0, 1)

    em_batches = _cycle(lambda: batch_indices(n, cfg.batch_size, True, gen, dist=dist))
    final_error, epoch, stopped, stop_reason = 1.0, start_epoch, False, "epoch cap"
    steps = max(1, -(-len(dist.shard(torch.arange(n))) // cfg.batch_size))
    on_event("start", {"stage": "generator", "total": (max_epochs - start_epoch) * steps,
                       "description": f"Generator ({cfg.method.upper()})"})
    done = 0
    clean_mean = sum(clean_acc) / len(clean_acc) if clean_acc else None
    try:
        while epoch < max_epochs:
            epoch_started = time.perf_counter()
            g_module.train()
            loss_sum, seen = 0.0, 0
            for idx in batch_indices(n, cfg.batch_size, True, gen, dist=dist):
                x, y = to_float(images[idx], device), labels[idx].to(device)
                optimizer.zero_grad(set_to_none=True)
                with autocast(device, cfg.amp):
                    if cfg.method == "sep" and cfg.sep_recompute:
                        loss = _sep_recompute(g_module, generator, surrogates, x, y, nc, cfg, perturbed)
                    else:
                        # EOT over the attacker's squeezes (robust.py; a deviation from §4.1, off in paper-*)
                        name, squeeze = random_squeeze(tuple(cfg.robust), gen)
                        xp = squeeze(perturbed(x, y, g_module))
                        if method.augment:
                            xp = augment(xp, crop, gen)
                        attacked = squeezed_surrogates if squeezed_surrogates and name != "identity" else surrogates
                        logits = [[t.float() for t in s(xp)] for s in attacked]
                        loss = method.objective(logits, y, nc, binary_mode) + reg_scale * embedding_regulariser(
                            generator.embedding_weights(), cfg.lambda_intra, cfg.lambda_inter, cfg.intra_form)
                        loss.backward()
                optimizer.step()
                loss_sum += float(loss.detach()) * len(idx)
                seen += len(idx)
                done += 1
                on_event("progress", {"stage": "generator", "done": done, "epoch": epoch + 1, "loss": float(loss.detach())})
            for _ in range(sched_steps):
                scheduler.step()
            if em_trainer is not None:  # §4.2 (b): two surrogate minibatches on A(x + G(x, y))
                g_module.eval()
                for _ in range(cfg.em_train_steps):
                    idx = next(em_batches)
                    x, y = to_float(images[idx], device), labels[idx].to(device)
                    with torch.no_grad():
                        xp = augment(perturbed(x, y, generator), crop, gen)
                    em_trainer.step(xp, y)
            check = surrogates[-1]
            final_error, true_acc = _stop_check(generator, check, images, labels, nc, method, crop, gen, device,
                                                cfg, dist, em_train_mode=em_trainer is not None and cfg.em_stop_mode == "train")
            acc_attacked = sum(true_acc) / len(true_acc)
            history.append({"epoch": epoch + 1, "loss": loss_sum / max(seen, 1), "stop_error": final_error,
                            "true_acc": acc_attacked, "true_acc_tasks": true_acc, "lr": optimizer.param_groups[0]["lr"],
                            "seconds": time.perf_counter() - started})
            if cfg.time_budget is not None and epoch == start_epoch:
                # Rank 0's clock decides for every rank, so DDP processes never disagree on the schedule.
                planned = dist.from_main(_plan_epochs(epoch + 1, max_epochs, time.perf_counter() - epoch_started,
                                                      cfg.time_budget - (time.perf_counter() - started)))
                stop_reason = f"the time budget's plan of {planned} epochs"
                if planned != max_epochs:
                    max_epochs = planned
                    scheduler.milestones = Counter(milestones(max_epochs * sched_steps, None))
                    on_event("progress", {"stage": "generator", "done": done, "total": (max_epochs - start_epoch) * steps})
                log(on_event, f"--time-budget {cfg.time_budget:.0f} s: {max_epochs} generator epochs "
                    f"({time.perf_counter() - epoch_started:.0f} s each; LR drops after epochs "
                    f"{', '.join(str(m // sched_steps) for m in sorted(scheduler.milestones))})")
            on_event("epoch", {"stage": "generator", "epoch": epoch + 1, "of": max_epochs, "loss": loss_sum / max(seen, 1),
                               "clean_acc": clean_mean, "attacked_acc": acc_attacked, "stop_error": final_error,
                               "seconds": time.perf_counter() - started})
            on_event("progress", {"stage": "generator", "done": done, "epoch": epoch + 1,
                                  "loss": loss_sum / max(seen, 1), "acc on x+δ": acc_attacked})
            epoch += 1
            if epoch % cfg.checkpoint_every == 0:
                save_state(epoch)
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
        save_state(epoch)
        raise Interrupted(f"stopped during epoch {epoch + 1}; `mtlue fit ... --out {out} --resume` continues "
                          f"from epoch {epoch}") from None
    on_event("end", {"stage": "generator"})
    epochs_run = epoch
    save_state(epochs_run)
    _, attacked = _stop_check(generator, surrogates[-1], images, labels, nc, METHODS["em"], crop, gen, device, cfg, dist)
    result = FitResult(out, cfg.method, epochs_run, stop_error, final_error, stopped, clean_acc, attacked,
                       time.perf_counter() - started, history, stop_reason)
    if dist.is_main:
        record = {
            "tool": "mtlue", "version": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "device": str(device), "processes": dist.world, "config": _jsonable(asdict(cfg)),
            "dataset": {"root": str(dataset.table.root), "layout": dataset.table.layout, "images": n,
                        "fingerprint": dataset.fingerprint(), "skipped": len(dataset.skipped)},
            "result": _jsonable({k: v for k, v in asdict(result).items() if k != "out"}),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        save_generator(generator, out, method=cfg.method, record=record)
    dist.barrier()
    return result


def default_recipe(device: str = "auto") -> str:
    """The recipe `auto` stands for: `strong` where a CUDA GPU will run the fit, `quick` elsewhere."""
    return "strong" if resolve_device(device).type == "cuda" else "quick"


def _plan_epochs(done: int, cap: int, per_epoch: float, left: float) -> int:
    """Generator epochs that fit the time left after `done` of them (each `per_epoch` s), at most `cap`.
    One epoch's worth is kept back for the final check and the save."""
    return max(done, min(cap, done + int((left - per_epoch) // max(per_epoch, 1e-9))))


def _cycle(make: Callable[[], Any]) -> Any:
    """EM's surrogate batches come from one persistent iterator across generation steps (§14.2)."""
    while True:
        yield from make()


def _sep_recompute(g_module: nn.Module, generator: PerturbationGenerator, surrogates: list[nn.Module],
                   x: torch.Tensor, y: torch.Tensor, nc: list[int], cfg: FitConfig,
                   perturbed: Callable[..., torch.Tensor]) -> torch.Tensor:
    """The official SEP step (§4.4, §11): regenerate δ and add the regularisers for every checkpoint,
    summing gradients before one optimiser step. Kept for cost comparisons; ~n_ckpt x slower."""
    total = torch.zeros((), device=x.device)
    for surrogate in surrogates:
        xp = perturbed(x, y, g_module)
        loss = sep_loss([[t.float() for t in surrogate(xp)]], y, nc) + embedding_regulariser(
            generator.embedding_weights(), cfg.lambda_intra, cfg.lambda_inter, cfg.intra_form)
        loss.backward()
        total = total + loss.detach()
    return total


@torch.no_grad()
def _stop_check(generator: PerturbationGenerator, surrogate: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                nc: list[int], method: Method, crop: int, gen: torch.Generator, device: torch.device,
                cfg: FitConfig, dist: Dist, em_train_mode: bool = False) -> tuple[float, list[float]]:
    """Error of the surrogate on A(x + G(x, y)) over the whole training set (§4.1), against the method's
    targets; also the per-task accuracy against the true labels. The generator runs in eval mode."""
    generator.eval()
    # §14.1: the official EM check runs the surrogate in train mode (batch BN statistics); 'eval' is ours.
    surrogate.train(em_train_mode)
    hits_target = torch.zeros(len(nc), device=device)
    hits_true = torch.zeros(len(nc), device=device)
    count = torch.zeros((), device=device)
    for idx in batch_indices(len(images), cfg.batch_size, False, None, dist=dist):
        x, y = to_float(images[idx], device), labels[idx].to(device)
        with autocast(device, cfg.amp):
            xp = (x + generator(x, y)).clamp(0, 1)
            if method.augment:
                xp = augment(xp, crop, gen)
            pred = predict([t.float() for t in surrogate(xp)], nc)
        target = shifted_targets(y, nc) if method.target == "shifted" else y
        hits_target += (pred == target).sum(0)
        hits_true += (pred == y).sum(0)
        count += len(idx)
    surrogate.eval()
    dist.all_sum(hits_target), dist.all_sum(hits_true), dist.all_sum(count)
    error = 1 - float((hits_target / count).mean())
    return error, (hits_true / count).tolist()


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value

