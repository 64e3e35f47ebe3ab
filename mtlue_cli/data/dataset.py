"""The training set: labelled images decoded once into a uint8 tensor at the working size, so training epochs
never re-decode (ecosystem §3.3, §3.4), and the seeded train/test split `protect` and `verify` share.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from mtlue_cli.config import DataConfig
from mtlue_cli.data.images import decode, to_working
from mtlue_cli.data.labels import LabelTable, Record, TaskSpec, read_labels, unlabelled_note
from mtlue_cli.errors import DatasetError, FileProblem, raise_problems
from mtlue_cli.events import OnEvent, log, noop

if TYPE_CHECKING:
    import torch

MMAP_THRESHOLD_BYTES = 4 << 30


class MultiTaskImageDataset:
    """Decoded uint8 images (N, 3, S, S) at the working size plus labels (N, K).

    `__getitem__` returns `(image_uint8, labels)`, so it also works with torch DataLoader and
    DistributedSampler; the training loops index the tensors directly.
    """

    def __init__(self, table: LabelTable, images: torch.Tensor, labels: torch.Tensor, records: list[Record],
                 skipped: list[FileProblem]) -> None:
        self.table, self.images, self.labels = table, images, labels  # (N,3,S,S) uint8, (N,K) long
        self.records, self.skipped = records, skipped

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

    def subset(self, indices: list[int]) -> MultiTaskImageDataset:
        import torch

        idx = torch.as_tensor(indices, dtype=torch.long)
        return MultiTaskImageDataset(
            self.table, self.images[idx], self.labels[idx], [self.records[i] for i in indices], self.skipped
        )

    def without(self, paths: set[str]) -> MultiTaskImageDataset:
        """The images whose path is not in `paths` (protect's holdout, which its generator must never see)."""
        return self.subset([i for i, r in enumerate(self.records) if r.path not in paths]) if paths else self

    def fingerprint(self) -> str:
        """sha256 of the decoded pixels and labels: what training actually saw."""
        h = hashlib.sha256()
        h.update(repr(self.spec.to_dict()).encode())
        h.update(self.labels.numpy().tobytes())
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
    ok = [False] * n

    def work(i: int) -> FileProblem | None:
        record = table.records[i]
        try:
            decoded = decode(table.root, record.path, record.row)
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
        raise_problems(skipped[listed:], "image")
    keep = [i for i in range(n) if ok[i]]
    if not keep:
        raise DatasetError(f"{table.root}: none of the {n} images could be decoded")
    labels = torch.tensor([r.labels for r in table.records], dtype=torch.long).view(n, len(table.spec.names))
    dataset = MultiTaskImageDataset(table, images, labels, list(table.records), skipped)
    return dataset if len(keep) == n else dataset.subset(keep)


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
