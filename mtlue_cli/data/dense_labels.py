"""Label-map tasks beside (or instead of) the classification tasks: the three forms owners keep them in (issue 28).

(a) `maps`: a folder of maps per task, parallel to the images: the map of `dir/stem.jpg` is `dir/stem.<png|npy|..>`
    under the folder (VOC: JPEGImages/ + SegmentationClass/); a Cityscapes `*_leftImg8bit` image also finds its
    `*_gtFine_labelIds` / `*_gtCoarse_labelIds` map.
(b) `map_columns`: columns of the labels CSV whose values are paths to maps, relative to the image root.
(c) layout `nyuv2`: mtan's / LibMTL's per-sample `.npy` under image/, label/ (segmentation), depth/, normal/.

Every form ends in `attach`: classification tasks first, then the label-map tasks in the order given; a missing
map is a FileProblem naming the file it looked for (the record is left out, and `load_dataset` stops on it unless
--skip-bad). A segmentation task's classes come from an `id2label.json` beside its maps (else in the image root),
else from the largest index in its maps ("0".."C-1", which reads every map once).
"""

from __future__ import annotations

import os
import posixpath
import re
from collections import defaultdict
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Callable

from mtlue_cli.config import DataConfig, map_spec
from mtlue_cli.data.images import safe_path, scan_images
from mtlue_cli.data.label_maps import ID2LABEL, MAP_SUFFIXES, MapReading, read_id2label, read_map
from mtlue_cli.data.tasks import UNLABELLED, LabelTable, Record, TaskSpec
from mtlue_cli.errors import DatasetError, FileProblem, raise_problems

# NYUv2 as mtan and LibMTL keep it: (task name as LibMTL names it, kind, folder).
NYUV2_TASKS = (("segmentation", "segmentation", "label"), ("depth", "depth", "depth"), ("normal", "normals", "normal"))
CITYSCAPES_IMAGE = "_leftImg8bit"
CITYSCAPES_MAPS = ("_gtFine_labelIds", "_gtCoarse_labelIds")

Locate = Callable[[Record, int], str]  # (record, index of the dense task) -> its map, as Record.maps holds it


def reading_of(cfg: DataConfig) -> MapReading:
    return MapReading(cfg.ignore_index, cfg.depth_scale)


def map_ref(root: Path, path: Path) -> str:
    """How Record.maps names a map: relative POSIX under the image root, else absolute."""
    full = Path(os.path.abspath(path))
    try:
        return full.relative_to(Path(os.path.abspath(root))).as_posix()
    except ValueError:
        return str(full)


def folder_tasks(cfg: DataConfig) -> list[tuple[str, str, Path]]:
    """The `maps` entries as (task, kind, folder); each folder must exist."""
    out = []
    for spec in cfg.maps:
        task, kind, where = map_spec(spec)
        folder = Path(where).expanduser()
        if not folder.is_dir():
            raise DatasetError(f"--maps {spec}: no folder {folder}; give the folder that holds the {kind} maps")
        out.append((task, kind, folder))
    return out


def inside(path: str, root: Path, folders: list[Path]) -> bool:
    """Whether the image-root file `path` lies in one of the map `folders` (a mask is not an image to protect)."""
    full = Path(os.path.abspath(root / path))
    return any(full.is_relative_to(os.path.abspath(f)) for f in folders)


# ----------------------------------------------------------------------------- the shared tail


