"""`protect_dataset`: write protected copies at native resolution, losslessly, with a manifest.

δ is computed at the generator's working size, upsampled bilinearly (a convex combination, so it
cannot overshoot ±ε), clipped to ±ε again, added to the full-resolution original and ROUNDED to
uint8 (ecosystem §1.3-1.5, §3.4; the official export floors, method-spec §13.3). One file's work is in
`encode`; which files each torchrun process takes, and the manifest parts it writes, are in `shard`.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from mtlue_cli import __version__, shard
from mtlue_cli.config import DataConfig, ProtectConfig
from mtlue_cli.data import Decoded, LabelTable, Record, open_image, raise_problems, read_labels, split_indices, to_working
from mtlue_cli.encode import EXTENSIONS, XMP_NO_AI, FileResult, compose, write_protected  # noqa: F401 (re-exported)
from mtlue_cli.errors import ConfigError, DatasetError, FileProblem, MtlueError
from mtlue_cli.events import OnEvent, log, noop
from mtlue_cli.hub import LoadedGenerator, file_sha256

MANIFEST, RUN, LABELS = shard.MANIFEST, "run.json", "labels.csv"


class ProtectFailed(MtlueError):
    """--strict: a file failed, so the run stopped (exit code 3, ecosystem §3.2)."""

    exit_code = 3


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


GENERATOR_DIR = "generator"


def check_output_folder(root: Path, out: Path, cfg: ProtectConfig) -> None:
    """Never write into the input, and never clobber a folder without --resume/--overwrite."""
    r, o = root.resolve(), out.resolve()
    if o == r or o.is_relative_to(r):
        raise ConfigError(f"--out {out} is inside the input folder {root}; choose a folder outside it")
    if r.is_relative_to(o):
        raise ConfigError(f"the input folder {root} is inside --out {out}; choose a separate folder")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file")
    # OUT/generator/ is the generator `protect` fitted for this folder when none was given.
    if out.exists() and any(p.name != GENERATOR_DIR for p in out.iterdir()) and not (cfg.resume or cfg.overwrite):
        raise ConfigError(f"--out {out} is not empty: pass --resume to continue a run or --overwrite to replace it")


def _output_names(records: list[Record], fmt: str) -> dict[str, str]:
    """Mirror the tree and keep names; change the extension only where the format needs it. Two inputs
    that would meet (a.jpg and a.png -> a.png) keep their old extension in the name (a.jpg.png)."""
    ext = EXTENSIONS[fmt]
    names = {r.path: str(PurePosixPath(r.path).with_suffix(ext)) for r in records}
    counts: dict[str, int] = {}
    for name in names.values():
        counts[name.lower()] = counts.get(name.lower(), 0) + 1
    return {src: (dst if counts[dst.lower()] == 1 else src + ext) for src, dst in names.items()}


def _label_remap(table: LabelTable, tasks: dict[str, list[str]]) -> tuple[list[tuple[int, np.ndarray]], list[str]]:
    """Dataset class indices -> generator class indices, by task and class name.

    A value that is not one of the generator's class names may be its class index ("1" for the
    second class), but only where the names themselves are not numbers (else "1" would be ambiguous).
    Tasks the labels lack are returned as `missing`: they take the generator's label-free mean
    embedding (method-spec §2.4) and stay unprotected. Returns ([(dataset task, remap)], missing)."""
    missing = [t for t in tasks if t not in table.spec.names]
    if len(missing) == len(tasks):
        raise DatasetError(f"the labels have none of the generator's tasks {list(tasks)} (they have "
                           f"{list(table.spec.names)}); use labels with at least one of them (see its README.md)")
    remap = []
    for name in (t for t in tasks if t not in missing):
        k = table.spec.names.index(name)
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


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS says, else all of them)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def resolve_workers(cfg: ProtectConfig) -> int:
    """--workers, or (0) the cores this process may use, shared by the torchrun processes of this node."""
    if cfg.workers > 0:
        return cfg.workers
    return max(1, available_cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def protect_dataset(loaded: LoadedGenerator, data: DataConfig, out: Path, cfg: ProtectConfig,
                    on_event: OnEvent | None = None) -> ProtectReport:
    """Write a protected copy of every labelled image of `data` under `out`.

    Under torchrun (WORLD_SIZE > 1) each process protects its share of the files (`shard.share`) on its
    LOCAL_RANK device and writes its own manifest part; rank 0 merges the parts and writes labels.csv and
    run.json once. Every rank returns the same report."""
    import torch

    from mtlue_cli.engine import Dist, autocast, resolve_device

    dist = Dist.from_env()
    on_event = (on_event or noop) if dist.is_main else noop
    if cfg.format not in EXTENSIONS:
        raise ConfigError(f"--format must be png, webp or jpeg, not {cfg.format!r}")
    if cfg.metadata not in ("strip", "keep-safe", "keep-all"):
        raise ConfigError(f"--metadata must be strip, keep-safe or keep-all, not {cfg.metadata!r}")
    if not 0 <= cfg.holdout < 1:
        raise ConfigError("--holdout must be in [0, 1)")
    root, out = Path(data.root), Path(out)
    check_output_folder(root, out, cfg)
    started = time.perf_counter()
    model = loaded.model
    device = resolve_device(cfg.device, dist.local_rank if dist.enabled else None)
    dist.init(device)
    dist = dist.patient()  # a rank that finishes its share early may wait long for the others
    model = model.to(device).eval()
    tasks, size, epsilon = model.tasks, model.image_size, float(model.epsilon)
    table = read_labels(data)
    remap, missing = _label_remap(table, tasks)
    protected_tasks = [t for t in tasks if t not in missing and t not in model.unprotected]
    if not protected_tasks:
        raise ConfigError(f"the labels' tasks {[t for t in tasks if t not in missing]} are ones this generator leaves "
                          "unprotected: nothing would be protected")
    warnings: list[str] = []
    if missing:
        warnings.append(f"your labels lack task(s) {missing}: they are NOT protected (the generator uses its "
                        f"label-free mean for them); protected: {protected_tasks}")
    if cfg.format == "jpeg":
        warnings.append(f"JPEG output (quality {cfg.quality}) is lossy: re-compression weakens the protection "
                        "(ISS JPEG-10 restores most accuracy). The measured L-inf below shows what is left.")
    extra = [t for t in table.spec.names if t not in tasks]
    if extra:
        warnings.append(f"task(s) {extra} are not protected by this generator (kept in labels.csv as they are)")
    for w in warnings:
        log(on_event, w, "warning")
    if dist.enabled:
        log(on_event, f"{dist.world} processes, each protecting one batch of {cfg.batch_size} files in {dist.world}")

    train_idx, test_idx = split_indices(table.records, cfg.holdout, cfg.seed) if cfg.holdout else (list(range(len(table.records))), [])
    records = [table.records[i] for i in train_idx]
    problems = list(table.problems)
    if problems and not data.skip_bad:
        raise_problems(problems)
    names = _output_names(records, cfg.format)
    # --overwrite: the old manifest is deleted below, so nothing counts as done.
    previous = shard.load_manifest(out) if cfg.resume and not cfg.overwrite and out.is_dir() else {}
    results: dict[str, FileResult] = {}
    todo: list[Record] = []
    for record in (records[i] for i in shard.share(len(records), cfg.batch_size, dist.rank, dist.world)):
        entry = previous.get(record.path)
        target = out / names[record.path]
        if (entry and entry.get("status") == "ok" and target.is_file() and entry.get("sha256_out") == file_sha256(target)
                and entry.get("sha256_in") == file_sha256(root / record.path)):
            results[record.path] = FileResult(**{**entry, "status": "resumed"})
        else:
            todo.append(record)

    dist.barrier()  # every rank has checked --out and read the old manifest before any rank writes
    if dist.is_main:
        if cfg.overwrite and out.exists():
            for path in (out / MANIFEST, out / RUN, *shard.parts(out)):
                path.unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        if cfg.resume:
            shard.fold_parts(out)  # an interrupted run's parts, before this run writes its own
    dist.barrier()
    manifest_path = out / MANIFEST if not dist.enabled else shard.part_path(out, dist.rank)
    if not dist.enabled and cfg.resume and manifest_path.is_file() and manifest_path.stat().st_size:
        with manifest_path.open("rb") as fh:
            fh.seek(-1, os.SEEK_END)
            cut = fh.read(1) != b"\n"
    else:
        cut = False
    manifest = manifest_path.open("a" if cfg.resume and not dist.enabled else "w", encoding="utf-8")
    if cut:
        manifest.write("\n")  # a line cut by a crash must not swallow the next entry
    failures: list[FileResult] = []

    def commit(result: FileResult) -> None:
        if result.status != "failed":  # a failed duplicate row must not mask its twin, nor be masked
            results[result.source] = result
        manifest.write(json.dumps(asdict(result)) + "\n")
        manifest.flush()
        if result.status == "failed":
            failures.append(result)
            if cfg.strict:
                raise ProtectFailed(f"{result.source}: {result.reason} (--strict stops at the first failed file)")

    # Label-level problems (kept with --skip-bad): recorded, reported, counted; by rank 0 only.
    for problem in problems if dist.is_main else []:
        commit(FileResult(problem.path, None, "failed", reason=f"{problem.reason} (labels row {problem.row})"
                          if problem.row else problem.reason))

    mode = "L" if model.in_channels == 1 else "RGB"

    def decode(record: Record) -> tuple[Decoded, np.ndarray] | FileProblem:
        """Full-resolution original and its working-size pixels, in a worker thread (Pillow drops the GIL)."""
        try:
            decoded = open_image(root / record.path)
        except FileProblem as problem:
            return FileProblem(record.path, problem.reason, record.row)
        return decoded, np.asarray(to_working(decoded.image, size).convert(mode))

    batches = [todo[i : i + cfg.batch_size] for i in range(0, len(todo), cfg.batch_size)]
    on_event("start", {"stage": "protect", "total": len(todo), "description": "Protecting"})
    done = 0
    pending: deque[Future[FileResult]] = deque()
    preview: list[tuple[Decoded, np.ndarray, Any]] = []
    n_preview = cfg.preview if dist.is_main else 0
    workers = resolve_workers(cfg)
    with ThreadPoolExecutor(workers) as pool:
        next_decode = [pool.submit(decode, r) for r in batches[0]] if batches else []
        for b, batch in enumerate(batches):
            decoded = [f.result() for f in next_decode]
            if b + 1 < len(batches):
                next_decode = [pool.submit(decode, r) for r in batches[b + 1]]
            good = [(r, d[0], d[1]) for r, d in zip(batch, decoded) if not isinstance(d, FileProblem)]
            for r, d in zip(batch, decoded):
                if isinstance(d, FileProblem):
                    if not data.skip_bad:
                        manifest.close()
                        raise_problems([d], "image")
                    commit(FileResult(r.path, None, "failed", reason=d.reason))
                    done += 1
            if good:
                x = torch.from_numpy(np.stack([w for _, _, w in good]))
                x = (x[..., None] if x.ndim == 3 else x).permute(0, 3, 1, 2).contiguous()  # NCHW: the fast conv path
                y = torch.zeros((len(good), len(tasks)), dtype=torch.long)  # missing tasks: any index, unused
                for j, (k, m) in zip((i for i, t in enumerate(tasks) if t not in missing), remap):
                    y[:, j] = torch.tensor([int(m[r.labels[k]]) for r, _, _ in good])
                with torch.inference_mode(), autocast(device, cfg.amp):
                    deltas = model(x.to(device).float().div_(255), y.to(device), protect=protected_tasks).float().cpu()
                for (r, d, _), delta in zip(good, deltas):
                    if len(preview) < n_preview:
                        preview.append((d, np.asarray(to_working(d.image, size)), delta))
                    pending.append(pool.submit(write_protected, r, d, delta, root, out, names[r.path], epsilon, cfg))
            # Keep at most about one batch of full-resolution images in flight (flat memory, issue #9), or one
            # per thread where there are more threads than that.
            while len(pending) > max(cfg.batch_size, workers):
                commit(pending.popleft().result())
                done += 1
                on_event("progress", {"stage": "protect", "done": done})
        for future in pending:
            commit(future.result())
            done += 1
            on_event("progress", {"stage": "protect", "done": done})
    manifest.close()
    on_event("end", {"stage": "protect"})
    if dist.enabled:
        results, failures = _gather(out, records, previous, dist)

    ok = [r for r in results.values() if r.status in ("ok", "resumed")]
    if dist.is_main:
        _write_labels(table, out, names, ok)
    preview_path = _write_preview(preview, out, model.image_size, epsilon) if preview else None
    seconds = time.perf_counter() - started
    written = sum(r.status == "ok" for r in ok)
    finite_psnr = [r.psnr for r in ok if r.psnr is not None and r.psnr != float("inf")]
    report = ProtectReport(
        out=out, total=len(records) + len(test_idx), written=written, resumed=len(ok) - written,
        failed=failures, held_out=len(test_idx),
        epsilon_255=epsilon * 255, max_linf_255=max((r.linf_255 or 0 for r in ok), default=0),
        mean_psnr=float(np.mean(finite_psnr)) if finite_psnr else float("inf"),
        mean_ssim=float(np.mean([r.ssim for r in ok if r.ssim is not None])) if ok else float("nan"),
        seconds=seconds, images_per_second=written / seconds if seconds else 0.0, format=cfg.format,
        preview=preview_path, warnings=warnings, protected_tasks=protected_tasks,
        unprotected_tasks=[t for t in tasks if t not in protected_tasks],
    )
    run = {
        "tool": "mtlue", "version": __version__, "torch": torch.__version__, "python": platform.python_version(),
        "device": str(device), "processes": dist.world, "seed": cfg.seed,
        "config": {k: str(v) for k, v in asdict(cfg).items()},
        "generator": {"spec": loaded.spec, "source": loaded.source, "revision": loaded.revision,
                      "sha256": loaded.sha256, "method": loaded.method, "image_size": size},
        "epsilon": epsilon, "epsilon_255": epsilon * 255, "tasks": tasks,
        "labels_file": str(table.labels_file) if table.labels_file else None,
        "labels_sha256": file_sha256(table.labels_file) if table.labels_file else None,
        "input_root": str(root), "layout": table.layout,
        "data": {"path_column": data.path_column, "tasks": list(data.tasks) if data.tasks else None,
                 "partition": str(data.partition) if data.partition else None, "split": data.split},
        "held_out": [table.records[i].path for i in test_idx], "holdout": cfg.holdout,
        "summary": {k: v for k, v in asdict(report).items() if k not in ("failed", "out", "preview")},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if dist.is_main:
        (out / RUN).write_text(json.dumps(run, indent=2, default=str) + "\n")
    dist.barrier()  # no rank returns before the folder is complete
    return report


def _gather(out: Path, records: list[Record], previous: dict[str, dict[str, Any]],
            dist: Any) -> tuple[dict[str, FileResult], list[FileResult]]:
    """After every rank's share: all ranks' results (rank 0 merges the parts into manifest.jsonl).

    A file no rank wrote this run, whose old entry is ok, is one a rank found intact (--resume): every
    file a rank took on leaves an entry, written or failed."""
    order = {r.path: i for i, r in enumerate(records)}
    dist.barrier()  # every part is complete
    new = sorted((e for p in shard.parts(out) for e in shard.read_entries(p)), key=lambda e: order.get(e["source"], -1))
    dist.barrier()  # read by every rank before rank 0 folds them away
    if dist.is_main:
        shard.merge_parts(out, order)
    results: dict[str, FileResult] = {}
    failures: list[FileResult] = []
    for entry in new:
        result = FileResult(**entry)
        if result.status == "failed":
            failures.append(result)
        else:
            results[result.source] = result
    touched = {e["source"] for e in new}
    for record in records:
        entry = previous.get(record.path)
        if record.path not in touched and entry and entry.get("status") == "ok":
            results[record.path] = FileResult(**{**entry, "status": "resumed"})
    return results, failures


def protect_with_fit(data: DataConfig, out: Path, fit_cfg: Any, cfg: ProtectConfig,
                     on_event: OnEvent | None = None) -> tuple[Any, ProtectReport]:
    """`protect` without a generator: fit one with `fit_cfg` on the images that will be protected (the
    holdout stays unseen by it), keep it as OUT/generator/ (a normal generator folder that `export` and
    `--generator` accept), then protect with it. Returns (FitResult or None if reused, ProtectReport)."""
    import dataclasses
    import shutil

    from mtlue_cli.data import load_dataset
    from mtlue_cli.fit import fit_generator
    from mtlue_cli.hub import load_generator

    on_event = on_event or noop
    out = Path(out)
    check_output_folder(Path(data.root), out, cfg)
    if data.workers <= 0:  # --workers 0 (the CLI's default): the fit's decode threads too
        data = dataclasses.replace(data, workers=resolve_workers(cfg))
    gen_dir = out / GENERATOR_DIR
    fit_result = None
    if cfg.resume and (gen_dir / "model.safetensors").is_file():
        log(on_event, f"--resume: reusing the generator fitted before in {gen_dir}")
    else:
        table = read_labels(data)
        held_out: set[str] = set()
        if cfg.holdout:
            _, test_idx = split_indices(table.records, cfg.holdout, cfg.seed)  # the same split protect leaves out
            held_out = {table.records[i].path for i in test_idx}
        dataset = load_dataset(dataclasses.replace(data, size=fit_cfg.image_size), on_event, table=table)
        keep = [i for i, r in enumerate(dataset.records) if r.path not in held_out]
        log(on_event, f"no --generator: fitting one on the {len(keep)} images to protect "
            f"(recipe written to {gen_dir / 'fit_record.json'})")
        resume = cfg.resume and (gen_dir / "checkpoint" / "state.pt").is_file()
        fit_result = fit_generator(dataset.subset(keep), dataclasses.replace(fit_cfg, resume=resume), gen_dir, on_event)
        shutil.rmtree(gen_dir / "checkpoint", ignore_errors=True)  # the surrogate is not something to publish
    loaded = load_generator(str(gen_dir))
    report = protect_dataset(loaded, dataclasses.replace(data, size=loaded.model.image_size), out, cfg, on_event)
    return fit_result, report


def _write_labels(table: LabelTable, out: Path, names: dict[str, str], ok: list[FileResult]) -> None:
    """labels.csv next to the protected files, paths rewritten, classes as the user wrote them."""
    import csv

    by_path = {r.path: r for r in table.records}
    tmp = out / (LABELS + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", *table.spec.names])
        for result in sorted(ok, key=lambda r: r.source):
            record = by_path[result.source]
            writer.writerow([names[result.source], *(table.spec.classes[k][v] for k, v in enumerate(record.labels))])
    os.replace(tmp, out / LABELS)


PREVIEW_TILE = 128


def _write_preview(items: list[tuple[Decoded, np.ndarray, Any]], out: Path, size: int, epsilon: float) -> Path:
    """Grid: original | protected | δ amplified to the full range, one row per image. Written beside
    `out` (OUT.preview.png) so that the protected folder holds only images and their records."""
    import torch
    from torchvision.utils import save_image

    tiles = []
    for _, working, delta in items:
        x = torch.from_numpy(working.copy()).permute(2, 0, 1).float() / 255
        d = delta.expand(3, -1, -1) if delta.shape[0] == 1 else delta
        tiles += [x, (x + d).clamp(0, 1), (d / (2 * epsilon) + 0.5).clamp(0, 1)]
    grid = torch.stack(tiles)  # (3N, 3, size, size)
    # Tiles of at least PREVIEW_TILE px, pixel-exact (nearest), so a person can judge them.
    scale = max(1, -(-PREVIEW_TILE // size))
    if scale > 1:
        grid = torch.nn.functional.interpolate(grid, scale_factor=scale, mode="nearest")
    path = out.with_name(out.name + ".preview.png")
    save_image(grid, path, nrow=3, padding=4, pad_value=1.0)
    return path
