"""`publish_dataset`: turn a folder written by `mtlue protect` into a Hugging Face dataset and upload it.

The upload folder is what `datasets.load_dataset("imagefolder", data_dir=...)` reads as it is:
train/ (the protected files, tree mirrored) with train/metadata.csv (`file_name` + one column per task,
classes as the owner wrote them), an optional clean test/ split, a dataset card and a copy of the
manifest. Anything that could put an unprotected original online by accident is refused, and no path
of the owner's machine goes into a written file.
"""

from __future__ import annotations

import csv
import inspect
import io
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from mtlue_cli import outputs
from mtlue_cli.dataset_card import MANIFEST_COPY, RUN_COPY, VERIFY_COPY, dataset_card
from mtlue_cli.errors import ConfigError, FileProblem, PublishError, PublishRefused, examples
from mtlue_cli.events import OnEvent, log, noop
from mtlue_cli.files import write_text
from mtlue_cli.hub import upload_errors
from mtlue_cli.outputs import LABELS, MANIFEST, RUN, VERIFY

CARD, METADATA = "README.md", "metadata.csv"
RESERVED_COLUMNS = ("file_name", "image")  # imagefolder's own columns
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

@dataclass(frozen=True)
class PublishConfig:
    repo_id: str | None = None  # org/name; None only for a dry run
    license: str | None = None  # a Hub licence id; None writes "other" and warns
    private: bool = False
    revision: str | None = None  # branch to upload to (created if missing)
    include_clean_test: bool = False  # test/ = the run's held-out ORIGINALS, unprotected
    allow_failed: bool = False  # publish although some files failed (they are left out and listed)
    dry_run: bool = False


@dataclass
class PublishReport:
    out: Path
    folder: Path  # the upload folder, exactly as sent
    repo_id: str | None
    train_images: int
    test_images: int
    files: int
    bytes: int
    card: Path
    license: str
    verified: bool
    failed: list[FileProblem] = field(default_factory=list)  # left out (--allow-failed)
    warnings: list[str] = field(default_factory=list)
    url: str | None = None  # None for a dry run


def default_folder(out: Path) -> Path:
    """OUT.hf beside OUT (like OUT.preview.png): kept, so a rerun resumes an interrupted upload."""
    resolved = Path(out).resolve()
    return resolved.with_name(resolved.name + ".hf")


# ----------------------------------------------------------------------------- checks


@dataclass
class _Checked:
    run: outputs.RunRecord
    tasks: list[str]
    rows: list[list[str]]  # labels.csv rows: output path, then one class per task
    entries: dict[str, dict[str, Any]]  # output path -> its manifest entry
    failed: list[FileProblem]


def _refuse(what: str, problems: list[FileProblem], todo: str) -> PublishRefused:
    return PublishRefused(f"{len(problems)} file(s) {what} (e.g. {examples([p.path for p in problems])}); {todo}",
                          problems)


