"""The training engine with label-map tasks: joint crop + flip, per-task targets, meters."""

from __future__ import annotations

import torch

from mtlue_cli.data.kinds import Binary, Depth, Normals, Segmentation
from mtlue_cli.models.classifiers import predict, task_losses
from mtlue_cli.models.dense import DenseMTLNet
from mtlue_cli.models.engine import ClassifierTrainer, augment, evaluate, score_tasks, train_classifier


def _coded(b: int, s: int) -> torch.Tensor:
    """Images whose every pixel holds its own column index (R) and row index (G): (B, 3, S, S) in [0, 1]."""
    cols = torch.arange(s).view(1, 1, s).expand(b, s, s).float()
    rows = torch.arange(s).view(1, s, 1).expand(b, s, s).float()
    return torch.stack([cols / 255, rows / 255, torch.zeros(b, s, s)], dim=1)


def test_joint_augment_moves_the_maps_with_their_pixels() -> None:
    b, s, crop = 8, 12, 8
    x = _coded(b, s)
    seg = (torch.arange(s).view(1, 1, s).expand(b, s, s) * 100 + torch.arange(s).view(1, s, 1)).long()  # col*100+row
    depth = torch.arange(s).float().view(1, 1, 1, s).expand(b, 1, s, s).clone()  # its column
    normals = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1).expand(b, 3, s, s).clone()  # facing right
    kinds = [Binary(), Segmentation(1200), Depth(), Normals()]
    labels = torch.randint(0, 2, (b,))
    plain = augment(x, crop, torch.Generator().manual_seed(3))
    out, (lab, seg_a, depth_a, normals_a) = augment(x, crop, torch.Generator().manual_seed(3),
                                                   [labels, seg, depth, normals], kinds)
    assert torch.equal(out, plain)  # the same random draws as the classification path
    assert torch.equal(lab, labels)
    col, row = (out[:, 0] * 255).round().long(), (out[:, 1] * 255).round().long()  # (B, crop, crop)
    assert torch.equal(seg_a, col * 100 + row)  # every map pixel is where its image pixel went
    assert torch.equal(depth_a[:, 0], col.float())
    flipped = col[:, 0, 0] > col[:, 0, -1]  # a mirrored crop reads its columns right to left
    assert flipped.any() and (~flipped).any()
    assert torch.equal(normals_a[:, 0, 0, 0], torch.where(flipped, -1.0, 1.0))  # a mirrored normal faces left


class _Maps:
    """The dataset's `targets(idx)` for a tiny set of maps."""

    def __init__(self, targets: list[torch.Tensor]) -> None:
        self.all = targets

    def targets(self, idx: torch.Tensor) -> list[torch.Tensor]:
        return [t[idx] for t in self.all]


def test_train_and_score_a_dense_victim() -> None:
    gen = torch.Generator().manual_seed(0)
    n, s = 12, 32
    images = (torch.rand(n, 3, s, s, generator=gen) * 255).to(torch.uint8)
    seg = torch.randint(-1, 3, (n, s, s), generator=gen)
    depth = torch.rand(n, 1, s, s, generator=gen) * 5
    cls = torch.randint(0, 2, (n,), generator=gen)
    kinds = [Segmentation(3), Depth(), Binary()]
    maps = _Maps([seg, depth, cls])
    model = DenseMTLNet([{"kind": k.name, "outputs": k.outputs} for k in kinds])
    trainer = ClassifierTrainer(model, kinds)
    result = train_classifier(trainer, images, maps, epochs=1, batch_size=4, crop=28, gen=gen)
    record = result.history[0]
    assert torch.isfinite(torch.tensor(record["loss"])) and len(record["train_tasks"]) == 3
    scores = score_tasks(model, images, maps, kinds, 28, torch.device("cpu"))
    assert set(scores[0]) >= {"miou", "pixel_accuracy"} and set(scores[1]) >= {"abs_error", "rel_error"}
    assert scores[2]["accuracy"] == evaluate(model, images, maps, kinds, 28, torch.device("cpu"))[2]


def test_losses_and_predictions_take_per_task_targets() -> None:
    kinds = [Segmentation(3), Binary()]
    logits = [torch.randn(2, 3, 4, 4, requires_grad=True), torch.randn(2, 1, requires_grad=True)]
    targets = [torch.randint(0, 3, (2, 4, 4)), torch.tensor([0, 1])]
    losses = task_losses(logits, targets, kinds)
    assert losses.shape == (2,) and torch.equal(losses[1], Binary().loss(logits[1], targets[1]))
    pred = predict(logits, kinds)
    assert isinstance(pred, list) and pred[0].shape == (2, 4, 4) and pred[1].shape == (2,)
