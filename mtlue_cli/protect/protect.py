"""`protect_dataset`: write protected copies at native resolution, losslessly, with a manifest.

One file's work (δ onto the original, in bands of rows; encode; measure) is in `encode`; the folder's format
(manifest, labels.csv, run.json) in `outputs`; which files each torchrun process takes in `shard`; the label maps
of dense tasks (read at the working size for the generator, copied byte-identical) in `maps`.
`protect_folder` is the one call behind `mtlue protect`: with a generator, or fitting one first.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from mtlue_cli.config import DataConfig, FitConfig, ProtectConfig
from mtlue_cli.data.dataset import held_out, split_indices
from mtlue_cli.data.dense_labels import reading_of
from mtlue_cli.data.images import EXTENSIONS, Decoded, decode, to_working
from mtlue_cli.data.labels import UNLABELLED, LabelTable, Record, TaskSpec, read_labels
from mtlue_cli.errors import ConfigError, DatasetError, FileProblem, ProtectFailed, examples, raise_problems
from mtlue_cli.events import OnEvent, log, noop
from mtlue_cli.files import file_sha256
from mtlue_cli.models.persistence import LoadedGenerator
from mtlue_cli.protect import maps, outputs, shard
from mtlue_cli.protect.encode import write_array, write_preview, write_protected
from mtlue_cli.protect.outputs import FileResult
from mtlue_cli.protect.predicted import predict_missing, write_predicted
from mtlue_cli.protect.threads import generator_threads, resolve_workers


@dataclass
class ProtectReport:
    out: Path
    total: int
    written: int
    resumed: int
    failed: list[FileResult]
    held_out: int
    epsilon_255: float
    max_linf_255: int
    mean_psnr: float
    mean_ssim: float
    seconds: float
    images_per_second: float
    format: str
    preview: Path | None = None
    warnings: list[str] = field(default_factory=list)
    protected_tasks: list[str] = field(default_factory=list)
    unprotected_tasks: list[str] = field(default_factory=list)  # the generator's tasks left learnable
    unlabelled: list[str] = field(default_factory=list)  # --skip-bad: images without a label row, not protected
    predicted_tasks: list[str] = field(default_factory=list)  # labels the generator's labeller gave (issue 30)
    fit: Any = None  # fitting.FitReport when the generator was fitted for this run

    @property
    def within_budget(self) -> bool:
        """Every file as written within ±ε (JPEG output is lossy: its measured L-inf is shown, not judged)."""
        return self.format == "jpeg" or self.max_linf_255 <= round(self.epsilon_255)

    @property
    def complete(self) -> bool:
        """Every image under DATA outside the holdout was protected (exit code 0; else 3)."""
        return not self.failed and not self.unlabelled


def _label_remap(table: LabelTable, tasks: dict[str, list[str]]) -> tuple[list[tuple[int, np.ndarray | None]], list[str]]:
    """Dataset class indices -> generator class indices, by task and class name.

    A value that is not one of the generator's class names may be its class index ("1" for the
    second class), but only where the names themselves are not numbers (else "1" would be ambiguous).
    Tasks the labels lack are returned as `missing`: they take the generator's label-free mean
    embedding (method-spec §2.4) and stay unprotected. Returns ([(dataset task, remap)], missing)."""
    missing = [t for t in tasks if t not in table.spec.names]
    if len(missing) == len(tasks):
        raise DatasetError(f"the labels have none of the generator's tasks {list(tasks)} (they have "
                           f"{list(table.spec.names) or 'none'}); pass labels with one of them, or let a generator with "
                           "a labeller predict them (no --no-predict-labels)")
    remap: list[tuple[int, np.ndarray | None]] = []
    for name in (t for t in tasks if t not in missing):
        k = table.spec.names.index(name)
        if table.spec.dense[k]:  # a label map, not a class: `maps.dense_tasks` checked it
            remap.append((k, None))
            continue
        vocab = {c: i for i, c in enumerate(tasks[name])}
        if not any(c.lstrip("-").isdigit() for c in tasks[name]):  # names, not numbers: indices allowed too
            vocab.update({str(i): i for i in range(len(tasks[name]))})
        unknown = [c for c in table.spec.classes[k] if c not in vocab]
        if unknown:
            indices = "" if len(vocab) == len(tasks[name]) else f" (or their indices 0-{len(tasks[name]) - 1})"
            raise DatasetError(f"task {name!r} has value(s) {unknown} that the generator never saw; its vocabulary "
                               f"is {tasks[name]}{indices}. Fit a generator on these labels or fix them")
        remap.append((k, np.array([vocab[c] for c in table.spec.classes[k]])))
    return remap, missing


def _check_inputs(table: LabelTable, data: DataConfig) -> None:
    """Stop before any work on images without a label row (they would silently stay unprotected) and, without
    --skip-bad, on unusable label rows. One line for the unlabelled images, however many there are."""
    if data.skip_bad:
        return
    if table.unlabelled:
        raise DatasetError(f"{len(table.unlabelled)} files: {UNLABELLED} (e.g. {examples(table.unlabelled)}). "
                           "Or pass --skip-bad to protect the labelled images; the report then lists these")
    raise_problems(table.bad)


class _Results:
    """This rank's results as they come in: each one on its manifest line at once; --strict stops at a failure."""

    def __init__(self, manifest: outputs.ManifestWriter, strict: bool, done: dict[str, FileResult]) -> None:
        self.manifest, self.strict = manifest, strict
        self.ok, self.failed = done, []  # ok: source -> result (written or resumed)

    def commit(self, result: FileResult) -> None:
        if result.status != "failed":  # a failed duplicate row must not mask its twin, nor be masked
            # Kept for the report and labels.csv, which need no hashes: the manifest has them (22 MB per 100k files).
            self.ok[result.source] = replace(result, sha256_in="", sha256_out="")
        self.manifest.write(result)
        if result.status == "failed":
            self.failed.append(result)
            if self.strict:
                raise ProtectFailed(f"{result.source}: {result.reason} (--strict stops at the first failed file)")