def check_folder(out: Path, allow_failed: bool = False, on_event: OnEvent | None = None) -> _Checked:
    """Everything `publish` refuses, before anything is written. Raises PublishRefused."""
    from mtlue_cli.hub import file_sha256
    from mtlue_cli.images import safe_path, scan_images

    on_event = on_event or noop
    out = Path(out)
    if not out.is_dir():
        raise ConfigError(f"{out}: no such folder; give the folder `mtlue protect` wrote")
    if not (out / MANIFEST).is_file() or not (out / LABELS).is_file():
        raise PublishRefused(f"{out} has no {MANIFEST} or {LABELS}: it is not a folder written by `mtlue protect`")
    run = outputs.read_run(out)
    if not run.exists:  # protect writes run.json last: without it the run did not finish
        raise PublishRefused(f"{out} has no readable {RUN}: the protect run did not finish. Rerun the same "
                             "`mtlue protect ... --resume` to the end, then publish")
    lines = outputs.read_entries(out / MANIFEST)  # a line cut by a crash is skipped; its file was redone or caught below
    written = outputs.written(lines)
    tasks, rows = outputs.read_labels_csv(out)
    if not tasks:
        raise PublishRefused(f"{out / LABELS} has no tasks; protect again")
    clash = [t for t in tasks if t in RESERVED_COLUMNS]
    if clash:
        raise PublishRefused(f"task column(s) {clash} clash with the dataset's own columns {list(RESERVED_COLUMNS)}; "
                             "rename them in your labels and protect again")
    listed = {r[0] for r in rows}

    # Every image in the folder must be one protect wrote and listed; nothing else is sent, but an extra
    # image is a sign of a mixed-up folder (or an original copied in).
    extra = [p for p in scan_images(out) if p not in listed]
    late = [p for p in extra if p in written]
    if late:
        raise _refuse("were written by a protect run that did not finish (in the manifest, not in labels.csv)",
                      [FileProblem(p, "written by an unfinished run") for p in late],
                      "rerun the same `mtlue protect ... --resume` to the end, then publish")
    if extra:
        raise _refuse("in the folder are not in its manifest as protected", [FileProblem(p, "not written by protect")
                      for p in extra], "move them out (an original must never be published by accident)")
    summary = run.summary
    expected = summary.get("written", 0) + summary.get("resumed", 0) if summary else None
    if expected is not None and expected != len(rows):
        raise PublishRefused(f"{LABELS} lists {len(rows)} files but {RUN} recorded {expected}: the folder changed after "
                             "the run or a later run did not finish; rerun `mtlue protect ... --resume` to the end")

    missing, unlisted, zero, changed = [], [], [], []
    on_event("start", {"stage": "check", "total": len(rows), "description": "Checking"})
    for i, row in enumerate(rows, 1):
        path = row[0]
        entry = written.get(path)
        try:
            full = safe_path(out, path)
        except FileProblem as problem:
            raise PublishRefused(f"{LABELS}: {problem}") from None
        if not full.is_file():
            missing.append(FileProblem(path, "listed in labels.csv but missing"))
        elif entry is None:
            unlisted.append(FileProblem(path, "not in the manifest as ok or resumed"))
        elif not entry.get("linf_255"):  # 0 or missing: identical to the original, or never measured
            zero.append(FileProblem(path, f"measured L-inf {entry.get('linf_255')}: not protected"))
        elif entry.get("sha256_out") != file_sha256(full):
            changed.append(FileProblem(path, "changed after protect wrote it (sha256 differs from the manifest)"))
        on_event("progress", {"stage": "check", "done": i})
    on_event("end", {"stage": "check"})
    if missing:
        raise _refuse("listed in labels.csv are missing", missing, "rerun `mtlue protect ... --resume`")
    if unlisted:
        raise _refuse("are not in the manifest as protected", unlisted, "rerun `mtlue protect ... --resume` to the end")
    if zero:
        raise _refuse("have a measured L-inf of 0 or none: they may be unprotected originals", zero,
                      "protect them again (`mtlue protect ... --overwrite`) before publishing")
    if changed:
        raise _refuse("were changed after `mtlue protect` wrote them", changed,
                      "protect again (`--overwrite`) so that the manifest measures what is published")
    sources = {written[r[0]]["source"] for r in rows}
    leaked = [FileProblem(p, "held out, but its protected copy is in the folder") for p in run.held_out if p in sources]
    if leaked:
        raise _refuse("are both in the clean held-out split and protected", leaked,
                      "protect again with `--overwrite` so that the split and the folder agree")
    failed_sources = {e["source"]: e for e in lines if e.get("status") == "failed" and e["source"] not in sources}
    failed = [FileProblem(s, e.get("reason") or "failed") for s, e in sorted(failed_sources.items())]
    if failed and not allow_failed:
        raise _refuse("failed in `mtlue protect`", failed, "fix them and rerun `mtlue protect ... --resume`, or pass "
                      "--allow-failed to publish the others (the failed ones are then listed in the card)")
    return _Checked(run, tasks, rows, {r[0]: written[r[0]] for r in rows}, failed)


# ----------------------------------------------------------------------------- local paths


