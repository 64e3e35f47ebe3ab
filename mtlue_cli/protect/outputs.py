"""The protected folder `protect` writes, as one format: its file names, the manifest (one JSON line per file),
labels.csv, run.json (what `verify OUT` and `publish` need, the working size included) and verify.json.
`protect` writes it through here; `verify`, `publish` and the CLI read it through here.

Label maps (dense tasks, issue 28) are copied byte-identical to OUT/maps/<task>/<image's output path without its
extension><the map's extension>; labels.csv's column of such a task holds that path. Layout nyuv2 keeps its own
tree instead: image/<stem>.npy written back as float .npy, label/ depth/ normal/ copied as they are.
`protected_data_config` is how OUT is read back (layout csv, the map columns and reading options of run.json).
"""

from __future__ import annotations

import csv
import json
import os
import platform
import re
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from mtlue_cli import __version__
from mtlue_cli.config import DataConfig, ProtectConfig, map_spec
from mtlue_cli.errors import ConfigError
from mtlue_cli.files import atomic_write, write_text

MANIFEST, RUN, LABELS, VERIFY = "manifest.jsonl", "run.json", "labels.csv", "verify.json"
PREDICTED = "predicted_labels.csv"  # the labels protect predicted (protect.predicted, issue 30)
GENERATOR_DIR = "generator"  # the generator `protect` fitted for this folder when none was given
PART = re.compile(r"manifest\.rank(\d+)\.jsonl")  # one per torchrun process until rank 0 merges them
DONE = ("ok", "resumed")
MAPS_DIR, NPY, NYUV2 = "maps", ".npy", "nyuv2"


@dataclass
class FileResult:
    """One manifest line: what happened to one source file, measured on the file as written."""

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
    maps: list[dict[str, str]] = field(default_factory=list)  # the label maps copied with it: task, source, output, sha256


def preview_path(out: Path) -> Path:
    """OUT.preview.png, beside OUT: the protected folder holds only images and their records."""
    return out.with_name(out.name + ".preview.png")


def output_names(paths: Iterable[str], ext: str) -> dict[str, str]:
    """Mirror the tree and keep names; change the extension only where the format needs it (a .npy image is
    written back as .npy). Two inputs that would meet (a.jpg and a.png -> a.png) keep their old extension in the
    name (a.jpg.png)."""
    names = {p: p if p.lower().endswith(NPY) else str(PurePosixPath(p).with_suffix(ext)) for p in paths}
    counts: dict[str, int] = {}
    for name in names.values():
        counts[name.lower()] = counts.get(name.lower(), 0) + 1
    return {src: (dst if counts[dst.lower()] == 1 else src + ext) for src, dst in names.items()}


def map_output(task: str, source: str, image_output: str, layout: str) -> str:
    """Where a label map is copied under OUT: maps/<task>/<the image's output path without its extension><the map's
    own extension>; for layout nyuv2 its own place (label/<stem>.npy, ...), so OUT is a NYUv2 folder too."""
    if layout == NYUV2:
        return source
    return f"{MAPS_DIR}/{task}/{PurePosixPath(image_output).with_suffix('')}{PurePosixPath(source).suffix}"


def id2label_path(task: str, layout: str) -> str:
    """A segmentation task's class names under OUT, where the CSV reader looks (beside its maps)."""
    return "label/id2label.json" if layout == NYUV2 else f"{MAPS_DIR}/{task}/id2label.json"


def check_out(root: Path, out: Path, cfg: ProtectConfig) -> None:
    """Never write into the input, and never clobber a folder without --resume/--overwrite."""
    r, o = root.resolve(), out.resolve()
    if o == r or o.is_relative_to(r):
        raise ConfigError(f"--out {out} is inside the input folder {root}; choose a folder outside it")
    if r.is_relative_to(o):
        raise ConfigError(f"the input folder {root} is inside --out {out}; choose a separate folder")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file")
    if (out.exists() and any(p.name != GENERATOR_DIR for p in out.iterdir())
            and not (cfg.resume or cfg.overwrite)):
        raise ConfigError(f"--out {out} is not empty: pass --resume to continue a run or --overwrite to replace it")


def clear(out: Path) -> None:
    """--overwrite: forget an earlier run's records, so nothing of it counts as done."""
    for path in (out / MANIFEST, out / RUN, out / PREDICTED, *parts(out)):
        path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- the manifest


def part_path(out: Path, rank: int) -> Path:
    return out / f"manifest.rank{rank}.jsonl"