def protect_dataset(loaded: LoadedGenerator, data: DataConfig, out: Path, cfg: ProtectConfig,
                    on_event: OnEvent | None = None) -> ProtectReport:
    """Write a protected copy of every labelled image of `data` under `out`, at the generator's working size.

    Under torchrun (WORLD_SIZE > 1) each process protects its share of the files (`shard.share`) on its
    LOCAL_RANK device and writes its own manifest part; rank 0 merges the parts and writes labels.csv and
    run.json once. Every rank returns the same report."""
    import torch

    from mtlue_cli.models.engine import Dist, autocast, resolve_device

    dist = Dist.from_env()
    on_event = (on_event or noop) if dist.is_main else noop
    root, out = Path(data.root), Path(out)
    outputs.check_out(root, out, cfg)
    started = time.perf_counter()
    device = resolve_device(cfg.device, dist.local_rank if dist.enabled else None)
    dist.init(device)
    dist = dist.patient()  # a rank that finishes its share early may wait long for the others
    model = loaded.model.to(device).eval()
    tasks, size, epsilon = model.tasks, model.image_size, float(model.epsilon)
    table, predicted, guessed = read_labels(data), [], set()
    if cfg.predict_labels:  # tasks the labels lack, from the generator's labeller (issue 30)
        table, predicted, guessed = predict_missing(table, loaded, data, on_event)
    dense = maps.dense_tasks(table.spec, table.layout, tasks, model.task_kinds)
    remap, missing = _label_remap(table, tasks)
    protected_tasks = [t for t in tasks if t not in missing and t not in model.unprotected]
    if not protected_tasks:
        raise ConfigError(f"the labels' tasks {[t for t in tasks if t not in missing]} are ones this generator leaves "
                          "unprotected: nothing would be protected")
    _check_inputs(table, data)
    warnings = _warnings(table, tasks, missing, protected_tasks, cfg)
    for w in warnings:
        log(on_event, w, "warning")
    if dist.enabled:
        log(on_event, f"{dist.world} processes, each protecting one batch of {cfg.batch_size} files in {dist.world}")

    train_idx, test_idx = split_indices(table.records, cfg.holdout, cfg.seed)
    records = [table.records[i] for i in train_idx]
    names = outputs.output_names((r.path for r in records), EXTENSIONS[cfg.format])
    # --overwrite: the old manifest is deleted below, so nothing counts as done.
    previous = outputs.load_manifest(out) if cfg.resume and not cfg.overwrite and out.is_dir() else {}
    mine = [records[i] for i in shard.share(len(records), cfg.batch_size, dist.rank, dist.world)]
    resumed, todo = _resumable(mine, names, previous, root, out, dense)

    dist.barrier()  # every rank has checked --out and read the old manifest before any rank writes
    if dist.is_main:
        if cfg.overwrite and out.exists():
            outputs.clear(out)
        out.mkdir(parents=True, exist_ok=True)
        if cfg.resume:
            shard.fold_parts(out)  # an interrupted run's parts, before this run writes its own
    dist.barrier()
    manifest = outputs.ManifestWriter(out / outputs.MANIFEST if not dist.enabled else outputs.part_path(out, dist.rank),
                                      append=cfg.resume and not dist.enabled)
    results = _Results(manifest, cfg.strict, resumed)
    try:
        # Label-level problems (kept with --skip-bad): recorded, reported, counted; by rank 0 only.
        for problem in table.bad if dist.is_main else []:
            reason = f"{problem.reason} (labels row {problem.row})" if problem.row else problem.reason
            results.commit(FileResult(problem.path, None, "failed", reason=reason))
        mode = "L" if model.in_channels == 1 else "RGB"

        def generate(x: np.ndarray, y: np.ndarray, m: list[list[np.ndarray | None]]) -> Any:  # -> (B,C,S,S) δ
            x_t = torch.from_numpy(x)  # (B,S,S[,C]) uint8; y (B,K); m: each image's working-size maps
            x_t = (x_t[..., None] if x_t.ndim == 3 else x_t).permute(0, 3, 1, 2).contiguous()  # NCHW: the fast path
            batch = maps.batch(m, len(tasks)) if dense.used else None
            with torch.inference_mode(), autocast(device, cfg.amp):
                return model(x_t.to(device).float().div_(255), torch.from_numpy(y).to(device),
                             protect=protected_tasks, maps=batch).float().cpu()

        def labels(batch: list[Record]) -> np.ndarray:
            y = np.zeros((len(batch), len(tasks)), dtype=np.int64)  # missing and dense tasks: any index, unused
            for j, (k, m) in zip((i for i, t in enumerate(tasks) if t not in missing), remap):
                if m is not None:
                    y[:, j] = [int(m[r.labels[k]]) for r in batch]
            return y

        def write(r: Record, d: Decoded, delta: Any) -> FileResult:
            result = (write_array(r, delta, root, out, names[r.path], epsilon) if d.array is not None
                      else write_protected(r, d, delta, root, out, names[r.path], epsilon, cfg))
            return maps.carry(result, r, dense, root, out)

        reading = reading_of(data)
        with generator_threads(device, resolve_workers(cfg)):
            _protect_files(todo, generate, labels, lambda r: _decode(root, r, size, mode, dense, reading, len(tasks)),
                           write, results, cfg, data.skip_bad, on_event)
    finally:
        manifest.close()
    ok, failures = (results.ok, results.failed) if not dist.enabled else shard.gather(out, records, previous, dist)
    done = [ok[r.path] for r in records if r.path in ok]  # in protect's order
    if dist.is_main:
        # A label-map task's column: where its map was copied; a class task's: the class, as the user wrote it.
        outputs.write_labels(out, ["path", *table.spec.names], [
            [names[r.path], *_row(table.spec, r, dense.outputs(r, names[r.path]) if dense.indices else [])]
            for r in sorted((r for r in records if r.path in ok), key=lambda r: r.path)])
        maps.write_id2label(out, dense)
        if predicted:
            write_predicted(out, table, predicted, guessed)
    preview = None
    if dist.is_main and cfg.preview and done:
        shown = [r for r in records if r.path in ok][:cfg.preview]  # done's order
        captions = [f"{r.path}: " + ", ".join(f"{t}={table.spec.classes[k][v]}" for k, (t, v) in
                                              enumerate(zip(table.spec.names, r.labels)) if not table.spec.dense[k])
                    for r in shown]
        preview = write_preview([(root / ok[r.path].source, out / str(ok[r.path].output)) for r in shown],
                                outputs.preview_path(out), epsilon, captions)
    seconds = time.perf_counter() - started
    written = sum(r.status == "ok" for r in done)
    finite_psnr = [r.psnr for r in done if r.psnr is not None and r.psnr != float("inf")]
    report = ProtectReport(
        out=out, total=len(records) + len(test_idx), written=written, resumed=len(done) - written,
        failed=failures, held_out=len(test_idx),
        epsilon_255=epsilon * 255, max_linf_255=max((r.linf_255 or 0 for r in done), default=0),
        mean_psnr=float(np.mean(finite_psnr)) if finite_psnr else float("inf"),
        mean_ssim=float(np.mean([r.ssim for r in done if r.ssim is not None])) if done else float("nan"),
        seconds=seconds, images_per_second=written / seconds if seconds else 0.0, format=cfg.format,
        preview=preview, warnings=warnings, protected_tasks=protected_tasks,
        unprotected_tasks=[t for t in tasks if t not in protected_tasks], unlabelled=table.unlabelled,
        predicted_tasks=predicted,
    )
    if dist.is_main:
        generator = {"spec": loaded.spec, "source": loaded.source, "revision": loaded.revision,
                     "sha256": loaded.sha256, "method": loaded.method, "image_size": size}
        outputs.write_run(out, outputs.run_record(
            generator=generator, epsilon=epsilon, tasks=TaskSpec.from_generator(tasks, model.task_kinds).to_dict(),
            label_tasks=table.spec.to_dict(), predicted_tasks=predicted, data=data, layout=table.layout,
            labels_file=table.labels_file, labels_sha256=file_sha256(table.labels_file) if table.labels_file else None,
            config=asdict(cfg), held_out=[table.records[i].path for i in test_idx], holdout=cfg.holdout, seed=cfg.seed,
            summary={k: v for k, v in asdict(report).items() if k not in ("failed", "out", "preview", "fit")},
            device=str(device), processes=dist.world, torch_version=torch.__version__))
    dist.barrier()  # no rank returns before the folder is complete
    return report


