"""The defence list of verify (defenses.expand_defenses) and how each defence reaches a victim (prepare)."""

import pytest
import torch

from mtlue_cli.errors import ConfigError
from mtlue_cli.verify.defenses import ALL, expand_defenses, prepare

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


def test_each_filter_changes_pixels_as_documented():
    from mtlue_cli.verify.defenses import parse_defense

    flat = torch.full((1, 3, 16, 16), 100, dtype=torch.uint8)
    salt = flat.clone()
    salt[0, :, 8, 8] = 255  # one bright pixel
    checker = ((torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2 * 200).to(torch.uint8).expand(1, 3, 16, 16)
    for name in ("blur1", "median3", "resize2"):
        f = parse_defense(name)
        assert torch.equal(f(flat), flat), name  # a flat image stays flat: they only remove detail
    for name in ("blur1", "resize2"):  # low-pass: the finest pattern is mostly gone
        assert parse_defense(name)(checker).float().std() < checker.float().std() / 2, name
    # a median keeps a checkerboard (5 of 9 neighbours agree) and removes a lone outlier entirely
    inner = (..., slice(1, -1), slice(1, -1))  # the replicated edge is not a checkerboard any more
    assert torch.equal(parse_defense("median3")(checker)[inner], checker[inner])
    assert torch.equal(parse_defense("median3")(salt), flat)
    blurred = parse_defense("blur1")(salt)
    assert 100 < int(blurred[0, 0, 8, 8]) < 255 and int(blurred[0, 0, 8, 9]) > 100  # spread to its neighbours
    assert parse_defense("bdr2")(torch.tensor([[[[63, 64, 200]]]], dtype=torch.uint8)).tolist() == [[[[0, 64, 191]]]]
