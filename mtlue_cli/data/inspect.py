"""`inspect_dataset`: a dry run over labels and images before any training: tasks, class counts, image modes
and sizes, the problems a run would meet, and a rough size of the protected output."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from mtlue_cli.config import DataConfig
from mtlue_cli.data.images import Decoded, decode
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

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["tasks"] = [
            {"name": t.name, "classes": t.classes, "counts": t.counts, "majority_share": t.majority_share}
            for t in self.tasks
        ]
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

    def probe(record: Record) -> tuple[Record, Decoded | FileProblem]:
        try:
            return record, decode(table.root, record.path, record.row)
        except FileProblem as problem:
            return record, problem

    on_event("start", {"stage": "decode", "total": len(table.records), "description": "Reading images"})
    with ThreadPoolExecutor(max(1, cfg.workers)) as pool:
        for done, (record, result) in enumerate(pool.map(probe, table.records), start=1):
            on_event("progress", {"stage": "decode", "done": done})
            if isinstance(result, FileProblem):
                problems.append(result)
                continue
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
    tasks = []
    for k, (name, classes) in enumerate(zip(table.spec.names, table.spec.classes)):
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
    )
