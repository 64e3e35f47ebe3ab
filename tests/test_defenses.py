"""The defence list of verify (defenses.expand_defenses) and how each defence reaches a victim (prepare)."""

import pytest
import torch

from mtlue_cli.defenses import ALL, expand_defenses, prepare
from mtlue_cli.errors import ConfigError


pytestmark = pytest.mark.usefixtures("one_thread")


def test_defense_all_parses_to_the_full_list():
    assert expand_defenses(("all",)) == list(ALL)
    assert ALL == ("none", "grayscale", "jpeg10", "bdr2", "blur1", "median3", "resize2", "op", "ueraser-lite")
    assert expand_defenses(("JPEG10", "all", "jpeg10")) == ["none", "jpeg10", *[d for d in ALL if d not in ("none", "jpeg10")]]
    assert expand_defenses(("op",)) == ["none", "op"]  # "none" is always judged, first
    with pytest.raises(ConfigError, match="ueraser-lite"):  # the message lists the names
        expand_defenses(("none", "eraser"))


def test_prepare_applies_each_kind_where_the_attacker_would():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (24, 3, 8, 8), generator=g, dtype=torch.uint8)
    test = torch.randint(0, 256, (6, 3, 8, 8), generator=g, dtype=torch.uint8)
    labels = torch.stack([torch.arange(24) % 3, torch.arange(24) % 2], 1)
    none = prepare("none", images, labels, [3, 2], test)
    assert none.images is images and none.test_images is None and none.batch_transform is None
    jpeg = prepare("jpeg10", images, labels, [3, 2], test)
    assert jpeg.test_images is None and not torch.equal(jpeg.images, images)  # ISS: training images only
    gray = prepare("grayscale", images, labels, [3, 2], test)
    assert gray.test_images is not None and torch.equal(gray.test_images[:, 0], gray.test_images[:, 1])
    op = prepare("op", images, labels, [3, 2], test)  # the deployed model projects its inputs too
    assert op.images.dtype == torch.uint8 and op.images.shape == images.shape and op.test_images.shape == test.shape
    uer = prepare("ueraser-lite", images, labels, [3, 2], test)  # training loop only: pixels and test set untouched
    assert uer.images is images and uer.test_images is None and callable(uer.batch_transform)
