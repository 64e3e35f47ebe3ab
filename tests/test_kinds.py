"""Task kinds (data.kinds): each kind owns its head width, loss, prediction, TAP/SEP target, baseline and score;
classification behaves exactly as the formulas the kinds replaced."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mtlue_cli.data.kinds import Binary, MultiClass, kind_of, kinds_of
from mtlue_cli.data.labels import TaskSpec
from mtlue_cli.fit.losses import shifted_targets, tap_loss
from mtlue_cli.models.classifiers import predict, task_losses


def test_kind_follows_the_class_count() -> None:
    assert kind_of(2) == Binary() and kind_of(5) == MultiClass(5)
    assert [k.outputs for k in kinds_of([2, 3, 9])] == [1, 3, 9]
    assert kinds_of([Binary(), 4]) == [Binary(), MultiClass(4)]
    with pytest.raises(ValueError, match="at least 2"):
        kind_of(1)
    spec = TaskSpec(("gender", "age"), (("m", "f"), ("0-2", "3-9", "10-19")))
    assert [k.name for k in spec.kinds] == ["binary", "multiclass"] and spec.binary == (True, False)


def test_majority_and_chance_hand_computed() -> None:
    train = torch.tensor([[0, 2], [0, 2], [1, 1], [0, 2], [1, 0]])  # majorities: 0 (3/5), 2 (3/5)
    test = torch.tensor([[0, 2], [0, 0], [0, 1], [1, 2]])
    assert [k.majority(train[:, i], test[:, i]) for i, k in enumerate(kinds_of([2, 3]))] == [0.75, 0.5]
    # Ties go to the lowest class index; classes absent from train still count in the vocabulary.
    tied, tied_test = torch.tensor([[1, 3], [0, 3]]), torch.tensor([[0, 3], [0, 0], [1, 3], [0, 1]])
    assert [k.majority(tied[:, i], tied_test[:, i]) for i, k in enumerate(kinds_of([2, 4]))] == [0.75, 0.5]
    assert [k.chance for k in kinds_of([2, 4])] == [0.5, 0.25]


def test_shifted_targets_hand_computed() -> None:
    labels = torch.tensor([[0, 0, 4], [1, 2, 8]])
    assert shifted_targets(labels, [2, 3, 9]).tolist() == [[1, 1, 8], [0, 0, 3]]  # (y + C//2) mod C, 1 - y


def test_auc_per_kind_hand_computed() -> None:
    scores = torch.tensor([[0.1], [0.4], [0.35], [0.8]])
    assert Binary().auc(scores, torch.tensor([0, 0, 1, 1])) == 0.75
    three = torch.eye(3)[[0, 1, 2, 2]]  # a perfect score for each class present
    assert MultiClass(3).auc(three, torch.tensor([0, 1, 2, 2])) == 1.0


def test_losses_and_predictions_equal_the_formulas_they_replaced() -> None:
    # The kinds must keep classification byte-identical (issue 27): same values, same gradients.
    gen = torch.Generator().manual_seed(0)
    nc = [2, 5, 3]
    logits = [torch.randn(6, 1 if c == 2 else c, generator=gen, requires_grad=True) for c in nc]
    labels = torch.stack([torch.randint(0, c, (6,), generator=gen) for c in nc], dim=1)
    old = torch.stack([F.binary_cross_entropy_with_logits(z[:, 0], labels[:, k].float()) if c == 2
                       else F.cross_entropy(z, labels[:, k]) for k, (z, c) in enumerate(zip(logits, nc))])
    assert torch.equal(task_losses(logits, labels, nc), old)
    old_pred = torch.stack([(z[:, 0] > 0).long() if c == 2 else z.argmax(1) for z, c in zip(logits, nc)], dim=1)
    assert torch.equal(predict(logits, nc), old_pred)
    # TAP, untargeted on binary tasks: -BCE on the true label there, CE to the shifted target elsewhere.
    c = torch.tensor(nc)
    shifted = (labels + c // 2) % c
    binary = torch.tensor([n == 2 for n in nc])
    old_tap = torch.where(binary, -task_losses(logits, torch.where(binary, labels, shifted), nc),
                          task_losses(logits, shifted, nc)).mean()
    new_tap = tap_loss(logits, labels, nc, binary_mode="untargeted")
    assert torch.equal(new_tap, old_tap)
    grads_new = torch.autograd.grad(new_tap, logits)
    grads_old = torch.autograd.grad(old_tap, logits)
    assert all(torch.equal(a, b) for a, b in zip(grads_new, grads_old))
