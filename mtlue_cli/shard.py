"""`protect` across torchrun processes: which files each rank writes, and one manifest from the ranks' parts.

Files are dealt to ranks by whole generator batches of protect's deterministic order (batch b goes to
rank b mod world), so every batch holds exactly the images a single process batches together and the
written bytes match a one-process run. The deal looks only at that order, never at which files are
already done, so `--resume` on any number of processes finishes the same set.

While running, each rank appends to its own part (manifest.rank{r}.jsonl); at the end rank 0 appends
the parts to manifest.jsonl in protect's order. Parts left by an interrupted run are read by `--resume`
and folded into manifest.jsonl before a new run writes anything.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

MANIFEST = "manifest.jsonl"
PART = re.compile(r"manifest\.rank(\d+)\.jsonl")


def share(n: int, batch_size: int, rank: int, world: int) -> list[int]:
    """Indices (of n in protect's order) that `rank` of `world` protects: every world-th batch."""
    return [i for i in range(n) if (i // batch_size) % world == rank]


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
    entries: dict[str, dict[str, Any]] = {}
    for path in (out / MANIFEST, *parts(out)):
        for entry in read_entries(path):
            entries[entry["source"]] = entry
    return entries


def append(out: Path, entries: list[dict[str, Any]]) -> None:
    """Append entries to manifest.jsonl (after a line cut by a crash, on a line of their own), atomically."""
    path = out / MANIFEST
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    if text and not text.endswith("\n"):
        text += "\n"
    text += "".join(json.dumps(e) + "\n" for e in entries)
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def fold_parts(out: Path) -> None:
    """Move the entries of parts left by an interrupted run into manifest.jsonl and remove the parts."""
    found = parts(out)
    if found:
        append(out, [e for p in found for e in read_entries(p)])
        for p in found:
            p.unlink()


def merge_parts(out: Path, order: dict[str, int]) -> None:
    """Rank 0, once every rank has closed its part: the parts' entries, in protect's order (`order`: source
    -> position; sources it lacks, the label problems, first), appended to manifest.jsonl; parts removed."""
    found = parts(out)
    entries = [e for p in found for e in read_entries(p)]
    entries.sort(key=lambda e: order.get(e["source"], -1))  # stable: a duplicate row keeps its place
    append(out, entries)
    for p in found:
        p.unlink()
