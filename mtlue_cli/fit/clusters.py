"""What `inspect` shows of a folder without labels (issue 30): the k-means pseudo-tasks `fit` would make of it,
with each cluster's size and a contact sheet (a PNG: per pseudo-task, one row per cluster of some of its members),
so that a person can look at what the clusters group before fitting on them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from mtlue_cli.config import DataConfig, FitConfig
from mtlue_cli.data.dataset import MultiTaskImageDataset, load_dataset
from mtlue_cli.events import OnEvent
from mtlue_cli.files import atomic_write

SHEET_TILE, SHEET_MEMBERS, SHEET_FONT = 48, 10, 12


@dataclass
class ClusterPreview:
    images: int
    size: int  # the working size the images were clustered at (fit's default)
    counts: dict[str, list[int]]  # pseudo-task -> members per cluster
    sheet: Path | None = None
    examples: dict[str, list[list[str]]] = field(default_factory=dict)  # pseudo-task -> per cluster, a few paths
    note: str = ""  # the default clusters a small folder cannot fill, left out


def preview_clusters(data: DataConfig, clusters: tuple[int, ...] | None = None, sheet: Path | None = None,
                     seed: int = 0, on_event: OnEvent | None = None) -> ClusterPreview:
    """Cluster `data` (read as unlabelled images) as `fit` would at its default working size, and write the
    contact sheet to `sheet` when given. fit leaves protect's holdout out, so its clusters can differ a little.
    Without `clusters`, fit's default ones that the folder is too small to fill (two images per cluster) are left
    out, with a note; clusters asked for are clustered or refused, as fit would."""
    from mtlue_cli.fit import pseudo

    defaults = FitConfig()
    size, given = defaults.image_size, clusters
    clusters = clusters or defaults.clusters
    FitConfig(clusters=clusters)  # the same checks as fit's
    dataset = load_dataset(dataclasses.replace(data, layout="unlabelled", size=size), on_event)
    note = ""
    if not given and any(len(dataset) < 2 * k for k in clusters):
        small = [k for k in clusters if len(dataset) < 2 * k]
        clusters = tuple(k for k in clusters if k not in small)
        note = f"{len(dataset)} images are too few for {', '.join(map(str, small))} clusters (two images per cluster)"
        note += (f": not shown; fit needs --clusters {','.join(map(str, clusters))} here" if clusters else
                 ": nothing to show; fit needs at least 4 images")
        if not clusters:
            return ClusterPreview(len(dataset), size, {}, note=note)
    labelled = pseudo.relabelled(dataset, pseudo.cluster_labeller(dataset.images, clusters, seed))
    examples = {}
    for k, name in enumerate(labelled.spec.names):
        members = [(labelled.labels[:, k] == j).nonzero().flatten()[:SHEET_MEMBERS] for j in range(len(labelled.spec.classes[k]))]
        examples[name] = [[labelled.records[i].path for i in m.tolist()] for m in members]
    preview = ClusterPreview(len(labelled), size, pseudo.cluster_counts(labelled), examples=examples, note=note)
    if sheet is not None:
        preview.sheet = _write_sheet(labelled, Path(sheet))
    return preview


def _write_sheet(dataset: MultiTaskImageDataset, path: Path, pad: int = 4) -> Path:
    """Per pseudo-task a title, then per cluster its name and size and up to SHEET_MEMBERS members as tiles."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=SHEET_FONT)
    line = SHEET_FONT + 4
    label_w = 90
    width = label_w + SHEET_MEMBERS * (SHEET_TILE + pad) + pad
    rows = sum(len(c) for c in dataset.spec.classes)
    height = pad + len(dataset.spec.names) * (line + pad) + rows * (SHEET_TILE + pad)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    top = pad
    for k, name in enumerate(dataset.spec.names):
        draw.text((pad, top), f"{name}: {len(dataset.spec.classes[k])} clusters", fill=(0, 0, 0), font=font)
        top += line + pad
        for j, cluster in enumerate(dataset.spec.classes[k]):
            members = (dataset.labels[:, k] == j).nonzero().flatten()
            draw.text((pad, top + SHEET_TILE // 3), f"{cluster} ({len(members)})", fill=(60, 60, 60), font=font)
            for m, i in enumerate(members[:SHEET_MEMBERS].tolist()):
                tile = Image.fromarray(dataset.images[i].permute(1, 2, 0).numpy()).resize((SHEET_TILE, SHEET_TILE))
                canvas.paste(tile, (label_w + m * (SHEET_TILE + pad), top))
            top += SHEET_TILE + pad
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: canvas.save(tmp, "PNG"))
    return path
