"""The training set: labelled images decoded once into a uint8 tensor at the working size, so training epochs
never re-decode (ecosystem §3.3, §3.4), their label maps likewise (each resized by its kind), and the seeded
train/test split `protect` and `verify` share.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from mtlue_cli.config import DataConfig
from mtlue_cli.data.dense_labels import reading_of
from mtlue_cli.data.images import decode, to_working
from mtlue_cli.data.label_maps import check_size, read_map
from mtlue_cli.data.labels import LabelTable, Record, TaskSpec, read_labels, unlabelled_note
from mtlue_cli.errors import DatasetError, FileProblem, raise_problems
from mtlue_cli.events import OnEvent, log, noop

if TYPE_CHECKING:
    import torch

MMAP_THRESHOLD_BYTES = 4 << 30


class MultiTaskImageDataset:
    """Decoded uint8 images (N, 3, S, S) at the working size plus labels (N, K) and label maps.

    `labels[:, k]` is task k's class index (0 for a label-map task). `maps[k]` is a label-map task's targets at the
    working size, as stored: segmentation (N, S, S) int16 (-1 void), depth (N, 1, S, S) float32 (0 invalid),
    normals (N, 3, S, S) float32 (zero vector invalid); None for a classification task. `targets(idx)` gives
    every task's batch in data.kinds' conventions.

    `__getitem__` returns `(image_uint8, labels)`, so it also works with torch DataLoader and
    DistributedSampler; the training loops index the tensors directly.
    """

    def __init__(self, table: LabelTable, images: torch.Tensor, labels: torch.Tensor, records: list[Record],
                 skipped: list[FileProblem], maps: list[torch.Tensor | None] | None = None) -> None:
        self.table, self.images, self.labels = table, images, labels  # (N,3,S,S) uint8, (N,K) long
        self.records, self.skipped = records, skipped
        self.maps = maps if maps is not None else [None] * labels.shape[1]

    @property
    def spec(self) -> TaskSpec:
        return self.table.spec

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]

    def targets(self, idx: torch.Tensor | list[int]) -> list[torch.Tensor]:
        """Task k's targets for the samples `idx`: (B,) int64 class indices for a classification task, the maps in
        data.kinds' conventions for a label-map task (segmentation as int64)."""
        import torch

        idx = torch.as_tensor(idx, dtype=torch.long)
        return [self.labels[idx, k] if m is None else (m[idx].long() if m.dtype == torch.int16 else m[idx])
                for k, m in enumerate(self.maps)]

    def subset(self, indices: list[int]) -> MultiTaskImageDataset:
        import torch

        idx = torch.as_tensor(indices, dtype=torch.long)
        return MultiTaskImageDataset(
            self.table, self.images[idx], self.labels[idx], [self.records[i] for i in indices], self.skipped,
            [None if m is None else m[idx] for m in self.maps],
        )

    def without(self, paths: set[str]) -> MultiTaskImageDataset:
        """The images whose path is not in `paths` (protect's holdout, which its generator must never see)."""
        return self.subset([i for i, r in enumerate(self.records) if r.path not in paths]) if paths else self

    def fingerprint(self) -> str:
        """sha256 of the decoded pixels and labels: what training actually saw."""
        h = hashlib.sha256()
        h.update(repr(self.spec.to_dict()).encode())
        h.update(self.labels.numpy().tobytes())
        for m in self.maps:  # none without label-map tasks: a classification fingerprint is unchanged
            if m is not None:
                h.update(m.contiguous().numpy().tobytes())
        for i in range(0, len(self.images), 1024):  # in slices: one bytes copy of a memory-mapped cache is all of it
            h.update(self.images[i : i + 1024].contiguous().numpy().tobytes())
        return h.hexdigest()


def _allocate(n: int, size: int, cache: str) -> torch.Tensor:
    """(n, 3, size, size) uint8 in memory, or memory-mapped from an unlinked temp file past the threshold."""
    import torch

    nbytes = n * 3 * size * size
    if cache == "mmap" or (cache == "auto" and nbytes > MMAP_THRESHOLD_BYTES):
        import tempfile

        handle = tempfile.NamedTemporaryFile(prefix="mtlue-cache-", suffix=".u8", delete=False)
        handle.close()
        images = torch.from_file(handle.name, shared=True, size=max(nbytes, 1), dtype=torch.uint8)
        os.unlink(handle.name)  # the mapping keeps the data alive; nothing is left on disk
        return images[:nbytes].view(n, 3, size, size)
    return torch.empty((n, 3, size, size), dtype=torch.uint8)