def _warnings(table: LabelTable, tasks: dict[str, list[str]], missing: list[str], protected_tasks: list[str],
              cfg: ProtectConfig) -> list[str]:
    warnings = []
    if missing:
        warnings.append(f"your labels lack task(s) {missing}: they are NOT protected (the generator uses its "
                        f"label-free mean for them); protected: {protected_tasks}")
    if cfg.format == "jpeg":
        warnings.append(f"JPEG output (quality {cfg.quality}) is lossy: re-compression weakens the protection "
                        "(ISS JPEG-10 restores most accuracy). The measured L-inf below shows what is left.")
    extra = [t for t in table.spec.names if t not in tasks]
    if extra:
        warnings.append(f"task(s) {extra} are not protected by this generator (kept in labels.csv as they are)")
    return warnings


def _row(spec: TaskSpec, record: Record, copied: list[str]) -> list[str]:
    """labels.csv's task columns of one image: each class task's class, each label-map task's copied map."""
    places = iter(copied)
    return [next(places) if dense else spec.classes[k][v] for k, (v, dense) in enumerate(zip(record.labels, spec.dense))]


def _resumable(records: list[Record], names: dict[str, str], previous: dict[str, dict[str, Any]], root: Path,
               out: Path, dense: maps.DenseTasks) -> tuple[dict[str, FileResult], list[Record]]:
    """--resume: the files an earlier run wrote whose output and source are unchanged, and the rest to do."""
    resumed: dict[str, FileResult] = {}
    todo: list[Record] = []
    for record in records:
        entry = previous.get(record.path)
        target = out / names[record.path]
        if (entry and entry.get("status") == "ok" and target.is_file() and entry.get("sha256_out") == file_sha256(target)
                and entry.get("sha256_in") == file_sha256(root / record.path)
                and maps.intact(entry, record, dense, root, out, names[record.path])):
            resumed[record.path] = FileResult(**{**entry, "status": "resumed"})
        else:
            todo.append(record)
    return resumed, todo


