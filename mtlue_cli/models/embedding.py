"""The generator's label-embedding module for dense tasks (method-spec §8): for a segmentation, depth or normals
task the class-embedding lookup e^k_{y^k} is replaced by a small conv net E^k(y^k; phi) that maps the task's
label map to a 16 x S x S embedding, concatenated with z like the class embeddings. There is no embedding
regulariser for dense tasks (§8), so `PerturbationGenerator.embedding_weights()` leaves these out.

The design is §8's minimal one (the official code has none): the map as channels (a one-hot segmentation map,
a normalised depth map or a normal map), one 3x3 conv, then a stride-2 3x3 conv per halving down to S, then
a 1x1 conv to the embedding channels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlue_cli.config import DENSE_KINDS

HIDDEN = 32  # channels inside each label-embedding net


def dense_channels(kind: str, classes: int) -> int:
    """Input channels of a dense task's embedding net: C for segmentation (one-hot), 1 for depth, 3 for normals."""
    return {"segmentation": classes, "depth": 1, "normals": 3}[kind]


def dense_input(kind: str, labels: Tensor, classes: int) -> Tensor:
    """A dense label map as the embedding net's float input (B, channels, H, W).

    segmentation: (B, H, W) class indices; anything outside [0, C) (the ignore value -1, VOC's 255) is all-zero.
    depth: (B, 1, H, W) or (B, H, W), any unit, 0 = invalid; divided by the mean valid depth of its image and
        shifted by -1, so the embedding sees the scene's shape, not the unit (mm, metres) it came in; invalid
        pixels are 0.
    normals: (B, 3, H, W) (x, y, z) vectors, the zero vector invalid; used as they are."""
    if kind == "segmentation":
        if labels.dim() != 3:
            raise ValueError(f"a segmentation map must have shape (B, H, W), got {tuple(labels.shape)}")
        labels = labels.long()
        valid = (labels >= 0) & (labels < classes)
        onehot = F.one_hot(torch.where(valid, labels, 0), classes).permute(0, 3, 1, 2).float()  # (B, C, H, W)
        return onehot * valid[:, None].float()
    if kind == "depth":
        if labels.dim() == 3:
            labels = labels[:, None]
        if labels.dim() != 4 or labels.shape[1] != 1:
            raise ValueError(f"a depth map must have shape (B, 1, H, W), got {tuple(labels.shape)}")
        depth = labels.float()
        valid = depth > 0
        mean = (depth * valid).sum(dim=(1, 2, 3), keepdim=True) / valid.sum(dim=(1, 2, 3), keepdim=True).clamp(min=1)
        return torch.where(valid, depth / mean.clamp(min=1e-12) - 1, torch.zeros_like(depth))  # (B, 1, H, W)
    if kind == "normals":
        if labels.dim() != 4 or labels.shape[1] != 3:
            raise ValueError(f"a normal map must have shape (B, 3, H, W), got {tuple(labels.shape)}")
        return labels.float()
    raise ValueError(f"unknown dense kind {kind!r}: use one of {', '.join(DENSE_KINDS)}")


def label_columns(names: list[str], task_kinds: dict[str, str], labels: Tensor, batch: int) -> dict[str, int]:
    """Column of `labels` that each classification task reads: its task index, or with dense tasks and one column
    per classification task only, its index among those."""
    classification = [name for name in names if name not in task_kinds]
    widths = sorted({len(names), len(classification)})
    if labels.dim() != 2 or labels.shape[0] != batch or labels.shape[1] not in widths:
        expected = " or ".join(f"({batch}, {w})" for w in widths)
        raise ValueError(f"labels must have shape {expected}, got {tuple(labels.shape)}")
    if labels.shape[1] == len(names):
        return {name: k for k, name in enumerate(names)}
    return {name: k for k, name in enumerate(classification)}


def maps_by_name(names: list[str], task_kinds: dict[str, str],
                 maps: Sequence[Tensor | None] | Mapping[str, Tensor] | None) -> dict[str, Tensor | None]:
    """`forward`'s `maps` (one entry per task, None for classification tasks, or dense task name -> map) by name."""
    if maps is None:
        return {}
    if isinstance(maps, Mapping):
        unknown = [name for name in maps if name not in task_kinds]
        if unknown:
            raise ValueError(f"maps names {unknown}, which are not dense tasks; those are {list(task_kinds)}")
        return dict(maps)
    if len(maps) != len(names):
        raise ValueError(f"maps must hold one entry per task ({len(names)}, None for classification "
                         f"tasks), got {len(maps)}")
    stray = [name for name, m in zip(names, maps) if m is not None and name not in task_kinds]
    if stray:
        raise ValueError(f"maps holds a map for the classification tasks {stray}; put None there")
    return dict(zip(names, maps))


class LabelEmbedding(nn.Module):
    """E^k: a dense label map of one task (B, H, W) or (B, ch, H, W) -> its embedding (B, embed_channels, S, S)."""

    def __init__(self, kind: str, classes: int, embed_channels: int, downsampling: int) -> None:
        super().__init__()
        if kind not in DENSE_KINDS:
            raise ValueError(f"unknown dense kind {kind!r}: use one of {', '.join(DENSE_KINDS)}")
        self.kind, self.classes = kind, classes
        layers: list[nn.Module] = [nn.Conv2d(dense_channels(kind, classes), HIDDEN, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(int(math.log2(downsampling))):
            layers += [nn.Conv2d(HIDDEN, HIDDEN, 3, stride=2, padding=1), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(HIDDEN, embed_channels, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, labels: Tensor) -> Tensor:
        return self.net(dense_input(self.kind, labels, self.classes))  # (B, embed_channels, S, S)

    def blank(self, batch: int, size: int, like: Tensor) -> Tensor:
        """The label-independent embedding of an unprotected task (§2.4 for dense tasks): that of an all-invalid map."""
        first = self.net[0]
        zeros = like.new_zeros(batch, first.in_channels, size, size)
        return self.net(zeros)  # (B, embed_channels, S, S)


def check_tasks(tasks: dict[str, list[str]], task_kinds: dict[str, str]) -> dict[str, list[str]]:
    """The generator's tasks checked: names, class lists (none for depth and normals maps) and dense kinds."""
    if not isinstance(tasks, dict) or not tasks:
        raise ValueError("tasks must be a non-empty mapping of task name -> list of class names")
    unknown = [name for name in task_kinds if name not in tasks]
    if unknown:
        raise ValueError(f"task_kinds names unknown tasks {unknown}; the tasks are {list(tasks)}")
    wrong = {name: kind for name, kind in task_kinds.items() if kind not in DENSE_KINDS}
    if wrong:
        raise ValueError(f"task_kinds {wrong}: a dense task's kind is one of {', '.join(DENSE_KINDS)} "
                         "(classification tasks are left out)")
    checked: dict[str, list[str]] = {}
    for name, classes in tasks.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"task names must be non-empty strings, got {name!r}")
        if isinstance(classes, str) or not isinstance(classes, (list, tuple)):
            raise ValueError(f"task {name!r}: classes must be a list of class names, got {classes!r}")
        classes = list(classes)
        if task_kinds.get(name) in ("depth", "normals"):
            if classes:
                raise ValueError(f"task {name!r} is a {task_kinds[name]} map: it has no classes, give []")
            checked[name] = classes
            continue
        if len(classes) < 2:
            raise ValueError(f"task {name!r} needs at least 2 classes, got {classes}")
        if len(set(classes)) != len(classes):
            raise ValueError(f"task {name!r} lists a class twice: {classes}")
        checked[name] = classes
    return checked
