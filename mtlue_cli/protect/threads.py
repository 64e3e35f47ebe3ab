"""How many threads protect runs on a CPU: the cores this process may use (shared by the torchrun processes
of a node), the decode/encode workers, and the generator's intra-op threads beside them."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Iterator

from mtlue_cli.config import ProtectConfig


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS says, else all of them)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _my_cores() -> int:
    """The cores this process may use, shared by the torchrun processes of this node."""
    return max(1, available_cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def resolve_workers(cfg: ProtectConfig) -> int:
    """--workers, or (0) the cores this process may use."""
    return cfg.workers if cfg.workers > 0 else _my_cores()


@contextmanager
def generator_threads(device: Any, workers: int) -> Iterator[int]:
    """On a CPU, torch's intra-op threads for the generator while protect's worker threads run: the cores those
    leave, at least one. OpenMP threads that share their cores with busy workers wait on each other at every
    barrier (on a busy 2-core machine, 2 generator threads beside 2 workers ran protect 5x slower than 1).
    Other devices: unchanged."""
    import torch

    before = torch.get_num_threads()
    if device.type != "cpu":
        yield before
        return
    torch.set_num_threads(max(1, min(before, _my_cores() - workers)))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