def attach(table: LabelTable, tasks: list[tuple[str, str]], locate: Locate, reading: MapReading,
           id2label_dirs: list[Path | None]) -> LabelTable:
    """`table` with the label-map `tasks` ((name, kind), after its classification tasks): each record's maps from
    `locate`, each segmentation task's classes from the first `id2label_dirs[k]` / the image root holding an
    id2label.json, else from its maps."""
    taken = set(table.spec.names) & {name for name, _ in tasks}
    if taken:
        raise DatasetError(f"task(s) {sorted(taken)} are both label columns and label maps: rename one")
    root, n_cls = table.root, len(table.spec.names)
    problems = list(table.problems)
    located: list[tuple[Record, list[str]]] = []
    for record in table.records:
        try:
            refs = [locate(record, k) for k in range(len(tasks))]
            for ref in refs:
                if not (root / ref).is_file():
                    raise FileProblem(ref, f"label map of {record.path} not found", record.row)
        except FileProblem as problem:
            problems.append(problem)
            continue
        located.append((record, refs))
    classes: list[tuple[str, ...]] = []
    for k, (name, kind) in enumerate(tasks):
        if kind != "segmentation":
            classes.append(())
            continue
        where = [d for d in (id2label_dirs[k], root) if d is not None and (d / ID2LABEL).is_file()]
        if where:
            classes.append(read_id2label(where[0] / ID2LABEL))
            continue
        top, kept = -1, []
        for record, refs in located:  # the class count is the largest index + 1: read every map once
            try:
                top = max(top, int(read_map(root, refs[k], kind, reading, row=record.row).max(initial=-1)))
                kept.append((record, refs))
            except FileProblem as problem:
                problems.append(problem)
        located = kept
        if top < 1 and located:
            raise DatasetError(f"segmentation task {name!r}: its maps hold {'only class 0' if top == 0 else 'no class'}"
                               f"; a task needs at least two classes (void pixels: --ignore-index "
                               f"{reading.ignore_index})")
        classes.append(tuple(str(i) for i in range(top + 1)))
    if not located:
        raise_problems(problems, "label map")
        raise DatasetError(f"{root}: no labelled images found")
    spec = TaskSpec(table.spec.names + tuple(n for n, _ in tasks), table.spec.classes + tuple(classes),
                    tuple(k.name for k in table.spec.kinds) + tuple(k for _, k in tasks))
    records = [replace(r, labels=r.labels + (0,) * len(tasks), maps=(None,) * n_cls + tuple(refs))
               for r, refs in located]
    return replace(table, spec=spec, records=records, problems=problems)


# ----------------------------------------------------------------------------- (a) folders of maps


def _index(folder: Path) -> dict[tuple[str, str], list[Path]]:
    """(relative folder, stem) -> the map files with that stem under `folder`."""
    found: dict[tuple[str, str], list[Path]] = defaultdict(list)
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(folder).as_posix()
        for name in sorted(filenames):
            p = Path(name)
            if p.suffix.lower() in MAP_SUFFIXES and not name.startswith("."):
                found[(rel, p.stem)].append(Path(dirpath) / name)
    return found


def _stems(image: str) -> list[str]:
    stem = PurePosixPath(image).stem
    if stem.endswith(CITYSCAPES_IMAGE):
        return [stem] + [stem[: -len(CITYSCAPES_IMAGE)] + s for s in CITYSCAPES_MAPS]
    return [stem]


def attach_folders(table: LabelTable, cfg: DataConfig) -> LabelTable:
    """Form (a): the `maps` folders' maps, matched to each image by relative path and stem."""
    tasks = folder_tasks(cfg)
    indexes = [_index(folder) for _, _, folder in tasks]

    def locate(record: Record, k: int) -> str:
        folder, parent = tasks[k][2], PurePosixPath(record.path).parent.as_posix()
        for stem in _stems(record.path):
            hits = indexes[k].get((parent, stem), [])
            if len(hits) > 1:
                raise FileProblem(record.path, f"{len(hits)} {tasks[k][0]} maps: "
                                  f"{', '.join(h.name for h in hits)} in {hits[0].parent}; keep one", record.row)
            if hits:
                return map_ref(table.root, hits[0])
        expected = folder / parent / f"{_stems(record.path)[-1]}.png"
        raise FileProblem(record.path, f"no {tasks[k][0]} label map: expected {expected} (or .npy)", record.row)

    folders = [f for _, _, f in tasks]
    # Maps kept inside the image root are not images without labels: they are labels.
    table = replace(table, problems=[p for p in table.problems
                                     if not (p.reason == UNLABELLED and inside(p.path, table.root, folders))])
    return attach(table, [(t, k) for t, k, _ in tasks], locate, reading_of(cfg), folders)