def _decode(root: Path, record: Record, size: int, mode: str, dense: maps.DenseTasks, reading: Any,
            tasks: int) -> tuple[Decoded, np.ndarray, list[np.ndarray | None]] | FileProblem:
    """Full-resolution original, its working-size pixels and label maps, in a worker thread (Pillow drops the GIL)."""
    try:
        decoded = decode(root, record.path, record.row)
        found = dense.read(root, record, decoded.image.size, size, reading, tasks) if dense.indices else []
    except FileProblem as problem:
        return problem
    return decoded, np.asarray(to_working(decoded.image, size).convert(mode)), found


def _protect_files(todo: list[Record], generate: Any, labels: Any, load: Any, write: Any, results: _Results,
                   cfg: ProtectConfig, skip_bad: bool, on_event: OnEvent) -> None:
    """Decode the next batch while the generator runs on this one; write each file in the worker threads."""
    batches = [todo[i : i + cfg.batch_size] for i in range(0, len(todo), cfg.batch_size)]
    on_event("start", {"stage": "protect", "total": len(todo), "description": "Protecting"})
    done = 0
    pending: deque[Future[FileResult]] = deque()
    workers = resolve_workers(cfg)

    def finish(result: FileResult) -> None:
        nonlocal done
        results.commit(result)
        done += 1
        on_event("progress", {"stage": "protect", "done": done})

    with ThreadPoolExecutor(workers) as pool:
        next_decode = [pool.submit(load, r) for r in batches[0]] if batches else []
        for b, batch in enumerate(batches):
            decoded = [f.result() for f in next_decode]
            if b + 1 < len(batches):
                next_decode = [pool.submit(load, r) for r in batches[b + 1]]
            good = [(r, *d) for r, d in zip(batch, decoded) if not isinstance(d, FileProblem)]
            for r, d in zip(batch, decoded):
                if isinstance(d, FileProblem):
                    if not skip_bad:
                        raise_problems([d], "image" if d.path == r.path else "label map")
                    finish(FileResult(r.path, None, "failed", reason=maps.problem_reason(d, r.path)))
            if good:
                deltas = generate(np.stack([g[2] for g in good]), labels([g[0] for g in good]), [g[3] for g in good])
                for (r, d, _, _), delta in zip(good, deltas):
                    pending.append(pool.submit(write, r, d, delta))
            # Keep at most about one batch of full-resolution images in flight (flat memory, issue #9), or one
            # per thread where there are more threads than that.
            while len(pending) > max(cfg.batch_size, workers):
                finish(pending.popleft().result())
        while pending:
            finish(pending.popleft().result())
    on_event("end", {"stage": "protect"})


