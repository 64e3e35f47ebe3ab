"""`protect_dataset`: write protected copies at native resolution, losslessly, with a manifest.

δ is computed at the generator's working size, upsampled bilinearly (a convex combination, so it
cannot overshoot ±ε), clipped to ±ε again, added to the full-resolution original and ROUNDED to
uint8 (ecosystem §1.3-1.5, §3.4; the official export floors, method-spec §13.3).
"""

from __future__ import annotations

import json
import os
import platform
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin

from mtlue_cli import __version__
from mtlue_cli.config import DataConfig, ProtectConfig
from mtlue_cli.data import Decoded, LabelTable, Record, open_image, raise_problems, read_labels, split_indices, to_working
from mtlue_cli.errors import ConfigError, DatasetError, FileProblem, MtlueError
from mtlue_cli.events import OnEvent, log, noop
from mtlue_cli.hub import LoadedGenerator, file_sha256
from mtlue_cli.metrics import linf, psnr, ssim

MANIFEST, RUN, LABELS = "manifest.jsonl", "run.json", "labels.csv"
EXTENSIONS = {"png": ".png", "webp": ".webp", "jpeg": ".jpg"}
XMP_NO_AI = (
    '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    '<rdf:Description rdf:about="" xmlns:plus="http://ns.useplus.org/ldf/xmp/1.0/">'
    "<plus:DataMining>http://ns.useplus.org/ldf/vocab/DMI-PROHIBITED-AIMLTRAINING</plus:DataMining>"
    '</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
)
SAFE_EXIF_TAGS = (0x013B, 0x8298)  # Artist, Copyright: kept by --metadata keep-safe


class ProtectFailed(MtlueError):
    """--strict: a file failed, so the run stopped (exit code 3, ecosystem §3.2)."""

    exit_code = 3


@dataclass
class FileResult:
    source: str
    output: str | None
    status: str  # ok | failed | resumed
    reason: str = ""
    width: int = 0
    height: int = 0
    mode: str = ""
    exif_rotated: bool = False
    linf_255: int | None = None
    psnr: float | None = None
    ssim: float | None = None
    alpha_kept: bool | None = None
    sha256_in: str = ""
    sha256_out: str = ""


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


