"""UEraser-lite (ueraser.py): heavy training-time augmentation of a float batch."""

import pytest
import torch

from mtlue_cli.fit.ueraser import plasma, ueraser_lite

pytestmark = pytest.mark.usefixtures("one_thread")


def test_ueraser_lite_changes_images_but_keeps_shape_dtype_and_range():
    x = torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    y = ueraser_lite(x)
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert float(y.min()) >= 0 and float(y.max()) <= 1
    assert float((y - x).abs().mean()) > 0.05  # heavy, not a nudge
    assert not torch.equal(y, x) and torch.equal(x, x.clone())  # the input batch is left alone
    torch.manual_seed(0)
    assert torch.equal(ueraser_lite(x), y)  # verify seeds every victim, so runs repeat


def test_plasma_fields_span_zero_to_one_and_rough_ones_hold_finer_detail():
    torch.manual_seed(0)
    field = plasma((64, 1, 32, 32), torch.cat([torch.full((32,), 0.3), torch.full((32,), 0.7)]))
    assert field.shape == (64, 1, 32, 32)
    assert torch.allclose(field.amin(dim=(2, 3)), torch.zeros(64, 1))
    assert torch.allclose(field.amax(dim=(2, 3)), torch.ones(64, 1))
    detail = (field[..., 1:, :] - field[..., :-1, :]).abs().mean(dim=(1, 2, 3))  # neighbour differences
    assert detail[32:].mean() > 1.5 * detail[:32].mean()
