"""Linear-probe detectability (Zhu et al., AAAI 2024, hala64/udp; ecosystem §2.11): can a linear model on raw
pixels tell the protected classes apart far better than it can on the originals? Unlearnable examples work
by planting an easy, label-correlated shortcut, and a shortcut that a linear model finds is one an attacker
can detect (and a defence such as orthogonal projection can remove).

Per task, a linear model is trained on 80% of the images and tested on the other 20%, once on the
protected images and once on their clean originals; both held-out accuracies are reported, not a fixed
bound (a binary task's majority class can exceed the paper's 0.7 on its own).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

EPOCHS, LR, BATCH = 20, 1e-3, 64
HOLDOUT = 0.2
MARGIN = 0.10  # held-out accuracy this far above the originals' (and the majority class) reads as detectable
MAX_IMAGES = 10_000  # a seeded sample beyond this: the probe needs no more to see a shortcut, and stays seconds


@dataclass
class Probe:
    acc: float  # best held-out accuracy over the epochs
    epoch: int  # the epoch that reached it (1-based)
    majority: float  # held-out accuracy of always answering the training part's most frequent class


@dataclass
class DetectRow:
    task: str
    protected: Probe
    clean: Probe
    detectable: bool
    reading: str


@dataclass
class Detectability:
    tasks: list[DetectRow] = field(default_factory=list)
    detectable: list[str] = field(default_factory=list)  # the tasks flagged
    summary: str = ""
    epochs: int = EPOCHS
    images: int = 0  # protected images the probe saw (a sample beyond MAX_IMAGES)


def _summary(rows: list[DetectRow]) -> str:
    flagged = [row for row in rows if row.detectable]
    if not flagged:
        return ("a linear model does no better on the protected images than on the originals: "
                "the perturbation is not easier to detect than the originals")
    worst = max(flagged, key=lambda r: r.protected.acc - r.clean.acc)
    return f"{len(flagged)} of {len(rows)} task(s) easy to detect; e.g. {worst.reading}"


def probe(images: torch.Tensor, labels: torch.Tensor, num_classes: list[int], seed: int = 0,
          epochs: int = EPOCHS) -> list[Probe]:
    """Linear probes on a seeded 80/20 split of uint8 images (N,C,H,W) with labels (N,K) (a sample of at
    most MAX_IMAGES): the best held-out accuracy per task and the epoch it came at."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:MAX_IMAGES]
    n_test = max(1, round(len(order) * HOLDOUT))
    test, train = order[:n_test], order[n_test:]
    return linear_probe(images[train], labels[train], images[test], labels[test], num_classes, seed, epochs)


def linear_probe(train_images: torch.Tensor, train_labels: torch.Tensor, test_images: torch.Tensor,
                 test_labels: torch.Tensor, num_classes: list[int], seed: int = 0, epochs: int = EPOCHS) -> list[Probe]:
    """One linear model (with bias) per task on flattened uint8 images, pixels standardised with the training
    images' statistics; Adam, evaluated after every epoch. Returns per task the best test accuracy."""
    gen = torch.Generator().manual_seed(seed)
    x_train, x_test = train_images.flatten(1), test_images.flatten(1)  # uint8: floats a batch at a time
    total = torch.zeros(x_train.shape[1], dtype=torch.float64)
    square = torch.zeros_like(total)
    for chunk in x_train.split(1024):
        total += chunk.double().sum(0)
        square += chunk.double().pow(2).sum(0)
    mean = total / len(x_train)
    var = (square / len(x_train) - mean**2) * len(x_train) / max(len(x_train) - 1, 1)
    mean, std = mean.float(), var.clamp_min(1.0).sqrt().float()  # grey levels: flat pixels are not blown up
    starts = torch.tensor([0, *num_classes]).cumsum(0).tolist()
    model = torch.nn.Linear(x_train.shape[1], sum(num_classes))
    torch.nn.init.zeros_(model.weight)
    torch.nn.init.zeros_(model.bias)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    best = [Probe(-1.0, 0, 0.0) for _ in num_classes]
    for epoch in range(1, epochs + 1):
        for idx in torch.randperm(len(x_train), generator=gen).split(BATCH):
            logits = model((x_train[idx].float() - mean) / std)
            loss = sum(F.cross_entropy(logits[:, a:b], train_labels[idx, k])
                       for k, (a, b) in enumerate(zip(starts, starts[1:])))
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            logits = torch.cat([model((chunk.float() - mean) / std) for chunk in x_test.split(1024)])
        for k, (a, b) in enumerate(zip(starts, starts[1:])):
            acc = float((logits[:, a:b].argmax(1) == test_labels[:, k]).float().mean())
            if acc > best[k].acc:
                best[k] = Probe(acc, epoch, 0.0)
    for k, c in enumerate(num_classes):
        top = int(torch.bincount(train_labels[:, k], minlength=c).argmax())
        best[k].majority = float((test_labels[:, k] == top).float().mean())
    return best


def detect(protected: torch.Tensor, protected_labels: torch.Tensor, clean: torch.Tensor, clean_labels: torch.Tensor,
           tasks: list[str], num_classes: list[int], seed: int = 0, epochs: int = EPOCHS) -> Detectability:
    """Per task: the linear probe on the protected images beside the same probe on the clean originals."""
    prot = probe(protected, protected_labels, num_classes, seed, epochs)
    orig = probe(clean, clean_labels, num_classes, seed, epochs)
    rows = []
    n_test = max(1, round(min(len(protected), MAX_IMAGES) * HOLDOUT))
    # Two standard errors of a difference of two held-out accuracies: on a small set, chance alone moves
    # a probe by more than MARGIN.
    need = max(MARGIN, 2 * math.sqrt(0.5 / n_test))
    for task, p, c in zip(tasks, prot, orig):
        flagged = p.acc >= max(c.acc, p.majority) + need
        after = f"after {p.epoch} epoch{'s' if p.epoch > 1 else ''}"
        if flagged:
            reading = (f"a linear model separates your protected {task} classes at {p.acc:.0%} {after} vs {c.acc:.0%} "
                       "on the originals: the perturbation is easy to detect")
        else:
            reading = (f"a linear model reaches {p.acc:.0%} on your protected {task} classes vs {c.acc:.0%} on the "
                       "originals: not easier to detect than the originals")
        rows.append(DetectRow(task, p, c, flagged, reading))
    return Detectability(rows, [r.task for r in rows if r.detectable], _summary(rows), epochs, min(len(protected), MAX_IMAGES))