def _metadata_kwargs(decoded: Decoded, cfg: ProtectConfig, fmt: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if cfg.metadata in ("keep-safe", "keep-all"):
        if decoded.info.get("icc_profile"):
            kwargs["icc_profile"] = decoded.info["icc_profile"]
        if decoded.info.get("exif"):
            source = Image.Exif()
            source.load(decoded.info["exif"])
            exif = Image.Exif()
            if cfg.metadata == "keep-all":
                for tag, value in source.items():
                    exif[tag] = value
                # GPS and other IFDs travel with keep-all only.
                for ifd in (0x8825, 0x8769):
                    if ifd in source:
                        exif[ifd] = source[ifd]
            else:
                for tag in SAFE_EXIF_TAGS:
                    if tag in source:
                        exif[tag] = source[tag]
            exif[0x0112] = 1  # pixels are written upright
            kwargs["exif"] = exif.tobytes()
    if cfg.tag_no_ai:
        if fmt == "png":
            info = PngImagePlugin.PngInfo()
            info.add_itxt("XML:com.adobe.xmp", XMP_NO_AI)
            kwargs["pnginfo"] = info
        else:
            kwargs["xmp"] = XMP_NO_AI.encode()
    return kwargs


def compose(decoded: Decoded, delta: np.ndarray) -> np.ndarray:
    """Add an upsampled δ (3,H,W) in 1/255 units to the upright original; round, clip to uint8.

    Grayscale images stay single-channel: their δ is the luma combination of the RGB δ (weights sum
    to 1, so it stays within ±ε)."""
    original = np.asarray(decoded.image, dtype=np.float32)
    if original.ndim == 2:
        d = delta[0] if delta.shape[0] == 1 else 0.299 * delta[0] + 0.587 * delta[1] + 0.114 * delta[2]
    else:
        d = np.repeat(delta, 3, axis=0) if delta.shape[0] == 1 else delta
        d = d.transpose(1, 2, 0)
    return np.clip(np.rint(original + d), 0, 255).astype(np.uint8)


def _upsample(delta: Any, height: int, width: int, epsilon: float) -> np.ndarray:
    import torch.nn.functional as F

    up = F.interpolate(delta[None].float(), size=(height, width), mode="bilinear", align_corners=False)[0]
    return (up.clamp(-epsilon, epsilon) * 255).numpy()  # (C,H,W) in 1/255 units


def _save(pixels: np.ndarray, alpha: Image.Image | None, path: Path, fmt: str, cfg: ProtectConfig,
          meta: dict[str, Any]) -> None:
    image = Image.fromarray(pixels, "L" if pixels.ndim == 2 else "RGB")
    if alpha is not None:
        if fmt == "jpeg":
            raise FileProblem(str(path), "has transparency, which JPEG cannot store; use --format png or webp")
        image.putalpha(alpha)
    tmp = path.with_name(f".{path.name}.mtlue-tmp")
    try:
        if fmt == "png":
            image.save(tmp, "PNG", **meta)
        elif fmt == "webp":
            image.save(tmp, "WEBP", lossless=True, quality=100, method=4, exact=True, **meta)
        else:
            image.save(tmp, "JPEG", quality=cfg.quality, subsampling=0, **meta)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise FileProblem(str(path), f"cannot write ({exc.strerror or exc}); check free space and permissions") from None


def _finish(record: Record, decoded: Decoded, delta: Any, root: Path, out: Path, dst: str, epsilon: float,
            cfg: ProtectConfig) -> FileResult:
    """Compose, write atomically, re-read the written file and measure what is really there."""
    source = root / record.path
    width, height = decoded.image.size
    result = FileResult(record.path, dst, "failed", width=width, height=height, mode=decoded.source_mode,
                        exif_rotated=decoded.exif_rotated)
    try:
        result.sha256_in = file_sha256(source)
        pixels = compose(decoded, _upsample(delta, height, width, epsilon))
        target = out / dst
        target.parent.mkdir(parents=True, exist_ok=True)
        _save(pixels, decoded.alpha, target, cfg.format, cfg, _metadata_kwargs(decoded, cfg, cfg.format))
        with Image.open(target) as written:
            written.load()
            back_alpha = written.getchannel("A") if "A" in written.getbands() else None
            back = np.asarray(written.convert(decoded.image.mode))
        original = np.asarray(decoded.image)
        result.linf_255, result.psnr, result.ssim = linf(back, original), psnr(back, original), ssim(back, original)
        if decoded.alpha is not None:
            result.alpha_kept = back_alpha is not None and np.array_equal(np.asarray(back_alpha), np.asarray(decoded.alpha))
        result.sha256_out = file_sha256(target)
        result.status = "ok"
    except FileProblem as problem:
        result.reason = problem.reason
    return result


def _load_manifest(path: Path) -> dict[str, dict[str, Any]]:
    entries: dict[str, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line cut by a crash: that file is simply redone
            entries[entry["source"]] = entry
    return entries


def protect_dataset(loaded: LoadedGenerator, data: DataConfig, out: Path, cfg: ProtectConfig,
                    on_event: OnEvent | None = None) -> ProtectReport:
    """Write a protected copy of every labelled image of `data` under `out`."""
    import torch

    from mtlue_cli.engine import autocast, resolve_device

    on_event = on_event or noop
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
    device = resolve_device(cfg.device)
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

    train_idx, test_idx = split_indices(table.records, cfg.holdout, cfg.seed) if cfg.holdout else (list(range(len(table.records))), [])
    records = [table.records[i] for i in train_idx]
    problems = list(table.problems)
    if problems and not data.skip_bad:
        raise_problems(problems)
    if cfg.overwrite and out.exists():
        for name in (MANIFEST, RUN):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    names = _output_names(records, cfg.format)
    manifest_path = out / MANIFEST
    previous = _load_manifest(manifest_path) if cfg.resume else {}
    results: dict[str, FileResult] = {}
    todo: list[Record] = []
    for record in records:
        entry = previous.get(record.path)
        target = out / names[record.path]
        if (entry and entry.get("status") == "ok" and target.is_file() and entry.get("sha256_out") == file_sha256(target)
                and entry.get("sha256_in") == file_sha256(root / record.path)):
            results[record.path] = FileResult(**{**entry, "status": "resumed"})
        else:
            todo.append(record)

    if cfg.resume and manifest_path.is_file() and manifest_path.stat().st_size:
        with manifest_path.open("rb") as fh:
            fh.seek(-1, os.SEEK_END)
            cut = fh.read(1) != b"\n"
    else:
        cut = False
    manifest = manifest_path.open("a" if cfg.resume else "w", encoding="utf-8")
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

    for problem in problems:  # label-level problems (kept with --skip-bad): recorded, reported, counted
        commit(FileResult(problem.path, None, "failed", reason=f"{problem.reason} (labels row {problem.row})"
                          if problem.row else problem.reason))

    def decode(record: Record) -> Decoded | FileProblem:
        try:
            return open_image(root / record.path)
        except FileProblem as problem:
            return FileProblem(record.path, problem.reason, record.row)

    batches = [todo[i : i + cfg.batch_size] for i in range(0, len(todo), cfg.batch_size)]
    on_event("start", {"stage": "protect", "total": len(todo), "description": "Protecting"})
    done = 0
    pending: list[Future[FileResult]] = []
    preview: list[tuple[Decoded, np.ndarray, Any]] = []
    with ThreadPoolExecutor(max(1, cfg.workers)) as pool:
        next_decode = [pool.submit(decode, r) for r in batches[0]] if batches else []
        for b, batch in enumerate(batches):
            decoded = [f.result() for f in next_decode]
            if b + 1 < len(batches):
                next_decode = [pool.submit(decode, r) for r in batches[b + 1]]
            good = [(r, d) for r, d in zip(batch, decoded) if isinstance(d, Decoded)]
            for r, d in zip(batch, decoded):
                if isinstance(d, FileProblem):
                    if not data.skip_bad:
                        manifest.close()
                        raise_problems([d], "image")
                    commit(FileResult(r.path, None, "failed", reason=d.reason))
                    done += 1
            if good:
                mode = "L" if model.in_channels == 1 else "RGB"
                x = torch.stack([torch.from_numpy(np.asarray(to_working(d.image, size).convert(mode)).copy()) for _, d in good])
                x = (x[..., None] if x.ndim == 3 else x).permute(0, 3, 1, 2).contiguous()  # NCHW: the fast conv path
                y = torch.zeros((len(good), len(tasks)), dtype=torch.long)  # missing tasks: any index, unused
                for j, (k, m) in zip((i for i, t in enumerate(tasks) if t not in missing), remap):
                    y[:, j] = torch.tensor([int(m[r.labels[k]]) for r, _ in good])
                with torch.inference_mode(), autocast(device, cfg.amp):
                    deltas = model(x.to(device).float().div_(255), y.to(device), protect=protected_tasks).float().cpu()
                for (r, d), delta in zip(good, deltas):
                    if len(preview) < cfg.preview:
                        preview.append((d, np.asarray(to_working(d.image, size)), delta))
                    pending.append(pool.submit(_finish, r, d, delta, root, out, names[r.path], epsilon, cfg))
            # Keep at most about one batch of full-resolution images in flight (flat memory, issue #9).
            while len(pending) > cfg.batch_size:
                commit(pending.pop(0).result())
                done += 1
                on_event("progress", {"stage": "protect", "done": done})
        for future in pending:
            commit(future.result())
            done += 1
            on_event("progress", {"stage": "protect", "done": done})
    manifest.close()
    on_event("end", {"stage": "protect"})

    ok = [r for r in results.values() if r.status in ("ok", "resumed")]
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
        "device": str(device), "seed": cfg.seed, "config": {k: str(v) for k, v in asdict(cfg).items()},
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
    (out / RUN).write_text(json.dumps(run, indent=2, default=str) + "\n")
    return report


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