def protect_with_fit(data: DataConfig, out: Path, fit_cfg: FitConfig, cfg: ProtectConfig,
                     on_event: OnEvent | None = None) -> ProtectReport:
    """`protect` without a generator: fit one with `fit_cfg` on the images that will be protected (the
    holdout stays unseen by it), keep it as OUT/generator/ (a normal generator folder that `export` and
    `--generator` accept), then protect with it. The report's `fit` is the fit (None if one was reused)."""
    import dataclasses
    import shutil

    from mtlue_cli.fit.folder import fit_folder
    from mtlue_cli.models.persistence import WEIGHTS, load_generator

    on_event = on_event or noop
    out = Path(out)
    outputs.check_out(Path(data.root), out, cfg)
    if data.workers <= 0:  # --workers 0 (the CLI's default): the fit's decode threads too
        data = dataclasses.replace(data, workers=resolve_workers(cfg))
    gen_dir = out / outputs.GENERATOR_DIR
    fit = None
    if cfg.resume and (gen_dir / WEIGHTS).is_file():
        log(on_event, f"--resume: reusing the generator fitted before in {gen_dir}")
    else:
        table = read_labels(data)
        holdout = held_out(table.records, cfg.holdout, cfg.seed)  # the same split protect leaves out
        log(on_event, f"no --generator: fitting one on the {len(table.records) - len(holdout)} images to "
            f"protect (recipe written to {gen_dir / 'fit_record.json'})")
        resume = cfg.resume and (gen_dir / "checkpoint" / "state.pt").is_file()
        fit = fit_folder(data, dataclasses.replace(fit_cfg, resume=resume), gen_dir, on_event, table=table,
                         exclude=holdout, replace=True)
        shutil.rmtree(gen_dir / "checkpoint", ignore_errors=True)  # the surrogate is not something to publish
    report = protect_dataset(load_generator(str(gen_dir)), data, out, cfg, on_event)
    report.fit = fit
    return report


def protect_folder(data: DataConfig, out: Path, cfg: ProtectConfig, generator: str | None = None,
                   revision: str | None = None, fit: FitConfig | None = None,
                   on_event: OnEvent | None = None) -> ProtectReport:
    """`mtlue protect`: protect with `generator` (folder, alias or Hub id), or without one fit one with `fit`
    (a recipe, see `fitting.fit_config`) and keep it in OUT/generator/."""
    from mtlue_cli.models.persistence import load_generator

    if generator is None:
        if fit is None:
            raise ConfigError("give a --generator, or a fit recipe to fit one")
        return protect_with_fit(data, out, fit, cfg, on_event)
    if fit is not None:
        raise ConfigError("give a generator or a fit recipe, not both (a fit runs only without --generator)")
    return protect_dataset(load_generator(generator, revision=revision), data, out, cfg, on_event)
