import math

import pytest
import torch

from mtlue_cli.fit.losses import (
    class_mean_penalty,
    em_loss,
    embedding_regulariser,
    inter_task_er,
    intra_task_er,
    sep_loss,
    shifted_targets,
    tap_loss,
)

LOG2, LOG3, LOG4 = math.log(2), math.log(3), math.log(4)


def test_shifted_targets_utkface() -> None:
    labels = torch.tensor([[0, 0, 0], [5, 3, 1], [8, 4, 1]])
    # age +4 mod 9, race +2 mod 5, gender flipped (§3.2).
    assert shifted_targets(labels, [9, 5, 2]).tolist() == [[4, 2, 1], [0, 0, 0], [3, 1, 0]]
    with pytest.raises(ValueError):
        shifted_targets(labels, [9, 5])


def _zero_logits() -> list[torch.Tensor]:
    return [torch.zeros(1, 1), torch.zeros(1, 3)]


def _confident_logits() -> list[torch.Tensor]:
    # Binary logit 2; multi-class softmax([ln 2, 0, 0]) = [1/2, 1/4, 1/4].
    return [torch.tensor([[2.0]]), torch.tensor([[math.log(2), 0.0, 0.0]])]


LABELS = torch.tensor([[1, 0]])  # binary y = 1; 3-class y = 0, shifted target 1
NUM_CLASSES = [2, 3]


def test_em_loss() -> None:
    assert em_loss(_zero_logits(), LABELS, NUM_CLASSES).item() == pytest.approx((LOG2 + LOG3) / 2)
    # True labels: BCE(2, 1) = log(1 + e^-2); CE to class 0 = log 2.
    expected = (math.log(1 + math.exp(-2)) + LOG2) / 2
    assert em_loss(_confident_logits(), LABELS, NUM_CLASSES).item() == pytest.approx(expected)


def test_tap_loss() -> None:
    # Untargeted binary: -BCE on the true label; multi-class CE to target 1 = -log(1/4).
    untargeted = (-math.log(1 + math.exp(-2)) + LOG4) / 2
    assert tap_loss(_confident_logits(), LABELS, NUM_CLASSES).item() == pytest.approx(untargeted)
    # Targeted binary: BCE to the flipped label 0 = log(1 + e^2).
    targeted = (math.log(1 + math.exp(2)) + LOG4) / 2
    got = tap_loss(_confident_logits(), LABELS, NUM_CLASSES, binary_mode="targeted").item()
    assert got == pytest.approx(targeted)
    assert tap_loss(_zero_logits(), LABELS, NUM_CLASSES).item() == pytest.approx((-LOG2 + LOG3) / 2)
    with pytest.raises(ValueError, match="binary_mode"):
        tap_loss(_zero_logits(), LABELS, NUM_CLASSES, binary_mode="flip")


def test_tap_untargeted_binary_is_minus_bce() -> None:
    logits = [torch.tensor([[0.3], [-1.2]]), torch.tensor([[0.7], [0.1]])]
    labels = torch.tensor([[1, 0], [0, 0]])
    bce = em_loss(logits, labels, [2, 2])
    assert tap_loss(logits, labels, [2, 2]).item() == pytest.approx(-bce.item())


def test_sep_loss_sums_checkpoints() -> None:
    # Checkpoint 1: zero logits -> (log 2 + log 3) / 2. Checkpoint 2: flipped BCE log(1 + e^2), CE log 4.
    expected = (LOG2 + LOG3) / 2 + (math.log(1 + math.exp(2)) + LOG4) / 2
    got = sep_loss([_zero_logits(), _confident_logits()], LABELS, NUM_CLASSES).item()
    assert got == pytest.approx(expected)
    with pytest.raises(ValueError):
        sep_loss([], LABELS, NUM_CLASSES)


def _eye(rows: list[int], dim: int = 4) -> torch.Tensor:
    return torch.eye(dim)[rows]


ORTHOGONAL = _eye([0, 1, 2])  # 3 classes, pairwise cos 0
ANTIPODAL = torch.tensor([[1.0, 2.0, 0.0, 0.0], [-1.0, -2.0, 0.0, 0.0]])  # 2 classes, cos -1
IDENTICAL = torch.ones(3, 4)  # 3 classes, cos 1


