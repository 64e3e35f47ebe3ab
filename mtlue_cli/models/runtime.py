"""The run plumbing every command needs: device resolution, autocast, seeding, torch.distributed (DDP) sharding,
batches of indices, atomic checkpoints and uint8 -> float images."""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn as nn

from mtlue_cli.errors import ConfigError
from mtlue_cli.files import atomic_write


def resolve_device(spec: str = "auto", local_rank: int | None = None) -> torch.device:
    """auto: CUDA, then MPS, then CPU. Under torchrun each rank takes its LOCAL_RANK GPU."""
    spec = spec.strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank or 0)
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"--device {spec!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
        if device.index is None and local_rank is not None:
            device = torch.device("cuda", local_rank)
        if (device.index or 0) >= torch.cuda.device_count():
            raise ConfigError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) visible")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps was asked for but MPS is not available here; use --device cpu")
    return device


def autocast(device: torch.device, amp: str = "auto") -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA by default (fp16 on request); full precision elsewhere. `amp` is one of
    config.AMPS (checked by the configs)."""
    if device.type != "cuda" or amp == "off":
        return contextlib.nullcontext()
    dtype = torch.float16 if amp == "fp16" or (amp == "auto" and not torch.cuda.is_bf16_supported()) else torch.bfloat16
    return torch.autocast("cuda", dtype=dtype)


def needs_grad_scaler(device: torch.device, amp: str) -> bool:
    return device.type == "cuda" and (amp == "fp16" or (amp == "auto" and not torch.cuda.is_bf16_supported()))


def seed_everything(seed: int) -> torch.Generator:
    """Seed once, explicitly (method-spec §14.1); returns the generator that drives shuffles/crops."""
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover
        pass
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


@dataclass
class Dist:
    """torch.distributed context from torchrun's environment; world 1 when not launched by torchrun."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    group: Any = field(default=None, repr=False)  # the process group `barrier` waits on; None: the default one

    @classmethod
    def from_env(cls) -> Dist:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        return cls(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def init(self, device: torch.device) -> None:
        import torch.distributed as td

        if self.enabled and not td.is_initialized():
            if device.type == "cuda":  # NCCL's barrier runs on the current device: this rank's, not GPU 0
                torch.cuda.set_device(device)
            td.init_process_group("nccl" if device.type == "cuda" else "gloo")

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def shard(self, indices: torch.Tensor) -> torch.Tensor:
        """Each rank takes every world-th index of the same permutation (DistributedSampler's rule)."""
        return indices[self.rank :: self.world] if self.enabled else indices

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            import torch.distributed as td

            td.all_reduce(tensor)
        return tensor

    def from_main(self, value: int) -> int:
        """Rank 0's value of an integer, on every rank (a decision taken by one clock)."""
        if not self.enabled:
            return value
        import torch.distributed as td

        tensor = torch.tensor([value if self.is_main else 0], dtype=torch.long)
        if td.get_backend() == "nccl":
            tensor = tensor.cuda()
        td.all_reduce(tensor)
        return int(tensor.item())

    def patient(self, hours: float = 24.0) -> Dist:
        """These ranks with a CPU (gloo) group whose `barrier` waits up to `hours`: for ranks that finish uneven
        shares of work at different times (the default group gives up after 30 min with gloo, 10 with NCCL)."""
        if not self.enabled:
            return self
        import dataclasses
        import datetime

        import torch.distributed as td

        return dataclasses.replace(self, group=td.new_group(backend="gloo", timeout=datetime.timedelta(hours=hours)))

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as td

            td.barrier(group=self.group)


def batch_indices(n: int, batch_size: int, shuffle: bool, gen: torch.Generator | None, drop_last: bool = False,
                  dist: Dist | None = None) -> Iterator[torch.Tensor]:
    order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
    if dist is not None:
        order = dist.shard(order)
    m = len(order)
    # drop_last only when something is left (§14.2 victims drop the last batch; tiny sets must not lose all).
    stop = m - m % batch_size if drop_last and m >= batch_size else m
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save through `files.atomic_write`, so an interrupted write never leaves half a checkpoint."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def to_float(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (B,C,H,W) -> float in [0,1] on `device`; no mean/std normalisation (method-spec §14.2)."""
    return images.to(device, non_blocking=True).float().div_(255)