def parts(out: Path) -> list[Path]:
    """The per-rank parts under `out`, in rank order."""
    found = [(int(m.group(1)), p) for p in out.glob("manifest.rank*.jsonl") if (m := PART.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def read_entries(path: Path) -> list[dict[str, Any]]:
    """A manifest's entries in file order; a line cut by a crash is skipped (that file is simply redone)."""
    entries = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and "source" in entry:
                entries.append(entry)
    return entries


def load_manifest(out: Path) -> dict[str, dict[str, Any]]:
    """source -> latest entry, from manifest.jsonl and then any parts an interrupted run left."""
    return {e["source"]: e for path in (out / MANIFEST, *parts(out)) for e in read_entries(path)}


def written(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """output path -> the entry of the file written there (ok or resumed; the last line wins)."""
    return {e["output"]: e for e in entries if e.get("status") in DONE and e.get("output")}


def source_map(out: Path) -> dict[str, str]:
    """Protected output path -> clean source path (names may have changed)."""
    return {output: e["source"] for output, e in written(read_entries(out / MANIFEST)).items()}


def quality(out: Path) -> dict[str, float]:
    """Image-quality stats of the protected files, as `protect` measured them on the written files."""
    measured = [e for e in read_entries(out / MANIFEST) if e.get("status") in DONE and e.get("linf_255") is not None]
    if not measured:
        return {}
    psnrs = [e["psnr"] for e in measured if e.get("psnr") not in (None, float("inf"))]
    ssims = [e["ssim"] for e in measured if e.get("ssim") is not None]
    return {"max_linf_255": max(e["linf_255"] for e in measured), "mean_psnr": sum(psnrs) / max(len(psnrs), 1),
            "mean_ssim": sum(ssims) / max(len(ssims), 1), "files": len(measured)}


def append_entries(out: Path, entries: list[dict[str, Any]]) -> None:
    """Append entries to manifest.jsonl (after a line cut by a crash, on a line of their own), atomically."""
    path = out / MANIFEST
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    if text and not text.endswith("\n"):
        text += "\n"
    write_text(path, text + "".join(json.dumps(e) + "\n" for e in entries))


class ManifestWriter:
    """Writes one line per file as soon as it is done, so a crash loses at most the line being written."""

    def __init__(self, path: Path, append: bool) -> None:
        cut = False
        if append and path.is_file() and path.stat().st_size:
            with path.open("rb") as fh:
                fh.seek(-1, os.SEEK_END)
                cut = fh.read(1) != b"\n"
        self.fh = path.open("a" if append else "w", encoding="utf-8")
        if cut:
            self.fh.write("\n")  # a line cut by a crash must not swallow the next entry

    def write(self, result: FileResult) -> None:
        self.fh.write(json.dumps(asdict(result)) + "\n")
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


# ----------------------------------------------------------------------------- labels.csv


def write_labels(out: Path, header: list[str], rows: list[list[str]]) -> None:
    """labels.csv next to the protected files: the output path, then one class per task, as the user wrote it."""

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(rows)

    atomic_write(out / LABELS, write)


def read_labels_csv(out: Path) -> tuple[list[str], list[list[str]]]:
    """(task names, rows of output path + classes) of OUT/labels.csv."""
    with (out / LABELS).open(newline="", encoding="utf-8") as fh:
        table = list(csv.reader(fh))
    if not table or not table[0]:
        return [], []
    return table[0][1:], [r for r in table[1:] if r]


# ----------------------------------------------------------------------------- run.json and verify.json


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def run_record(*, generator: dict[str, Any], epsilon: float, tasks: dict[str, list[str]], data: DataConfig,
               layout: str, labels_file: Path | None, labels_sha256: str | None, config: dict[str, Any],
               held_out: list[str], holdout: float, seed: int, summary: dict[str, Any], device: str,
               processes: int, torch_version: str, label_tasks: dict[str, Any] | None = None,
               predicted_tasks: list[str] | None = None) -> dict[str, Any]:
    """run.json: the generator (with its working size), ε, the originals and how they were read, the holdout.
    `tasks` is the generator's, `label_tasks` labels.csv's columns (both in `TaskSpec.to_dict` form: a label-map
    task is {"kind": ..., "classes": [...]}); `predicted_tasks` those the generator's labeller predicted."""
    return {
        "tool": "mtlue", "version": __version__, "torch": torch_version, "python": platform.python_version(),
        "device": device, "processes": processes, "seed": seed,
        "config": {k: str(v) for k, v in config.items()},
        "generator": generator, "epsilon": epsilon, "epsilon_255": epsilon * 255, "tasks": tasks,
        "labels_file": str(labels_file) if labels_file else None, "labels_sha256": labels_sha256,
        "input_root": str(data.root), "layout": layout, "label_tasks": label_tasks,
        "predicted_tasks": list(predicted_tasks or []),
        "data": {"path_column": data.path_column, "tasks": list(data.tasks) if data.tasks else None,
                 "partition": str(data.partition) if data.partition else None, "split": data.split,
                 "maps": [_absolute_map(m) for m in data.maps], "map_columns": list(data.map_columns),
                 "ignore_index": data.ignore_index, "depth_scale": data.depth_scale},
        "held_out": held_out, "holdout": holdout, "summary": summary,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _absolute_map(spec: str) -> str:
    """A `maps` entry with its folder made absolute: run.json is read from wherever verify runs."""
    task, kind, folder = map_spec(spec)
    return f"{task}={kind}:{Path(folder).expanduser().absolute()}"


def write_run(out: Path, run: dict[str, Any]) -> None:
    """Written last: a folder without run.json is an unfinished run."""
    write_text(out / RUN, json.dumps(run, indent=2, default=str) + "\n")


@dataclass(frozen=True)
class RunRecord:
    """OUT/run.json as `protect` wrote it; every field None (or empty) where there is none."""

    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def exists(self) -> bool:
        return bool(self.raw)

    def _path(self, value: Any) -> Path | None:
        return Path(value) if value else None

    @property
    def input_root(self) -> Path | None:
        return self._path(self.raw.get("input_root"))

    @property
    def labels_file(self) -> Path | None:
        return self._path(self.raw.get("labels_file"))

    @property
    def layout(self) -> str | None:
        return self.raw.get("layout")

    @property
    def predicted_tasks(self) -> list[str]:
        """The tasks the generator's labeller predicted (issue 30): none in a run.json written before."""
        return list(self.raw.get("predicted_tasks") or [])

    @property
    def data(self) -> dict[str, Any]:
        return self.raw.get("data") or {}

    @property
    def tasks(self) -> tuple[str, ...] | None:
        return tuple(self.data["tasks"]) if self.data.get("tasks") else None

    @property
    def holdout(self) -> float | None:
        return self.raw.get("holdout")

    @property
    def seed(self) -> int | None:
        return self.raw.get("seed")

    @property
    def held_out(self) -> list[str]:
        return list(self.raw.get("held_out") or [])

    @property
    def summary(self) -> dict[str, Any]:
        return self.raw.get("summary") or {}

    @property
    def working_size(self) -> int | None:
        """The generator's working size (its image_size): the one record of it."""
        try:
            return int(self.raw["generator"]["image_size"])
        except (KeyError, TypeError, ValueError):
            return None

    def originals(self, **overrides: Any) -> DataConfig:
        """The originals as `protect` read them (root, labels and how to read them); `overrides` that are not
        None win."""
        recorded = dict(root=self.input_root, labels=self.labels_file, layout=self.layout or "auto",
                        path_column=self.data.get("path_column"), tasks=self.tasks,
                        partition=self._path(self.data.get("partition")), split=self.data.get("split") or "train",
                        **self.map_reading, maps=tuple(self.data.get("maps") or ()),
                        map_columns=tuple(self.data.get("map_columns") or ()))
        recorded.update({k: v for k, v in overrides.items() if v is not None})
        return DataConfig(**recorded)

    @property
    def map_reading(self) -> dict[str, Any]:
        """How the label maps' files are read (DataConfig's ignore_index and depth_scale), as protect read them."""
        return {k: self.data[k] for k in ("ignore_index", "depth_scale") if self.data.get(k) is not None}

    @property
    def label_tasks(self) -> dict[str, Any]:
        """labels.csv's tasks in `TaskSpec.to_dict` form (runs before issue 28: the generator's tasks)."""
        return self.raw.get("label_tasks") or self.raw.get("tasks") or {}


def protected_data_config(out: Path, size: int | None = None, **overrides: Any) -> DataConfig:
    """How to read OUT itself: layout csv, OUT/labels.csv, each label-map task of run.json's `label_tasks` as a map
    column (task=kind), its files read as protect read the originals (ignore_index, depth_scale). `size` defaults
    to the generator's working size; `overrides` replace any DataConfig field (skip_bad, workers, cache, tasks; verify
    names the map columns and their reading from the originals' tasks)."""
    out = Path(out)
    run = read_run(out)
    columns = tuple(f"{name}={entry['kind']}" for name, entry in run.label_tasks.items() if isinstance(entry, dict))
    size = size or run.working_size
    fields = {"root": out, "labels": out / LABELS, "layout": "csv", "path_column": "path", "map_columns": columns,
              **run.map_reading, **({"size": size} if size else {})}
    return DataConfig(**{**fields, **overrides})


def read_run(out: Path) -> RunRecord:
    """OUT/run.json; an empty record if there is none or it does not parse (the long form of verify)."""
    return RunRecord(read_json(Path(out) / RUN) or {})


def write_verify(out: Path, report: dict[str, Any]) -> None:
    """OUT/verify.json: `publish` puts it in the dataset card."""
    write_text(out / VERIFY, json.dumps(report, indent=2) + "\n")


def read_verify(out: Path) -> tuple[dict[str, Any] | None, bool]:
    """(OUT/verify.json or None, whether it is older than run.json: the result of an earlier protection)."""
    report = read_json(out / VERIFY)
    stale = report is not None and (out / RUN).is_file() and (out / VERIFY).stat().st_mtime < (out / RUN).stat().st_mtime
    return report, stale
