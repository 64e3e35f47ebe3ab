"""`verify`: train victims on the protected files AS WRITTEN and on the clean originals, and test
both on clean images that never went through `protect` (method-spec §6; ecosystem §1.1).
`verify_folder` is the one call behind `mtlue verify OUT`: what it is not told comes from OUT/run.json.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mtlue_cli.config import DataConfig, VerifyConfig, default_crop, victim_res
from mtlue_cli.config import milestones as lr_milestones
from mtlue_cli.data.dataset import MultiTaskImageDataset, load_dataset, split_indices
from mtlue_cli.data.images import median_short_side
from mtlue_cli.data.labels import read_labels
from mtlue_cli.errors import ConfigError, DatasetError
from mtlue_cli.events import OnEvent, log, noop
from mtlue_cli.files import write_text
from mtlue_cli.protect import outputs
from mtlue_cli.protect.predicted import labelled_as_originals
from mtlue_cli.verify import dense
from mtlue_cli.verify.verdict import DefenseProfile, TaskRow, VerifyReport, informed_note, judge, mean_sd  # noqa: F401


def verify(clean: DataConfig, protected: Path, cfg: VerifyConfig, test: DataConfig | None = None,
           on_event: OnEvent | None = None) -> VerifyReport:
    """Victim accuracy (label maps: their kind's scores) on clean test images after training on clean vs protected
    files."""
    import torch

    from mtlue_cli.models.dense import build_model
    from mtlue_cli.models.engine import ClassifierTrainer, evaluate, resolve_device, score_tasks, seed_everything
    from mtlue_cli.models.engine import train_classifier
    from mtlue_cli.verify.defenses import expand_defenses, prepare
    from mtlue_cli.verify.plot import missing as missing_plot

    on_event = on_event or noop
    started = time.perf_counter()
    defenses = expand_defenses(cfg.defenses)
    plot_hint = missing_plot() if cfg.plot is not None else None
    if plot_hint:  # said before the victims train, not only after (no brackets: log lines may be read as markup)
        log(on_event, "--plot: matplotlib is not installed, so this run writes no plot (pip install matplotlib, "
            "or mtlue's plot extra); the victims train as usual", "warning")
    protected = Path(protected)
    if not (protected / outputs.LABELS).is_file():
        raise ConfigError(f"{protected}: no {outputs.LABELS}; --protected is a folder written by `mtlue protect`")
    clean_table = read_labels(clean)
    kinds, notes = clean_table.spec.kinds, []
    maps = any(kind.dense for kind in kinds)
    if maps and cfg.metric != "acc":
        raise ConfigError("--metric auc scores class labels only; drop it to verify label maps (each by its own score)")
    cls = dense.classification(kinds)
    if "op" in defenses and not cls:  # the projection is fitted on class labels (fit.projection)
        defenses.remove("op")
        notes.append("defence op skipped: orthogonal projection is fitted on class labels, and these tasks are all "
                     "label maps")
    res = cfg.res or victim_res(outputs.read_run(protected).working_size,
                                median_short_side(clean_table.root, [r.path for r in clean_table.records]))
    clean = dataclasses.replace(clean, size=res)
    prot_cfg = dense.protected_config(clean, clean_table.spec, protected, res)
    sources = outputs.source_map(protected)
    prot_table = read_labels(prot_cfg)
    protected_sources = {sources.get(r.path, r.path) for r in prot_table.records}

    # --- the clean test split: a separate folder, or a seeded split that protect left out
    if test is not None:
        test_set = load_dataset(dataclasses.replace(test, size=res), on_event)
        train_idx = list(range(len(clean_table.records)))
    else:
        train_idx, test_idx = split_indices(clean_table.records, cfg.test_split, cfg.seed)
        leaked = [clean_table.records[i].path for i in test_idx if clean_table.records[i].path in protected_sources]
        if leaked:
            raise ConfigError(
                f"{len(leaked)} of the {len(test_idx)} test images (e.g. {leaked[0]}) were protected, so the test "
                f"would not be clean. Protect with `--holdout {cfg.test_split} --seed {cfg.seed}` (the same split), "
                "or pass a separate --test folder")
        test_set = None
    clean_all = load_dataset(clean, on_event)
    by_path = {r.path: i for i, r in enumerate(clean_all.records)}
    if test_set is None:
        test_paths = {clean_table.records[i].path for i in test_idx}
        test_set = clean_all.subset([by_path[p] for p in sorted(test_paths) if p in by_path])
    # Clean victims train on the clean originals of exactly the protected images.
    clean_train = clean_all.subset([by_path[p] for p in sorted(protected_sources) if p in by_path])
    prot_set = load_dataset(prot_cfg, on_event)
    if len(clean_train) == 0 or len(prot_set) == 0:
        raise DatasetError("no protected image could be paired with its clean original; check --clean and --labels")
    if len(test_set) == 0:
        raise DatasetError("the clean test split is empty; raise --test-split or pass --test")
    spec = clean_all.spec
    if outputs.read_run(protected).predicted_tasks:  # the generator's guesses are not the attacker's labels (issue 30)
        before = len(prot_set)
        prot_set = labelled_as_originals(prot_set, clean_all, sources)
        if len(prot_set) < before:  # reported, never silently dropped
            notes.append(f"{before - len(prot_set)} protected image(s) left out of the victims' training: their "
                         f"originals have no row in the true labels ({clean.labels})")
    prot_set = dense.align(prot_set, spec)
    dense.check_maps(prot_set, clean_train, sources)
    prot_labels = prot_set.labels
    # With label maps, the training and test "labels" are the datasets (their `targets`: maps cropped with images).
    clean_y, prot_y, test_labels = (clean_train, prot_set, test_set) if maps else (clean_train.labels, prot_labels,
                                                                                     test_set.labels)
    nc = spec.num_classes
    device = resolve_device(cfg.device)
    crop = cfg.crop or default_crop(res)
    per_epoch = _seconds_per_epoch(cfg, kinds, crop, device, len(prot_set))
    # Victim seeds apart from the split's (cfg.seed): the same clean test split, victims differing in init, batch
    # order, crops and the defence's own draws.
    first = cfg.seed if cfg.victim_seed is None else cfg.victim_seed
    seeds = list(range(first, first + cfg.seeds))
    victims = count_victims(len(defenses), len(nc) if cfg.stl else 0, cfg.profile, cfg.seeds)
    if cfg.time_budget is not None:
        # The plan counts the clean victims whether or not their results are cached: the epochs are part of the
        # cache key, so a plan that depended on the cache would change the key it was looked up by.
        epochs = plan_epochs(cfg.epochs, cfg.time_budget, victims, per_epoch)
        if epochs < cfg.epochs:
            log(on_event, f"time budget {cfg.time_budget / 60:.0f} min: {epochs} epochs per victim instead of {cfg.epochs} "
                "(--time-budget none trains the full recipe)")
        cfg = dataclasses.replace(cfg, epochs=epochs)
    clean_defenses = defenses if cfg.profile else ["none"]
    cache_files = {(d, s): _cache_dir() / f"{_cache_key(clean_train, test_set, cfg, res, crop, d, s)}.json"
                   for d in clean_defenses for s in seeds}
    cached = [key for key in cache_files if cfg.cache and cache_files[key].is_file()]
    trained = victims - len(cached)
    log(on_event, f"expected time: about {max(1, round(trained * per_epoch * cfg.epochs / 60))} min for {trained} victim(s): "
        f"protected-trained with {', '.join(defenses)}, clean-trained with {', '.join(clean_defenses)}"
        f"{', STL' if cfg.stl else ''}" + (f"; {cfg.seeds} victim seeds each ({seeds[0]}-{seeds[-1]})" if cfg.seeds > 1 else "")
        + (f" ({len(cached)} clean-trained result(s) cached)" if cached else ""))
    milestones = lr_milestones(cfg.epochs, cfg.milestones)
    # The chance level a victim must beat: the majority class or a uniform guess for accuracy, 0.5 for AUC; a label
    # map's no-skill predictor.
    majority, trivial = dense.baselines(kinds, clean_train, test_set, crop, cfg.metric)
    chance = [0.0 if kind.dense else kind.chance if cfg.metric == "acc" else 0.5 for kind in kinds]
    log(on_event, f"victim {cfg.victim} ({cfg.victim_stem} stem), {cfg.epochs} epochs at {res} px (crop {crop}), "
        f"{len(prot_set)} protected / {len(clean_train)} clean training images, {len(test_set)} clean test images")
    detectability = None
    if cfg.detect and not cls:
        notes.append("--detect skipped: the linear probe reads class labels, and these tasks are all label maps")
    elif cfg.detect:
        from mtlue_cli.verify.detect import detect

        log(on_event, "detectability: linear probes on the protected images and on the originals"
            + (" (classification tasks)" if maps else ""))
        detectability = detect(prot_set.images, prot_labels[:, cls], clean_train.images, clean_train.labels[:, cls],
                               [spec.names[k] for k in cls], [nc[k] for k in cls], cfg.seed)

    def run(images: Any, labels: Any, name: str, task_weights: Any = None, test_images: Any = None,
            batch_transform: Any = None, seed: int = first) -> tuple[Any, ...]:
        gen = seed_everything(seed)  # the same init and batch order for every victim of one seed
        model = build_model(kinds, arch=cfg.victim, stem=cfg.victim_stem, image_size=crop)
        trainer = ClassifierTrainer(model, kinds, lr=cfg.lr, weight_decay=cfg.weight_decay, milestones=milestones,
                                    weighting=cfg.weighting, device=device, amp=cfg.amp, task_weights=task_weights)
        result = train_classifier(trainer, images, labels, epochs=cfg.epochs, batch_size=cfg.batch_size, crop=crop,
                                  gen=gen, input_transform=batch_transform, adv_train=cfg.adv_train, metric=cfg.metric,
                                  evaluate_on=(test_set.images if test_images is None else test_images, test_labels),
                                  on_event=on_event, stage=name, description=name)
        # §14.2: the last epoch is the reported figure; the best epoch is shown beside it (a poison
        # that only delays learning shows up there).
        curve = [record["test_acc_tasks"] for record in result.history]
        best = dense.best_scores(result.history, kinds)
        train_acc = evaluate(trainer.model, images, labels, kinds, crop, device, metric=cfg.metric)
        # Label maps: every score of the last epoch (mIoU and pixel accuracy, depth and angular errors).
        scores = (score_tasks(trainer.model, test_set.images if test_images is None else test_images, test_set, kinds,
                              crop, device) if maps else [{} for _ in kinds])
        return curve[-1], best, train_acc, curve, scores

    def victim(trained_on: str, defense: str, seed: int) -> tuple[Any, ...]:
        """One victim trained on the clean originals or the protected files, under `defense`."""
        images, labels = (clean_train.images, clean_y) if trained_on == "clean" else (prot_set.images, prot_y)
        class_labels = (clean_train if trained_on == "clean" else prot_set).labels[:, cls]
        # A preprocessing defence (grayscale, blur, projection) is the attacker's deployed pipeline too: the
        # victim is tested on clean test images put through it (ISS; JPEG and bit depth train-only). The projection
        # is fitted on the classification tasks.
        prepared = prepare(defense, images, class_labels, [nc[k] for k in cls], test_set.images, seed)
        out = run(prepared.images, labels, f"{trained_on} victim ({defense})"
                  + (f", seed {seed}" if len(seeds) > 1 else ""), test_images=prepared.test_images,
                  batch_transform=prepared.batch_transform, seed=seed)
        on_event("victim", {"trained_on": trained_on, "defense": defense, "seed": seed, "final": out[0], "best": out[1]})
        return out

    def clean_victim(defense: str, seed: int) -> tuple[Any, ...] | None:
        """The clean-trained victim's final, best, curve and scores: from the cache, trained, or None (not asked for)."""
        cache_file = cache_files.get((defense, seed))
        if cache_file is None:  # no --profile: the clean-trained victim is trained without defence only
            return None
        if (defense, seed) in cached:
            found = json.loads(cache_file.read_text())
            log(on_event, f"clean victim ({defense}): cached result reused ({cache_file})")
            return found["final"], found["best"], found["curve"], found.get("scores") or [{} for _ in kinds]
        final, best, _, curve, scores = victim("clean", defense, seed)
        if cfg.cache:
            cache_file.parent.mkdir(parents=True, exist_ok=True)  # atomic: parallel runs may share the cache
            write_text(cache_file, json.dumps({"final": final, "best": best, "curve": curve, "scores": scores}))
        return final, best, curve, scores

    rows = [TaskRow(spec.names[k], majority[k], 0.0, 0.0, 0.0, 0.0, 0.0, chance=chance[k], kind=kind.name,
                    metric=kind.primary, higher_is_better=kind.higher_is_better, trivial=trivial[k],
                    ratio_threshold=cfg.dense_threshold if kind.dense else None) for k, kind in enumerate(kinds)]
    curves: dict[str, dict[str, list[list[float]]]] = {"clean": {}, "protected": {}}
    for defense in defenses:
        cleans = [c for c in (clean_victim(defense, seed) for seed in seeds) if c is not None]
        prots = [victim("protected", defense, seed) for seed in seeds]
        curves["protected"][defense] = _mean_curve([p[3] for p in prots])
        if cleans:
            curves["clean"][defense] = _mean_curve([c[2] for c in cleans])
        for k, row in enumerate(rows):
            row.by_defense_seeds[defense] = [p[0][k] for p in prots]
            row.by_defense[defense] = mean_sd(row.by_defense_seeds[defense])[0]
            if row.dense:
                row.scores_by_defense[defense] = dense.mean_scores([p[4][k] for p in prots])
            if cleans:
                row.clean_by_defense_seeds[defense] = [c[0][k] for c in cleans]
                row.clean_by_defense[defense] = mean_sd(row.clean_by_defense_seeds[defense])[0]
            if defense == "none":
                row.clean_acc = row.clean_by_defense[defense]
                row.clean_best = mean_sd([c[1][k] for c in cleans])[0]
                row.clean_scores = dense.mean_scores([c[3][k] for c in cleans]) if row.dense else {}
                row.protected_acc = row.by_defense[defense]
                row.protected_best, row.protected_train_acc = (mean_sd([p[i][k] for p in prots])[0] for i in (1, 2))
    if cfg.stl:
        for k, row in enumerate(rows):
            weights = torch.nn.functional.one_hot(torch.tensor(k), len(nc)).float()
            row.stl_clean_acc = run(clean_train.images, clean_y, f"STL clean {row.task}", weights)[0][k]
            row.stl_protected_acc = run(prot_set.images, prot_y, f"STL protected {row.task}", weights)[0][k]
    recipe = {"victim": cfg.victim, "stem": cfg.victim_stem, "epochs": cfg.epochs, "milestones": list(milestones),
              "res": res, "crop": crop, "batch_size": cfg.batch_size, "lr": cfg.lr, "weighting": cfg.weighting,
              "adv_train": cfg.adv_train, "seed": cfg.seed, "victim_seeds": seeds, "metric": cfg.metric,
              "augment": "per-sample random crop + flip" + (", label maps cropped and flipped with their images" if maps else ""),
              "device": str(device), "test": "separate folder" if test is not None else f"seeded split {cfg.test_split}"}
    report = VerifyReport(rows, defenses, len(prot_set), len(test_set), outputs.quality(protected), recipe, cfg.threshold,
                          curves=curves, detect=detectability, notes=notes,
                          dense_threshold=cfg.dense_threshold if maps else None)
    informed = informed_note(report.broken_by)
    if informed:
        report.notes.append(informed)
    if cfg.plot is not None and not plot_hint:
        from mtlue_cli.verify.plot import plot_curves

        report.plot = str(plot_curves(report, cfg.plot))
    elif plot_hint:
        report.notes.append(f"no plot written: {plot_hint}")
    report.seconds = time.perf_counter() - started
    return report


@dataclass(frozen=True)
class VerifyRequest:
    """What `mtlue verify` was pointed at. A field left None is what `protect` recorded in OUT/run.json (the
    originals, their labels and how to read them, the holdout and its seed); a given one wins."""

    protected: Path
    clean: Path | None = None
    labels: Path | None = None
    layout: str = "auto"  # auto: the recorded layout
    path_column: str | None = None
    tasks: tuple[str, ...] | None = None
    test: Path | None = None  # a separate folder of clean test images
    test_labels: Path | None = None  # default: `labels`
    test_split: float | None = None  # default: protect's --holdout, else 0.2
    seed: int | None = None  # default: protect's --seed, else 0
    skip_bad: bool = False
    workers: int = 2
    # The originals' label maps (DataConfig's fields); None: what run.json records of them.
    maps: tuple[str, ...] | None = None
    map_columns: tuple[str, ...] | None = None
    ignore_index: int | None = None
    depth_scale: float | None = None
    save: bool = False  # also write the report to OUT/verify.json (what `publish` puts in the card)


def verify_folder(request: VerifyRequest, cfg: VerifyConfig, on_event: OnEvent | None = None) -> VerifyReport:
    """`mtlue verify`: fill in from OUT/run.json what the request leaves out, run `verify`, and save the report
    beside the protected files when asked (a note says so if it cannot)."""
    protected = Path(request.protected)
    run = outputs.read_run(protected)
    clean_root = request.clean or run.input_root
    if clean_root is None:
        raise ConfigError(f"{protected}: no run.json names the originals; pass --clean")
    test_split = request.test_split if request.test_split is not None else (
        run.holdout if run.holdout is not None else 0.2)
    if not test_split and request.test is None:
        raise ConfigError(f"{protected} was protected without --holdout, so no clean test split was left out: "
                          "protect again with --holdout 0.2, or pass --test with separate clean images")
    seed = request.seed if request.seed is not None else (run.seed if run.seed is not None else 0)
    cfg = dataclasses.replace(cfg, test_split=test_split, seed=seed)
    layout = run.layout if request.layout == "auto" and run.layout else request.layout
    labels = request.labels or run.labels_file
    sanity = labels is None and layout == "unlabelled" and (protected / outputs.PREDICTED).is_file()
    if sanity:  # no true labels anywhere: only the generator's own guesses to check against (issue 30)
        labels, layout = protected / outputs.PREDICTED, "csv"
    elif layout == "unlabelled" and labels is not None:  # protected without labels, verified with the true ones
        layout = "auto"
    where = dict(labels=labels, layout=layout, tasks=request.tasks or run.tasks,
                 path_column=request.path_column or run.data.get("path_column"), split="all",
                 skip_bad=request.skip_bad, workers=request.workers, **_map_fields(request, run))
    clean = DataConfig(root=clean_root, **where)
    test = None
    if request.test is not None:
        test = DataConfig(root=request.test, **{**where, "labels": request.test_labels or where["labels"]})
    report = verify(clean, protected, cfg, test, on_event)
    if sanity:  # never a verdict of "effective", and not saved: publish would put it on the card as a measure
        report.sanity = True
        report.notes.insert(0, f"SANITY CHECK ONLY: these images have no true labels, so the victims used the labels "
                            f"mtlue predicted ({outputs.PREDICTED}). An attacker labels the images their own way: pass "
                            f"--labels with true labels to measure the protection (this run is not saved to "
                            f"{outputs.VERIFY})")
    if request.save and not sanity:
        try:
            outputs.write_verify(protected, report.to_dict())
        except OSError as exc:
            report.notes.append(f"could not write {protected / outputs.VERIFY}: {exc}")
    return report


def _map_fields(request: VerifyRequest, run: outputs.RunRecord) -> dict[str, Any]:
    """The originals' label-map options: the request's where given, else run.json's `data`, else DataConfig's."""
    out: dict[str, Any] = {}
    for name in ("maps", "map_columns", "ignore_index", "depth_scale"):
        value = getattr(request, name)
        value = run.data.get(name) if value is None else value
        if value is not None:
            out[name] = tuple(value) if name in ("maps", "map_columns") else value
    return out


def count_victims(defenses: int, stl_tasks: int = 0, profile: bool = True, seeds: int = 1) -> int:
    """Victims a run trains: per victim seed, a protected-trained one per defence ('none' included) and a
    clean-trained one per defence with `profile` (else one, without defence); two per task for --stl (0 tasks
    without it; first seed only)."""
    return seeds * (defenses + (defenses if profile else 1)) + 2 * stl_tasks


def _mean_curve(curves: list[list[list[float]]]) -> list[list[float]]:
    """Per epoch and task, the mean over the victim seeds' test-accuracy curves."""
    return [[sum(v) / len(v) for v in zip(*epoch)] for epoch in zip(*curves)]


def plan_epochs(epochs: int, budget: float, victims: int, seconds_per_epoch: float) -> int:
    """The most epochs (at least 1, at most `epochs`) that `victims` victims fit in `budget` seconds."""
    return max(1, min(epochs, int(budget / (victims * seconds_per_epoch))))


def _seconds_per_epoch(cfg: VerifyConfig, kinds: list[Any], crop: int, device: Any, n: int) -> float:
    """Time three real training steps (after one warm-up) of the victim these task kinds get (label maps: the dense
    network): the cost of one victim epoch, evaluation included."""
    import torch

    from mtlue_cli.models.dense import build_model
    from mtlue_cli.models.engine import ClassifierTrainer

    trainer = ClassifierTrainer(build_model(kinds, arch=cfg.victim, stem=cfg.victim_stem, image_size=crop), kinds,
                                device=device, amp=cfg.amp)
    x = torch.rand(min(cfg.batch_size, n), 3, crop, crop, device=device)
    y = dense.random_targets(kinds, len(x), crop)
    y = y.to(device) if isinstance(y, torch.Tensor) else [t.to(device) for t in y]
    trainer.step(x, y)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(3):
        trainer.step(x, y)
    sync()
    per_step = (time.perf_counter() - start) / 3 * (11 if cfg.adv_train else 1)  # PGD-10 + the update
    steps_per_epoch = max(1, n // cfg.batch_size)
    # + test evaluation each epoch, roughly a quarter of a training pass
    return per_step * steps_per_epoch * 1.25


def _cache_dir() -> Path:
    return Path(os.environ.get("MTLUE_CACHE_DIR") or Path.home() / ".cache" / "mtlue") / "verify"


def _cache_key(train: MultiTaskImageDataset, test: MultiTaskImageDataset, cfg: VerifyConfig, res: int, crop: int,
               defense: str = "none", seed: int | None = None) -> str:
    """A clean-trained victim depends only on the clean pixels, the labels, the recipe, its defence and its seed."""
    # adv_train stays in: the clean victim is trained adversarially too. time_budget is out: the epochs
    # it chose are in the recipe already. The victim's own seed stands in `seed` (the split is in the
    # train/test fingerprints), so a one-seed run keeps the key it had before victim seeds existed.
    recipe = {k: v for k, v in asdict(cfg).items()
              if k not in ("defenses", "stl", "threshold", "dense_threshold", "device", "cache", "time_budget", "detect", "plot", "profile",
                           "seeds", "victim_seed")}
    if seed is not None:
        recipe["seed"] = seed
    h = hashlib.sha256(json.dumps([recipe, res, crop, defense], sort_keys=True, default=str).encode())
    h.update(train.fingerprint().encode())
    h.update(test.fingerprint().encode())
    return h.hexdigest()[:32]