def read_images_only(root: Path, cfg: DataConfig) -> LabelTable:
    """Layout `maps`: every image under the root (outside the map folders), labelled by the `maps` folders only."""
    if not cfg.maps:
        raise DatasetError("--layout maps labels the images by their label maps only: give --maps task=kind:folder")
    folders = [f for _, _, f in folder_tasks(cfg)]
    files = [p for p in scan_images(root) if not inside(p, root, folders)]
    if not files:
        raise DatasetError(f"{root}: no images found outside the label-map folders")
    table = LabelTable(root, TaskSpec((), ()), [Record(p, ()) for p in files], "maps")
    return attach_folders(table, cfg)


# ----------------------------------------------------------------------------- (b) CSV columns of map paths


def column_tasks(cfg: DataConfig) -> list[tuple[str, str]]:
    return [map_spec(spec, folder=False)[:2] for spec in cfg.map_columns]


def attach_columns(table: LabelTable, tasks: list[tuple[str, str]], values: dict[int | None, list[str]],
                   cfg: DataConfig) -> LabelTable:
    """Form (b): each record's maps are the `values` of its labels row (paths relative to the image root)."""

    def locate(record: Record, k: int) -> str:
        value = values[record.row][k]
        if not value:
            raise FileProblem(record.path, f"empty {tasks[k][0]} map path", record.row)
        safe_path(table.root, value, record.row)  # no absolute paths, no '..', no links out of the root
        return PurePosixPath(value.replace("\\", "/")).as_posix()

    listed = {PurePosixPath(v.replace("\\", "/")).as_posix() for row in values.values() for v in row}
    table = replace(table, problems=[p for p in table.problems if not (p.reason == UNLABELLED and p.path in listed)])
    dirs: list[Path | None] = []
    for k in range(len(tasks)):  # an id2label.json in the deepest folder that holds all of a task's maps (nested too)
        parents = {PurePosixPath(v[k].replace("\\", "/")).parent.as_posix() for v in values.values() if v[k]}
        common = posixpath.commonpath(sorted(parents)) if parents else ""
        dirs.append(table.root / common if common not in ("", ".") else None)
    return attach(table, tasks, locate, reading_of(cfg), dirs)


# ----------------------------------------------------------------------------- (c) NYUv2 (mtan / LibMTL)


def _npy_stems(folder: Path) -> list[str]:
    stems = [p.stem for p in folder.glob("*.npy")] if folder.is_dir() else []
    return sorted(stems, key=lambda s: (0, int(s), s) if s.isdigit() else (1, 0, s))  # 2 before 10


def is_nyuv2(root: Path) -> bool:
    """image/*.npy and at least one of label/, depth/, normal/ holding .npy files."""
    return bool(_npy_stems(root / "image")) and any(_npy_stems(root / d) for _, _, d in NYUV2_TASKS)


def read_nyuv2(root: Path, cfg: DataConfig) -> LabelTable:
    """Layout `nyuv2`: the tasks whose folder exists (or those `cfg.tasks` names), one `.npy` per image each."""
    present = [t for t in NYUV2_TASKS if (root / t[2]).is_dir()]
    if cfg.tasks:
        unknown = [t for t in cfg.tasks if t not in {p[0] for p in present}]
        if unknown:
            raise DatasetError(f"{root}: no NYUv2 task(s) {unknown}; the tasks here are {[p[0] for p in present]}")
        present = [next(p for p in present if p[0] == t) for t in cfg.tasks]
    stems = _npy_stems(root / "image")
    if not stems or not present:
        raise DatasetError(f"{root}: not a NYUv2 folder: expected image/*.npy beside label/, depth/ or normal/")
    table = LabelTable(root, TaskSpec((), ()), [Record(f"image/{s}.npy", ()) for s in stems], "nyuv2")
    tasks = [(name, kind) for name, kind, _ in present]

    def locate(record: Record, k: int) -> str:
        return f"{present[k][2]}/{re.sub(r'^image/', '', record.path)}"

    return attach(table, tasks, locate, reading_of(cfg), [root / d for _, _, d in present])
