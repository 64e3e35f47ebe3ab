"""The label maps (dense tasks) `protect` carries: each image's maps read at the generator's working size (as
`data.dataset.load_dataset` reads them for training), checked against the generator's tasks, and copied
byte-identical beside the protected images, with their hashes on the image's manifest line. The maps themselves
are never perturbed: δ goes on the image only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mtlue_cli.data.label_maps import MapReading, check_size, read_map
from mtlue_cli.data.tasks import Record, TaskSpec
from mtlue_cli.errors import DatasetError, FileProblem
from mtlue_cli.files import copy_file, file_sha256
from mtlue_cli.protect.outputs import FileResult, id2label_path, map_output

# How a batch of working-size maps goes to the generator (`PerturbationGenerator.forward`'s `maps`).
_DTYPES = {"segmentation": np.int64, "depth": np.float32, "normals": np.float32}


@dataclass(frozen=True)
class DenseTasks:
    """The label-map tasks of the labels (`spec`) and which of them the generator reads (`used`: spec index ->
    generator task position)."""

    spec: TaskSpec
    layout: str
    used: dict[int, int]

    @property
    def indices(self) -> list[int]:
        return [k for k, dense in enumerate(self.spec.dense) if dense]

    def outputs(self, record: Record, name: str) -> list[str]:
        """Where each of `record`'s maps is copied under OUT, in `indices` order (its image written as `name`)."""
        return [map_output(self.spec.names[k], str(record.maps[k]), name, self.layout) for k in self.indices]

    def read(self, root: Path, record: Record, image_size: tuple[int, int], size: int, reading: MapReading,
             tasks: int) -> list[np.ndarray | None]:
        """Every map of `record` read and checked against its image (a FileProblem names the map); those the generator
        reads resized to the working `size`, one entry per generator task (None: no map for that task)."""
        out: list[np.ndarray | None] = [None] * tasks
        for k in self.indices:
            kind, name = self.spec.kinds[k], str(record.maps[k])
            arr = read_map(root, name, kind.name, reading, getattr(kind, "classes", None), record.row)
            check_size(arr, image_size, name, record.path, record.row)
            if k in self.used:
                out[self.used[k]] = kind.resize(arr, size).astype(_DTYPES[kind.name])
        return out


def dense_tasks(spec: TaskSpec, layout: str, tasks: dict[str, list[str]], task_kinds: dict[str, str]) -> DenseTasks:
    """The labels' label-map tasks, each checked against the generator's task of the same name: the same kind and,
    for segmentation, no more classes than it knows (and the same names where both name them)."""
    used: dict[int, int] = {}
    order = list(tasks)
    for k, (name, kind) in enumerate(zip(spec.names, spec.kinds)):
        if name not in tasks:
            continue
        theirs = task_kinds.get(name)
        if kind.dense != (theirs is not None) or (theirs is not None and theirs != kind.name):
            raise DatasetError(f"task {name!r} is {kind.name} in the labels but {theirs or 'a classification task'} "
                               "for the generator; fit a generator on these labels or rename the task")
        if not kind.dense:
            continue
        if kind.name == "segmentation":
            ours, known = spec.classes[k], tasks[name]
            named = not all(c.isdigit() for c in ours)
            if len(ours) > len(known) or (named and list(ours) != list(known[: len(ours)])):
                raise DatasetError(f"segmentation task {name!r} has classes {list(ours)} but the generator knows "
                                   f"{list(known)}; fit a generator on these maps (or give their id2label.json)")
        used[k] = order.index(name)
    return DenseTasks(spec, layout, used)


def batch(maps: list[list[np.ndarray | None]], tasks: int) -> list[Any]:
    """Per-image lists of working-size maps -> one tensor per generator task ((B, S, S) int64 segmentation,
    (B, 1, S, S) depth, (B, 3, S, S) normals), None where no image has one."""
    import torch

    out: list[Any] = []
    for j in range(tasks):
        column = [m[j] for m in maps]
        out.append(None if column[0] is None else torch.from_numpy(np.stack(column)))
    return out


def carry(result: FileResult, record: Record, dense: DenseTasks, root: Path, out: Path) -> FileResult:
    """Copy `record`'s maps byte-identical to their places under `out` (after its image was written), each on the
    image's manifest line as {task, source, output, sha256}. A map that cannot be copied fails the image."""
    if result.status != "ok" or not dense.indices:
        return result
    for k, dest in zip(dense.indices, dense.outputs(record, str(result.output))):
        source = str(record.maps[k])
        try:
            target = out / dest
            target.parent.mkdir(parents=True, exist_ok=True)
            copy_file(root / source, target)
            digest = file_sha256(target)
        except OSError as exc:
            result.status, result.reason = "failed", f"label map {source}: cannot copy it ({exc.strerror or exc})"
            return result
        result.maps.append({"task": dense.spec.names[k], "source": source, "output": dest, "sha256": digest})
    return result


def intact(entry: dict[str, Any], record: Record, dense: DenseTasks, root: Path, out: Path, name: str) -> bool:
    """--resume: every map of `record` was copied by the earlier run, and neither its source nor its copy changed."""
    copied = {m.get("task"): m for m in entry.get("maps") or []}
    for k, dest in zip(dense.indices, dense.outputs(record, name)):
        m = copied.get(dense.spec.names[k])
        if (not m or m.get("source") != record.maps[k] or m.get("output") != dest or not (out / dest).is_file()
                or m.get("sha256") != file_sha256(out / dest) or m.get("sha256") != file_sha256(root / str(record.maps[k]))):
            return False
    return True


def write_id2label(out: Path, dense: DenseTasks) -> None:
    """Each segmentation task's class names beside its copied maps, so OUT read back has the originals' classes
    (a holdout may leave a class out of OUT's maps)."""
    import json

    from mtlue_cli.files import write_text

    for k in dense.indices:
        if dense.spec.kinds[k].name == "segmentation":
            path = out / id2label_path(dense.spec.names[k], dense.layout)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text(path, json.dumps({str(i): c for i, c in enumerate(dense.spec.classes[k])}, indent=2) + "\n")


def problem_reason(problem: FileProblem, image: str) -> str:
    """A decode problem as the image's manifest reason: naming the label map when it is one."""
    return problem.reason if problem.path == image else f"label map {problem.path}: {problem.reason}"