class _Scrubber:
    """Replaces the owner's local paths in text we write, and finds any that slipped through."""

    def __init__(self, paths: list[str]) -> None:
        keep = sorted({p.rstrip("/") for p in paths if p and os.path.isabs(p) and len(PurePosixPath(p).parts) > 1},
                      key=len, reverse=True)
        self.pattern = re.compile("|".join(rf"(?<![\w.-]){re.escape(p)}(?![\w.-])" for p in keep)) if keep else None

    def __call__(self, text: str) -> str:
        return self.pattern.sub("<local path>", text) if self.pattern else text

    def found(self, text: str) -> bool:
        return bool(self.pattern and self.pattern.search(text))


def _local_paths(out: Path, folder: Path, run: dict[str, Any]) -> list[str]:
    data = run.get("data") or {}
    generator = run.get("generator") or {}
    raw = [str(out), str(folder), run.get("input_root"), run.get("labels_file"), data.get("partition"),
           generator.get("spec") if generator.get("source") == "local" else None, str(Path.home())]
    paths = {str(Path(p).resolve()) for p in raw if p} | {str(Path(p).absolute()) for p in raw if p}
    paths |= {str(Path(p).resolve().parent) for p in raw[2:4] if p}  # the labels' and images' folders
    roots = [str(Path(p).resolve()) for p in (out, run.get("input_root")) if p]
    try:
        paths.add(os.path.commonpath(roots))
    except ValueError:
        pass
    return sorted(paths)


# ----------------------------------------------------------------------------- the dataset card


# ----------------------------------------------------------------------------- writing


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, text)