def load_dataset(cfg: DataConfig, on_event: OnEvent | None = None, table: LabelTable | None = None) -> MultiTaskImageDataset:
    """Read labels, decode every image once at `cfg.size`, and cache the uint8 pixels."""
    import numpy as np
    import torch

    on_event = on_event or noop
    table = table or read_labels(cfg)
    # Training and judging use the labelled rows: images without one are left out, said in one line.
    # (protect stops on them instead: an unlabelled image would silently stay unprotected.)
    if table.unlabelled:
        log(on_event, f"{unlabelled_note(table)}; they are left out", level="warning")
    skipped = table.bad
    listed = len(skipped)
    if skipped and not cfg.skip_bad:
        raise_problems(skipped)
    n, size = len(table.records), cfg.size
    images = _allocate(n, size, cfg.cache)
    kinds, reading = table.spec.kinds, reading_of(cfg)
    too_many = [t for t, k in zip(table.spec.names, kinds) if k.dense and getattr(k, "classes", 0) > SEG_MAX_CLASSES]
    if too_many:
        raise DatasetError(f"segmentation task(s) {too_many} have over {SEG_MAX_CLASSES} classes, more than the "
                           "int16 maps hold")
    maps = [_allocate_map(kind.name, n, size) if kind.dense else None for kind in kinds]
    ok = [False] * n

    def work(i: int) -> FileProblem | None:
        record = table.records[i]
        try:
            decoded = decode(table.root, record.path, record.row)
            for k, kind in enumerate(kinds):
                if maps[k] is not None:
                    name = record.maps[k]
                    arr = read_map(table.root, name, kind.name, reading, getattr(kind, "classes", None), record.row)
                    check_size(arr, decoded.image.size, name, record.path, record.row)
                    maps[k][i] = torch.from_numpy(kind.resize(arr, size).astype(_STORED[kind.name]))
        except FileProblem as problem:
            return problem
        arr = np.asarray(to_working(decoded.image, size), dtype=np.uint8)  # (S,S,3)
        images[i] = torch.from_numpy(arr.copy()).permute(2, 0, 1)
        ok[i] = True
        return None

    on_event("start", {"stage": "decode", "total": n, "description": "Decoding images"})
    with ThreadPoolExecutor(max(1, cfg.workers)) as pool:
        for done, problem in enumerate(pool.map(work, range(n)), start=1):
            if problem is not None:
                skipped.append(problem)
            on_event("progress", {"stage": "decode", "done": done})
    on_event("end", {"stage": "decode"})
    if not cfg.skip_bad and len(skipped) > listed:
        raise_problems(skipped[listed:], "image or label map" if any(m is not None for m in maps) else "image")
    keep = [i for i in range(n) if ok[i]]
    if not keep:
        raise DatasetError(f"{table.root}: none of the {n} images could be decoded")
    labels = torch.tensor([r.labels for r in table.records], dtype=torch.long).view(n, len(table.spec.names))
    dataset = MultiTaskImageDataset(table, images, labels, list(table.records), skipped, maps)
    return dataset if len(keep) == n else dataset.subset(keep)


# How the working-size maps are stored (N x this): segmentation in int16 (-1 void; classes < 32768), the rest float32.
_STORED = {"segmentation": "int16", "depth": "float32", "normals": "float32"}
SEG_MAX_CLASSES = 32767
_CHANNELS = {"segmentation": (), "depth": (1,), "normals": (3,)}


def _allocate_map(kind: str, n: int, size: int) -> torch.Tensor:
    import torch

    fill = -1 if kind == "segmentation" else 0
    return torch.full((n, *_CHANNELS[kind], size, size), fill, dtype=getattr(torch, _STORED[kind]))


def split_indices(records: list[Record], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded train/test split by a hash of each path: stable whatever else is in the set.

    `protect --holdout` and `verify --test-split` use this same function, so the test images of
    `verify` are exactly the ones `protect` left out.
    """
    train, test = [], []
    for i, record in enumerate(records):
        digest = hashlib.sha256(f"{seed}:{record.path}".encode()).digest()
        (test if int.from_bytes(digest[:8], "big") / 2**64 < fraction else train).append(i)
    return train, test


def held_out(records: list[Record], fraction: float, seed: int) -> set[str]:
    """The paths `split_indices` leaves out (none without a fraction)."""
    return {records[i].path for i in split_indices(records, fraction, seed)[1]} if fraction else set()