def test_intra_task_er_code_form() -> None:
    assert intra_task_er([ORTHOGONAL]).item() == pytest.approx(1.0)
    assert intra_task_er([ANTIPODAL]).item() == pytest.approx(0.0, abs=1e-6)
    assert intra_task_er([IDENTICAL]).item() == pytest.approx(2.0)
    # Every task weighs the same: (1 + 0) / 2.
    assert intra_task_er([ORTHOGONAL, ANTIPODAL]).item() == pytest.approx(0.5)


def test_intra_task_er_paper_form() -> None:
    assert intra_task_er([ORTHOGONAL], form="paper").item() == pytest.approx(0.0, abs=1e-6)
    assert intra_task_er([ANTIPODAL], form="paper").item() == pytest.approx(-1.0)
    # 2 / (3*2 + 2*1) * (0 + 0 + 0 - 1): every pair weighs the same.
    assert intra_task_er([ORTHOGONAL, ANTIPODAL], form="paper").item() == pytest.approx(-0.25)
    with pytest.raises(ValueError, match="form"):
        intra_task_er([ORTHOGONAL], form="both")


def test_inter_task_er() -> None:
    assert inter_task_er([_eye([0, 1]), _eye([2, 3])]).item() == pytest.approx(0.0)
    assert inter_task_er([ANTIPODAL, ANTIPODAL * 3]).item() == pytest.approx(1.0)
    assert inter_task_er([_eye([0, 1]), _eye([0, 1])]).item() == pytest.approx(0.5)
    # Each class pair weighs the same: 2 of the 4 + 6 + 6 = 16 cross-task pairs have |cos| = 1.
    tasks = [_eye([0, 0]) * torch.tensor([[1.0], [-1.0]]), _eye([0, 1]), _eye([2, 2, 2])]
    assert inter_task_er(tasks).item() == pytest.approx(2 / 16)


def test_inter_task_er_single_task_is_zero() -> None:
    value = inter_task_er([ORTHOGONAL])
    assert isinstance(value, torch.Tensor) and value.item() == 0.0


def test_embedding_regulariser_weights_and_gradient() -> None:
    a = torch.randn(3, 8, generator=torch.Generator().manual_seed(0), requires_grad=True)
    b = torch.randn(2, 8, generator=torch.Generator().manual_seed(1), requires_grad=True)
    total = embedding_regulariser([a, b])
    expected = 10 * intra_task_er([a, b]) + 200 * inter_task_er([a, b])
    assert total.item() == pytest.approx(expected.item())
    total.backward()
    assert a.grad is not None and a.grad.abs().sum() > 0 and b.grad is not None
    paper = embedding_regulariser([a, b], lambda_intra=1.0, lambda_inter=0.0, form="paper")
    assert paper.item() == pytest.approx(intra_task_er([a, b], form="paper").item())


def test_class_mean_penalty_measures_the_class_wise_part_of_delta() -> None:
    eps = 8 / 255
    y = torch.tensor([[0, 1], [0, 0], [1, 1], [1, 0]])
    classwise = torch.stack([torch.full((3, 4, 4), eps if a == 0 else -eps) for a in y[:, 0].tolist()])
    assert class_mean_penalty(classwise, y[:, :1], [2], eps).item() == pytest.approx(1.0)
    assert class_mean_penalty(classwise, y[:, 1:], [2], eps).item() == pytest.approx(0.0)  # task 2 sees no mean
    assert class_mean_penalty(classwise, y, [2, 2], eps).item() == pytest.approx(0.5)  # the mean over tasks
    # per-sample noise with no class mean costs nothing; what it adds to a class-wise δ is not penalised
    noise = torch.randn(4, 3, 4, 4) * eps
    noise = noise - noise[[0, 0, 2, 2]].add(noise[[1, 1, 3, 3]]).div(2)  # each task-1 class averages to zero
    assert class_mean_penalty(noise, y[:, :1], [2], eps).item() == pytest.approx(0.0, abs=1e-9)
    delta = (classwise * 0.5).requires_grad_()
    class_mean_penalty(delta, y[:, :1], [2], eps).backward()
    assert delta.grad is not None and (delta.grad * classwise).sum() > 0  # the gradient grows the class mean
