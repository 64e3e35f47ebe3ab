"""The upload folder `mtlue publish` builds, in the layout `datasets.load_dataset("imagefolder", data_dir=...)` reads
as it is: train/ (the protected files, tree mirrored) with train/metadata.csv (`file_name` + one column per task,
classes as the owner wrote them), an optional clean test/ split, and public copies of the run record and the
manifest with no path of the owner's machine in them.

A label-map task's maps travel as files beside the images (train/maps/<task>/...). A map `datasets` decodes as an
image (PNG, TIFF, ...) is named by a `<task>_file_name` column, which imagefolder loads as an `Image` column
`<task>` (datasets' multi-file metadata); a .npy map has no image form, so its column `<task>` holds its path
under train/ (no lossy conversion: the maps are published exactly as the owner's).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
from pathlib import Path, PurePosixPath
from typing import Any

from mtlue_cli.errors import ConfigError, FileProblem, PublishRefused
from mtlue_cli.events import OnEvent
from mtlue_cli.files import atomic_write, write_text
from mtlue_cli.hub.dataset_card import IMAGE_MAPS, MANIFEST_COPY
from mtlue_cli.hub.publish_checks import refuse
from mtlue_cli.protect import outputs

CARD, METADATA = "README.md", "metadata.csv"


# ----------------------------------------------------------------------------- local paths


class Scrubber:
    """Replaces the owner's local paths in text we write, and finds any that slipped through."""

    def __init__(self, paths: list[str]) -> None:
        keep = sorted({p.rstrip("/") for p in paths if p and os.path.isabs(p) and len(PurePosixPath(p).parts) > 1},
                      key=len, reverse=True)
        self.pattern = re.compile("|".join(rf"(?<![\w.-]){re.escape(p)}(?![\w.-])" for p in keep)) if keep else None

    def __call__(self, text: str) -> str:
        return self.pattern.sub("<local path>", text) if self.pattern else text

    def found(self, text: str) -> bool:
        return bool(self.pattern and self.pattern.search(text))


def local_paths(out: Path, folder: Path, run: dict[str, Any]) -> list[str]:
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


# ----------------------------------------------------------------------------- writing


def write_file(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, text)


def map_column(task: str, rows: list[list[str]], k: int) -> str:
    """metadata.csv's column of label-map task `task` (column k + 1 of `rows`): `<task>_file_name` (an Image column
    once loaded) where every map is an image file, else `task` (the path as a string)."""
    return f"{task}_file_name" if all(r[k + 1].lower().endswith(IMAGE_MAPS) for r in rows) else task


def metadata_csv(rows: list[list[str]], tasks: list[str], dense: dict[str, str] | None = None) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file_name", *(map_column(t, rows, k) if t in (dense or {}) else t for k, t in enumerate(tasks))])
    writer.writerows(rows)
    return buffer.getvalue()


def link_or_copy(src: Path, dst: Path) -> None:
    """A hard link costs no space and keeps the mtime (an interrupted upload resumes); else a copy. Either is made
    beside `dst` and renamed over it, so an interrupted build never leaves half a file under its final name."""
    dst.parent.mkdir(parents=True, exist_ok=True)

    def place(tmp: Path) -> None:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)

    atomic_write(dst, place)


def clean_test(run: outputs.RunRecord, tasks: list[str], folder: Path, on_event: OnEvent) -> list[list[str]]:
    """test/: the held-out originals, decoded upright as `protect` sees them and saved as lossless PNG with
    no metadata (EXIF, GPS), labels from the original labels file. These images are NOT protected."""
    from mtlue_cli.data.images import decode, no_ai_pnginfo, save_image
    from mtlue_cli.data.labels import read_labels

    held = run.held_out
    if not held:
        raise ConfigError("--include-clean-test: the run held nothing out (protect without --holdout)")
    if run.input_root is None or not run.input_root.is_dir():
        raise ConfigError(f"--include-clean-test needs the originals, recorded at {run.raw.get('input_root')!r}, which "
                          "is not a folder here; run publish where the originals are")
    table = read_labels(run.originals())
    if any(table.spec.dense):
        raise ConfigError("--include-clean-test does not carry label maps yet: publish without it")
    if list(table.spec.names) != tasks:
        raise ConfigError(f"the original labels now have tasks {list(table.spec.names)}, the protected ones {tasks}; "
                          "the labels changed after protect")
    by_path = {r.path: r for r in table.records}
    lost = [p for p in held if p not in by_path]
    if lost:
        raise refuse("held out by protect have no label row in the original labels any more",
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


def prepare_folder(folder: Path, out: Path, input_root: Path | None) -> None:
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


def public_run(run: dict[str, Any], scrub: Scrubber, include_test: bool) -> dict[str, Any]:
    """run.json without the owner's paths (input root, labels file, local generator folder)."""
    public = {k: v for k, v in run.items() if k not in ("input_root", "labels_file", "data", "device")}
    generator = dict(run.get("generator") or {})
    if generator.get("source") == "local":
        generator["spec"] = "local folder"
    public["generator"] = generator
    if not include_test:
        public.pop("held_out", None)  # names of files that are not published
    return json.loads(scrub(json.dumps(public)))


def public_entry(entry: dict[str, Any], root: Path | None) -> dict[str, Any]:
    public = {k: v for k, v in entry.items() if not (k == "reason" and not v)}
    source = str(entry.get("source", ""))
    if os.path.isabs(source):
        relative = root and Path(source).is_relative_to(root)
        public["source"] = Path(source).relative_to(root).as_posix() if relative else Path(source).name
    return public