def _metadata(rows: list[list[str]], tasks: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file_name", *tasks])
    writer.writerows(rows)
    return buffer.getvalue()


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link costs no space and keeps the mtime (an interrupted upload resumes); else a copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _clean_test(run: outputs.RunRecord, tasks: list[str], folder: Path, on_event: OnEvent) -> list[list[str]]:
    """test/: the held-out originals, decoded upright as `protect` sees them and saved as lossless PNG with
    no metadata (EXIF, GPS), labels from the original labels file. These images are NOT protected."""
    from mtlue_cli.images import decode, no_ai_pnginfo, save_image
    from mtlue_cli.labels import read_labels

    held = run.held_out
    if not held:
        raise ConfigError("--include-clean-test: the run held nothing out (protect without --holdout)")
    if run.input_root is None or not run.input_root.is_dir():
        raise ConfigError(f"--include-clean-test needs the originals, recorded at {run.raw.get('input_root')!r}, which "
                          "is not a folder here; run publish where the originals are")
    table = read_labels(run.originals())
    if list(table.spec.names) != tasks:
        raise ConfigError(f"the original labels now have tasks {list(table.spec.names)}, the protected ones {tasks}; "
                          "the labels changed after protect")
    by_path = {r.path: r for r in table.records}
    lost = [p for p in held if p not in by_path]
    if lost:
        raise _refuse("held out by protect have no label row in the original labels any more",
                      [FileProblem(p, "no label row") for p in lost], "restore the labels protect used")
    names = outputs.output_names(held, ".png")
    tag = (run.raw.get("config") or {}).get("tag_no_ai") in (True, "True", "true")
    rows = []
    on_event("start", {"stage": "test", "total": len(held), "description": "Clean test split"})
    for i, path in enumerate(sorted(held), 1):
        try:
            decoded = decode(table.root, path)
        except FileProblem as problem:
            raise PublishRefused(f"held-out original {path}: {problem.reason}") from None
        target = folder / "test" / names[path]
        target.parent.mkdir(parents=True, exist_ok=True)
        save_image(decoded.image, decoded.alpha, target, "png", 0, {"pnginfo": no_ai_pnginfo()} if tag else {})
        record = by_path[path]
        rows.append([names[path], *(table.spec.classes[k][v] for k, v in enumerate(record.labels))])
        on_event("progress", {"stage": "test", "done": i})
    on_event("end", {"stage": "test"})
    return rows


def _prepare_folder(folder: Path, out: Path, input_root: Path | None) -> None:
    """An empty folder, or one publish built before (rebuilt; .cache/ kept: the Hub client's resume state)."""
    resolved, o = folder.resolve(), out.resolve()
    inputs = [input_root.resolve()] if input_root else []
    for other in (o, *inputs):
        if resolved == other or resolved.is_relative_to(other) or other.is_relative_to(resolved):
            raise ConfigError(f"--folder {folder} overlaps {other}; choose a separate folder")
    if folder.exists():
        if not folder.is_dir():
            raise ConfigError(f"--folder {folder} is a file")
        entries = [p for p in folder.iterdir() if p.name != ".cache"]
        ours = (folder / MANIFEST_COPY).is_file() and (folder / CARD).is_file()
        if entries and not ours:
            raise ConfigError(f"--folder {folder} is not empty and was not written by `mtlue publish`; choose another")
        for p in entries:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    folder.mkdir(parents=True, exist_ok=True)


def _public_run(run: dict[str, Any], scrub: _Scrubber, include_test: bool) -> dict[str, Any]:
    """run.json without the owner's paths (input root, labels file, local generator folder)."""
    public = {k: v for k, v in run.items() if k not in ("input_root", "labels_file", "data", "device")}
    generator = dict(run.get("generator") or {})
    if generator.get("source") == "local":
        generator["spec"] = "local folder"
    public["generator"] = generator
    if not include_test:
        public.pop("held_out", None)  # names of files that are not published
    return json.loads(scrub(json.dumps(public)))


def _public_entry(entry: dict[str, Any], root: Path | None) -> dict[str, Any]:
    public = {k: v for k, v in entry.items() if not (k == "reason" and not v)}
    source = str(entry.get("source", ""))
    if os.path.isabs(source):
        relative = root and Path(source).is_relative_to(root)
        public["source"] = Path(source).relative_to(root).as_posix() if relative else Path(source).name
    return public


def build_folder(out: Path, folder: Path, cfg: PublishConfig, on_event: OnEvent | None = None) -> PublishReport:
    """Check OUT and write the exact upload folder (train/, test/, README.md, manifest copy) into `folder`."""
    on_event = on_event or noop
    out, folder = Path(out), Path(folder)
    checked = check_folder(out, cfg.allow_failed, on_event)
    run = checked.run
    warnings: list[str] = []
    if not cfg.license:
        warnings.append("no --license: the card says `license: other`; pass a Hub licence id such as cc-by-nc-4.0")
    if checked.failed:
        warnings.append(f"{len(checked.failed)} file(s) failed in protect and are left out (listed in the card)")
    _prepare_folder(folder, out, run.input_root)
    scrub = _Scrubber(_local_paths(out, folder, run.raw))

    on_event("start", {"stage": "copy", "total": len(checked.rows), "description": "Building"})
    for i, row in enumerate(checked.rows, 1):
        _link_or_copy(out / row[0], folder / "train" / row[0])
        on_event("progress", {"stage": "copy", "done": i})
    on_event("end", {"stage": "copy"})
    _write(folder / "train" / METADATA, _metadata(checked.rows, checked.tasks))
    test_rows: list[list[str]] = []
    if cfg.include_clean_test:
        test_rows = _clean_test(run, checked.tasks, folder, on_event)
        _write(folder / "test" / METADATA, _metadata(test_rows, checked.tasks))
        warnings.append(f"test/ holds {len(test_rows)} UNPROTECTED originals (the held-out split); the card says so")

    entries = [_public_entry(checked.entries[r[0]], run.input_root) for r in checked.rows]
    entries += [{"source": p.path, "output": None, "status": "failed", "reason": p.reason} for p in checked.failed]
    _write(folder / MANIFEST_COPY, "".join(scrub(json.dumps(e)) + "\n" for e in entries))
    _write(folder / RUN_COPY, json.dumps(_public_run(run.raw, scrub, cfg.include_clean_test), indent=2) + "\n")
    verify, stale = outputs.read_verify(out)
    if stale:
        warnings.append(f"{out / VERIFY} is older than {RUN} (an earlier protection): the card says not verified")
        verify = None
    if verify is not None:
        _write(folder / VERIFY_COPY, scrub(json.dumps(verify, indent=2)) + "\n")
    card = dataset_card(run.raw, checked.tasks, checked.rows, checked.entries, test_rows, verify,
                        license=cfg.license or "other", repo_id=cfg.repo_id, failed=checked.failed)
    _write(folder / CARD, scrub(card))

    files = [p for p in folder.rglob("*") if p.is_file() and ".cache" not in p.relative_to(folder).parts]
    for path in files:  # a guard: the scrubbing above must have left no local path in what we wrote
        if path.suffix in (".md", ".csv", ".json", ".jsonl") and scrub.found(path.read_text(encoding="utf-8")):
            raise PublishRefused(f"{path.name} would carry a local path of this machine; please report this bug")
    for w in warnings:
        log(on_event, w, "warning")
    return PublishReport(out=out, folder=folder, repo_id=cfg.repo_id, train_images=len(checked.rows),
                         test_images=len(test_rows), files=len(files), bytes=sum(p.stat().st_size for p in files),
                         card=folder / CARD, license=cfg.license or "other", verified=verify is not None,
                         failed=checked.failed, warnings=warnings)


# ----------------------------------------------------------------------------- upload


def _folder_upload_resumes(version: str) -> bool:
    """huggingface_hub >= 1.20: upload_folder is multi-commit and resumable, upload_large_folder deprecated."""
    parts = re.findall(r"\d+", version)[:2]
    major, minor = (int(parts[0]), int(parts[1])) if len(parts) == 2 else (0, 0)
    return (major, minor) >= (1, 20)


def upload(folder: Path, repo_id: str, private: bool = False, revision: str | None = None,
           token: str | None = None) -> str:
    """Upload the folder as a dataset repo (resumable: rerun the same command after an interruption)."""
    import huggingface_hub
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with upload_errors(repo_id, PublishError, f"The folder {folder} is kept: rerun the same command when online, "
                       f"or upload it from a connected machine with `hf upload {repo_id} {folder.name} --repo-type dataset`"):
        repo = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, repo_type="dataset", exist_ok=True)
        if hasattr(api, "upload_large_folder") and not _folder_upload_resumes(huggingface_hub.__version__):
            kwargs: dict[str, Any] = dict(repo_id=repo_id, repo_type="dataset", folder_path=str(folder),
                                          revision=revision, private=private)
            if "print_report" in inspect.signature(api.upload_large_folder).parameters:
                kwargs["print_report"] = False  # the library never prints (style rule 8)
            api.upload_large_folder(**kwargs)
        else:
            api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=str(folder), revision=revision,
                              commit_message="Upload MTL-UE protected dataset with mtlue")
    url = str(getattr(repo, "url", repo) or f"https://huggingface.co/datasets/{repo_id}")
    return url + (f"/tree/{revision}" if revision else "")


def publish_dataset(out: Path, cfg: PublishConfig, folder: Path | None = None, token: str | None = None,
                    on_event: OnEvent | None = None) -> PublishReport:
    """Check OUT, build the upload folder (default OUT.hf beside OUT) and, unless a dry run, upload it."""
    on_event = on_event or noop
    if not cfg.dry_run and not cfg.repo_id:
        raise ConfigError("give the Hub dataset repo: --to org/name (or --dry-run to build the folder only)")
    if cfg.repo_id and not REPO_ID.match(cfg.repo_id):
        raise ConfigError(f"--to {cfg.repo_id!r} is not a Hub repo id; write it as org/name")
    report = build_folder(out, folder or default_folder(out), cfg, on_event)
    if not cfg.dry_run:
        log(on_event, f"uploading {report.files} files ({report.bytes / 1e6:.1f} MB) to {cfg.repo_id}")
        report.url = upload(report.folder, str(cfg.repo_id), cfg.private, cfg.revision, token)
    return report
