"""Linear-probe detectability (detect.py)."""

import pytest
import torch

from mtlue_cli.verify.detect import detect

pytestmark = pytest.mark.usefixtures("one_thread")


def images_and_labels(n: int = 300) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(40, 200, (n, 3, 8, 8), generator=g)
    labels = torch.stack([torch.arange(n) % 3, torch.arange(n) // 3 % 2], 1)
    pattern = (torch.randint(0, 2, (3, 3, 8, 8), generator=g) * 2 - 1) * 12  # one per class of task 0
    protected = (clean + pattern[labels[:, 0]]).clamp(0, 255).to(torch.uint8)
    return clean.to(torch.uint8), protected, labels


def test_a_planted_classwise_pattern_is_flagged_as_easy_to_detect():
    clean, protected, labels = images_and_labels()
    found = detect(protected, labels, clean, labels, ["shape", "size"], [3, 2])
    shape, size = found.tasks
    assert shape.detectable and shape.protected.acc > 0.9 and shape.clean.acc < 0.6
    assert 1 <= shape.protected.epoch <= found.epochs
    assert "easy to detect" in shape.reading and "shape" in shape.reading
    assert not size.detectable  # the pattern says nothing about this task
    assert found.detectable == ["shape"] and "1 of 2" in found.summary


def test_random_labels_are_not_flagged():
    clean, protected, _ = images_and_labels()
    g = torch.Generator().manual_seed(1)
    random = torch.stack([torch.randint(0, 3, (len(clean),), generator=g), torch.randint(0, 2, (len(clean),), generator=g)], 1)
    found = detect(protected, random, clean, random, ["shape", "size"], [3, 2])
    assert found.detectable == [], [(r.protected, r.clean) for r in found.tasks]
    assert "not easier to detect" in found.summary
