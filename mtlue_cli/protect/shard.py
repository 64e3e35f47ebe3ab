"""`protect` under torchrun: which files each process takes, and how the processes' manifest parts become the
one manifest.jsonl that a single process writes.

Each rank protects every `world`-th batch of files (whole batches, so each process runs the generator on
full batches) and writes its own `manifest.rank{r}.jsonl` (`outputs.part_path`). Once every rank is done,
rank 0 folds the parts into manifest.jsonl in protect's order. A run interrupted before that leaves the
parts: `--resume`, with any number of processes, reads them (`outputs.load_manifest`) and folds them first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mtlue_cli.data.labels import Record
from mtlue_cli.protect import outputs
from mtlue_cli.protect.outputs import FileResult


def share(n: int, batch_size: int, rank: int, world: int) -> list[int]:
    """Indices (of n in protect's order) that `rank` of `world` protects: every world-th batch."""
    return [i for i in range(n) if (i // batch_size) % world == rank]


def fold_parts(out: Path, order: dict[str, int] | None = None) -> None:
    """Append the parts' entries to manifest.jsonl and remove the parts. With `order` (source -> position in
    protect's order; sources it lacks, the label problems, first) the entries are sorted by it; without, an
    interrupted run's parts keep rank order."""
    found = outputs.parts(out)
    if not found:
        return
    entries = [e for p in found for e in outputs.read_entries(p)]
    if order is not None:
        entries.sort(key=lambda e: order.get(e["source"], -1))  # stable: a duplicate row keeps its place
    outputs.append_entries(out, entries)
    for p in found:
        p.unlink()


def gather(out: Path, records: list[Record], previous: dict[str, dict[str, Any]],
            dist: Any) -> tuple[dict[str, FileResult], list[FileResult]]:
    """After every rank's share: all ranks' results (rank 0 merges the parts into manifest.jsonl).

    A file no rank wrote this run, whose old entry is ok, is one a rank found intact (--resume): every
    file a rank took on leaves an entry, written or failed."""
    order = {r.path: i for i, r in enumerate(records)}
    dist.barrier()  # every part is complete
    new = sorted((e for p in outputs.parts(out) for e in outputs.read_entries(p)), key=lambda e: order.get(e["source"], -1))
    dist.barrier()  # read by every rank before rank 0 folds them away
    if dist.is_main:
        fold_parts(out, order)
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
