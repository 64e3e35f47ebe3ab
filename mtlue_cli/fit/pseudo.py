"""Labels for photos that have none (issue 30): k-means pseudo-tasks that `fit` trains the generator on, and the
labellers that give a generator's labels to `protect` (`models.labeller`).

`cluster_labeller` is the label-free path: the images' principal components (computed on the set itself, nothing
downloaded), one k-means clustering per pseudo-task (`--clusters 2,5,10`: one task of 2 clusters, one of 5, one
of 10). The generator is then fitted on those tasks exactly as on labels ("Unlearnable Clusters", Zhang et al.,
CVPR 2023, perturb clusters of a surrogate's features instead of classes; Segue does it with k-means on faces).
`train_labeller` trains a small classifier on labelled photos, so that a pretrained generator can predict the
labels of photos that come without them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from mtlue_cli.data.dataset import MultiTaskImageDataset
from mtlue_cli.data.tasks import LabelTable, TaskSpec
from mtlue_cli.errors import ConfigError
from mtlue_cli.events import OnEvent, noop
from mtlue_cli.models.labeller import Labeller

FIT_SAMPLE = 20_000  # images the principal components and the clusters are fitted on (all of a smaller set)
KMEANS_RESTARTS, KMEANS_ITERS = 4, 100


def task_name(k: int) -> str:
    return f"cluster_k{k}"


def _float(images: torch.Tensor, size: int, labeller: Labeller | None = None, batch: int = 512) -> torch.Tensor:
    """uint8 (N, C, S, S) -> the labeller's features (N, F), or, without one, the flattened (N, C*size*size) pixels
    at `size` (what the principal components are fitted on)."""
    import torch.nn.functional as F

    out = []
    for i in range(0, len(images), batch):
        x = images[i:i + batch].float().div(255)
        if labeller is not None:
            out.append(labeller.embed(x))
            continue
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(x.flatten(1))
    return torch.cat(out)


def kmeans(features: torch.Tensor, k: int, gen: torch.Generator, restarts: int = KMEANS_RESTARTS,
           iters: int = KMEANS_ITERS) -> torch.Tensor:
    """(k, F) centroids: k-means++ seeding then Lloyd's iterations, the lowest-inertia of `restarts` runs. An empty
    cluster is re-seeded at the point farthest from its centroid, so every cluster keeps members."""
    best, best_inertia = None, float("inf")
    for _ in range(restarts):
        c = features[torch.randint(len(features), (1,), generator=gen)]
        for _ in range(1, k):
            d = torch.cdist(features, c).min(1).values.square()
            c = torch.cat([c, features[torch.multinomial(d / d.sum() if d.sum() > 0 else d + 1, 1, generator=gen)]])
        for _ in range(iters):
            dist = torch.cdist(features, c)
            assign = dist.argmin(1)
            new = torch.zeros_like(c).index_add_(0, assign, features)
            counts = torch.bincount(assign, minlength=k)
            own = dist.gather(1, assign[:, None]).squeeze(1).clone()
            for j in (counts == 0).nonzero().flatten().tolist():  # re-seed an empty cluster at the worst-fitted point
                far = int(own.argmax())
                old = int(assign[far])
                new[old] -= features[far]  # the point leaves its cluster
                counts[old] -= 1
                new[j], counts[j] = features[far], 1
                assign[far], own[far] = j, -1.0  # not picked twice
            new = new / counts[:, None].clamp(min=1)
            moved = (new - c).abs().max()
            c = new
            if moved < 1e-6:
                break
        inertia = float(torch.cdist(features, c).min(1).values.square().sum())
        if inertia < best_inertia:
            best, best_inertia = c, inertia
    assert best is not None
    return best


def cluster_labeller(images: torch.Tensor, clusters: tuple[int, ...], seed: int = 0, feature_size: int = 32,
                     components: int = 64) -> Labeller:
    """A "clusters" labeller fitted on uint8 images (N, C, S, S): per-pixel standardisation and principal
    components at `feature_size` px, then one k-means head per entry of `clusters`."""
    n = len(images)
    if n < 2 * max(clusters):
        raise ConfigError(f"{n} images are too few for {max(clusters)} clusters: give --clusters under {max(n // 2, 2)}")
    gen = torch.Generator().manual_seed(seed)
    sample = torch.randperm(n, generator=gen)[:FIT_SAMPLE].sort().values if n > FIT_SAMPLE else torch.arange(n)
    pixels = _float(images[sample], feature_size)  # (M, D)
    mean, scale = pixels.mean(0), pixels.std(0).clamp(min=1e-3)
    standard = (pixels - mean) / scale
    q = min(components, standard.shape[0] - 1, standard.shape[1])
    with torch.random.fork_rng(devices=[]):  # pca_lowrank draws from the global RNG: seeded, and left as it was
        torch.manual_seed(seed)
        _, _, basis = torch.pca_lowrank(standard, q=q, center=False, niter=4)  # (D, q)
    tasks = {task_name(k): [f"c{j}" for j in range(k)] for k in clusters}
    labeller = Labeller(tasks, "clusters", feature_size, q, in_channels=images.shape[1])
    labeller.mean.copy_(mean), labeller.scale.copy_(scale), labeller.basis.copy_(basis)
    features = standard @ basis
    distinct = len(torch.unique(features, dim=0))
    if distinct < max(clusters):  # duplicates: k-means cannot give every cluster members
        raise ConfigError(f"only {distinct} distinct images: too few for {max(clusters)} clusters; give --clusters "
                          f"under {max(distinct, 2)}")
    with torch.no_grad():
        for head, k in zip(labeller.heads, clusters):
            c = kmeans(features, k, gen)  # nearest centroid as a linear layer: argmax 2 c.f - |c|^2
            head.weight.copy_(2 * c)
            head.bias.copy_(-c.square().sum(1))
    return labeller.eval()


def predict(labeller: Labeller, images: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """(N, K) class indices the labeller gives uint8 images (N, C, S, S)."""
    with torch.no_grad():
        return torch.cat([labeller.predict(images[i:i + batch].float().div(255)) for i in range(0, len(images), batch)]) \
            if len(images) else torch.zeros((0, len(labeller.tasks)), dtype=torch.long)


def relabelled(dataset: MultiTaskImageDataset, labeller: Labeller) -> MultiTaskImageDataset:
    """`dataset` with the labeller's tasks as its labels (an unlabelled set's pseudo-tasks)."""
    labels = predict(labeller, dataset.images)
    spec = TaskSpec(tuple(labeller.tasks), tuple(tuple(c) for c in labeller.tasks.values()))
    records = [dataclasses.replace(r, labels=tuple(int(v) for v in row)) for r, row in zip(dataset.records, labels.tolist())]
    table: LabelTable = dataclasses.replace(dataset.table, spec=spec, records=records)
    return MultiTaskImageDataset(table, dataset.images, labels, records, dataset.skipped)


def cluster_counts(dataset: MultiTaskImageDataset) -> dict[str, list[int]]:
    """Members per cluster of each pseudo-task (what `fit` and `inspect` report)."""
    return {name: torch.bincount(dataset.labels[:, k], minlength=len(dataset.spec.classes[k])).tolist()
            for k, name in enumerate(dataset.spec.names)}


def train_labeller(dataset: MultiTaskImageDataset, epochs: int = 30, batch_size: int = 128, lr: float = 2e-3,
                   width: int = 16, seed: int = 0, device: Any = "cpu", on_event: OnEvent | None = None) -> Labeller:
    """A "classifier" labeller trained on a labelled set's class tasks (random crop and flip, AdamW, cosine)."""
    from mtlue_cli.models.engine import augment

    on_event = on_event or noop
    spec = dataset.spec
    if any(spec.dense):
        raise ConfigError("a labeller predicts class labels; label-map tasks cannot be predicted")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    tasks = {name: list(classes) for name, classes in zip(spec.names, spec.classes)}
    model = Labeller(tasks, "classifier", dataset.size, in_channels=dataset.images.shape[1], width=width).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    steps = epochs * max(1, len(dataset) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    pad = max(2, dataset.size // 16)
    step = 0
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(dataset), generator=gen)
        total = 0.0
        for i in range(0, len(order) - batch_size + 1 if len(order) >= batch_size else 1, batch_size):
            idx = order[i:i + batch_size]
            x = dataset.images[idx].float().div(255)
            x = torch.nn.functional.pad(x, (pad,) * 4, mode="reflect")
            x = augment(x, dataset.size, gen).to(device)
            y = dataset.labels[idx].to(device)
            loss = sum(torch.nn.functional.cross_entropy(logits, y[:, k]) for k, logits in enumerate(model(x)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step < steps - 1:
                sched.step()
            step += 1
            total += float(loss.detach())
        on_event("epoch", {"epoch": epoch + 1, "of": epochs, "loss": total, "stage": "labeller"})
    return model.cpu().eval()
