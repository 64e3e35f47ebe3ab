"""Orthogonal projection (projection.py): the informed attacker's defence against a class-wise linear shortcut."""

import pytest
import torch

from mtlue_cli.fit.projection import fit_projection
from mtlue_cli.verify.detect import linear_probe

pytestmark = pytest.mark.usefixtures("one_thread")


def planted(n: int = 400, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class-independent noise images plus a +-12 grey-level pattern per class of two tasks (4 and 2 classes)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(40, 200, (n, 3, 8, 8), generator=g)
    labels = torch.stack([torch.arange(n) % 4, torch.arange(n) // 4 % 2], 1)
    shape = (torch.randint(0, 2, (4, 3, 8, 8), generator=g) * 2 - 1) * 12
    side = (torch.randint(0, 2, (2, 3, 8, 8), generator=g) * 2 - 1) * 12
    images = (base + shape[labels[:, 0]] + side[labels[:, 1]]).clamp(0, 255).to(torch.uint8)
    return base, images, labels


def test_projection_removes_a_planted_linear_shortcut_and_keeps_the_rest():
    base, images, labels = planted()
    train, test = slice(0, 300), slice(300, None)
    before = linear_probe(images[train], labels[train], images[test], labels[test], [4, 2])
    assert all(p.acc >= 0.9 for p in before), before  # the shortcut: linearly separable

    projection = fit_projection(images[train], labels[train], [4, 2])  # fitted on the attacker's training set
    assert projection.basis.shape == (3 * 8 * 8, 3 + 1)  # softmax rows span K-1 directions per task
    projected = projection(images)
    assert projected.dtype == torch.uint8 and projected.shape == images.shape
    after = linear_probe(projected[train], labels[train], projected[test], labels[test], [4, 2])
    for p in after:  # the shortcut is gone: chance level, give or take the noise of 100 test images
        assert p.acc <= p.majority + 0.15, after

    # What does not depend on the class survives: the projected images still follow the noise content.
    b = base.float().flatten(1)
    o = projected.float().flatten(1)
    b, o = b - b.mean(0), o - o.mean(0)
    assert float((b * o).sum() / (b.norm() * o.norm())) > 0.95


def test_the_fit_loop_s_float_projection_matches_the_defence_and_is_linear():
    _, images, labels = planted(n=120)
    projection = fit_projection(images, labels, [4, 2], epochs=5)
    x = (images.float() / 255).requires_grad_(True)
    y = projection.apply(x)  # what the `op` squeeze shows the surrogate
    assert ((y.detach() * 255 - projection(images).float()).abs() <= 0.5 + 1e-3).all()  # the defence, before rounding
    w = torch.randn_like(x)
    (y * w).sum().backward()
    w = w * ((y > 0) & (y < 1))  # clamped outputs pass no gradient
    q = projection.basis
    expected = (w.flatten(1) - (w.flatten(1) @ q) @ q.T).view_as(w) / (projection.hi - projection.lo)
    assert torch.allclose(x.grad, expected, atol=1e-5)  # the true gradient of a linear map (symmetric projector)

