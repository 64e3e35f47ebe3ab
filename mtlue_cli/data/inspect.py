"""`inspect_dataset`: a dry run over labels and images before any training: tasks, class counts, label-map
statistics, image modes and sizes, the problems a run would meet, and a rough size of the protected output."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mtlue_cli.config import DataConfig
from mtlue_cli.data.dense_labels import reading_of
from mtlue_cli.data.images import Decoded, decode
from mtlue_cli.data.label_maps import check_size, read_map
from mtlue_cli.data.labels import Record, read_labels
from mtlue_cli.errors import FileProblem
from mtlue_cli.events import OnEvent, noop

# Lossless PNG of photographs is roughly half the raw RGB size; a rough figure, said to be one.
PNG_BYTES_PER_RAW_BYTE = 0.5


@dataclass
class TaskSummary:
    name: str
    classes: list[str]
    counts: list[int]

    @property
    def majority_share(self) -> float:
        total = sum(self.counts)
        return max(self.counts) / total if total else 0.0


@dataclass
class DenseTaskSummary:
    """A label-map task over the usable images' maps, at their own size: segmentation's pixels per class, depth's
    valid range, the share of void/invalid pixels, the maps whose size differs from their image."""

    name: str
    kind: str
    classes: list[str]
    pixel_counts: list[int]  # segmentation: valid pixels per class; empty for depth and normals
    invalid_share: float  # void (segmentation) or invalid (depth 0, normals zero vector) pixels / all
    value_range: tuple[float, float] | None  # depth: smallest and largest valid depth
    size_mismatches: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__, value_range=list(self.value_range) if self.value_range else None)


@dataclass
class _MapStats:
    counts: np.ndarray | None = None
    invalid: int = 0
    pixels: int = 0
    low: float = float("inf")
    high: float = float("-inf")
    mismatches: int = 0


@dataclass
class InspectReport:
    root: str
    layout: str
    labels_file: str | None
    images: int
    tasks: list[TaskSummary]
    sizes: dict[str, int]  # "WxH" -> count (most common first)
    modes: dict[str, int]
    flags: dict[str, int]  # exif_rotated, alpha, grayscale, 16-bit, cmyk, palette
    problems: list[dict[str, Any]]
    estimated_output_bytes: int
    dense_tasks: list[DenseTaskSummary] = field(default_factory=list)  # label-map tasks (not in `tasks`)

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["tasks"] = [
            {"name": t.name, "classes": t.classes, "counts": t.counts, "majority_share": t.majority_share}
            for t in self.tasks
        ]
        out.pop("dense_tasks")
        if self.dense_tasks:  # the key is absent without label maps: a classification report reads as before
            out["dense_tasks"] = [t.to_dict() for t in self.dense_tasks]
        return out


def inspect_dataset(cfg: DataConfig, on_event: OnEvent | None = None) -> InspectReport:
    """Dry run: labels, class counts, image modes and sizes, problems, and an output-size estimate."""
    on_event = on_event or noop
    table = read_labels(cfg)
    problems = list(table.problems)
    sizes: Counter[str] = Counter()
    modes: Counter[str] = Counter()
    flags: Counter[str] = Counter()
    raw_bytes = 0
    good: list[Record] = []
    kinds, reading = table.spec.kinds, reading_of(cfg)
    stats = {k: _MapStats() for k, kind in enumerate(kinds) if kind.dense}

    def probe(record: Record) -> tuple[Record, Decoded | FileProblem, dict[int, np.ndarray]]:
        try:
            decoded = decode(table.root, record.path, record.row)
            maps = {k: read_map(table.root, record.maps[k], kinds[k].name, reading,
                                getattr(kinds[k], "classes", None), record.row) for k in stats}
            return record, decoded, maps
        except FileProblem as problem:
            return record, problem, {}

    on_event("start", {"stage": "decode", "total": len(table.records), "description": "Reading images"})
    with ThreadPoolExecutor(max(1, cfg.workers)) as pool:
        for done, (record, result, maps) in enumerate(pool.map(probe, table.records), start=1):
            on_event("progress", {"stage": "decode", "done": done})
            if isinstance(result, FileProblem):
                problems.append(result)
                continue
            mismatched = False
            for k, arr in maps.items():
                try:
                    check_size(arr, result.image.size, record.maps[k], record.path, record.row)
                except FileProblem as problem:
                    problems.append(problem)
                    stats[k].mismatches += 1
                    mismatched = True
            if mismatched:
                continue
            for k, arr in maps.items():
                _add(stats[k], kinds[k].name, arr, len(table.spec.classes[k]))
            good.append(record)
            w, h = result.image.size
            sizes[f"{w}x{h}"] += 1
            modes[result.source_mode] += 1
            raw_bytes += w * h * (len(result.image.getbands()) + (result.alpha is not None))
            flags["exif_rotated"] += result.exif_rotated
            flags["alpha"] += result.alpha is not None
            flags["grayscale"] += result.image.mode == "L"
            flags["16-bit"] += result.source_mode.startswith("I")
            flags["cmyk"] += result.source_mode == "CMYK"
            flags["palette"] += result.source_mode == "P"
    on_event("end", {"stage": "decode"})
    tasks, dense = [], []
    for k, (name, classes) in enumerate(zip(table.spec.names, table.spec.classes)):
        if k in stats:
            st = stats[k]
            dense.append(DenseTaskSummary(
                name, kinds[k].name, list(classes), [int(c) for c in st.counts] if st.counts is not None else [],
                st.invalid / st.pixels if st.pixels else 0.0,
                (st.low, st.high) if kinds[k].name == "depth" and st.low <= st.high else None, st.mismatches))
            continue
        counts = Counter(r.labels[k] for r in good)
        tasks.append(TaskSummary(name, list(classes), [counts.get(i, 0) for i in range(len(classes))]))
    return InspectReport(
        root=str(table.root),
        layout=table.layout,
        labels_file=str(table.labels_file) if table.labels_file else None,
        images=len(good),
        tasks=tasks,
        sizes=dict(sizes.most_common()),
        modes=dict(modes.most_common()),
        flags={k: v for k, v in flags.items() if v},
        problems=[{"path": p.path, "row": p.row, "reason": p.reason} for p in problems],
        estimated_output_bytes=int(raw_bytes * PNG_BYTES_PER_RAW_BYTE),
        dense_tasks=dense,
    )


def _add(st: _MapStats, kind: str, arr: np.ndarray, classes: int) -> None:
    """One map (data.kinds' conventions, its own size) into its task's running statistics."""
    if kind == "segmentation":
        valid = arr >= 0
        counts = np.bincount(arr[valid], minlength=classes)
        st.counts = counts if st.counts is None else st.counts + counts
    elif kind == "depth":
        valid = arr[0] > 0
        if valid.any():
            st.low, st.high = min(st.low, float(arr[0][valid].min())), max(st.high, float(arr[0][valid].max()))
    else:
        valid = np.abs(arr).sum(0) > 0
    st.invalid += int((~valid).sum())
    st.pixels += valid.size
