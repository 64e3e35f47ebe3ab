import math

import pytest
import torch

from mtlue_cli.models.classifiers import ARCHS, MTLClassifier, predict, task_losses

NUM_CLASSES = [9, 5, 2]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("arch", ARCHS)
def test_each_arch_builds_and_forwards(arch: str) -> None:
    model = MTLClassifier(NUM_CLASSES, arch=arch, image_size=32).eval()
    with torch.no_grad():
        x = torch.rand(2, 3, 32, 32)
        logits = model(x)
        features = model.features(x)
    assert [tuple(z.shape) for z in logits] == [(2, 9), (2, 5), (2, 1)]
    assert features.shape == (2, 256)
    assert predict(logits, NUM_CLASSES).shape == (2, 3)


@pytest.mark.parametrize(
    "arch, stem",
    [("resnet18", "cifar"), ("resnet18", "imagenet"), ("densenet121", "imagenet"), ("vgg16", "imagenet")],
)
def test_grey_inputs_and_stems(arch: str, stem: str) -> None:
    # 32 px: VGG's five max-pools and DenseNet's stem + three transitions need at least that.
    model = MTLClassifier([2, 3], arch=arch, in_channels=1, stem=stem, image_size=32).eval()
    with torch.no_grad():
        logits = model(torch.rand(2, 1, 32, 32))
    assert [tuple(z.shape) for z in logits] == [(2, 1), (2, 3)]


def test_cifar_stem_keeps_resolution() -> None:
    model = MTLClassifier([2], stem="cifar")
    assert model.trunk.conv1.stride == (1, 1) and model.trunk.conv1.kernel_size == (3, 3)
    assert isinstance(model.trunk.maxpool, torch.nn.Identity)


def test_vit_grey_patch_projection() -> None:
    model = MTLClassifier([2], arch="vit_b_16", in_channels=1, image_size=16).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 1, 16, 16))[0].shape == (1, 1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(arch="vit_b_16", image_size=24), "multiple of its 16-px patch"),
        (dict(arch="alexnet"), "unknown arch"),
        (dict(stem="tiny"), "unknown stem"),
        (dict(in_channels=4), "in_channels"),
        (dict(num_classes=[2, 1]), "num_classes"),
        (dict(num_classes=[]), "num_classes"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, match: str) -> None:
    kwargs = {"num_classes": [2], **kwargs}
    with pytest.raises(ValueError, match=match):
        MTLClassifier(**kwargs)


def test_predict() -> None:
    logits = [torch.tensor([[-0.5], [0.5]]), torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 0.0]])]
    assert predict(logits, [2, 3]).tolist() == [[0, 1], [1, 0]]


def test_task_losses_hand_computed() -> None:
    logits = [
        torch.tensor([[0.0], [2.0]]),  # binary, one logit
        torch.tensor([[0.0, 0.0, 0.0], [math.log(2), 0.0, 0.0]]),  # 3 classes
    ]
    targets = torch.tensor([[1, 0], [0, 0]])
    losses = task_losses(logits, targets, [2, 3])
    # BCE: target 1 at logit 0 -> log 2; target 0 at logit 2 -> log(1 + e^2).
    # CE: uniform over 3 -> log 3; softmax([ln 2, 0, 0])[0] = 2/4 -> log 2.
    expected = [(math.log(2) + math.log(1 + math.e**2)) / 2, (math.log(3) + math.log(2)) / 2]
    assert losses.shape == (2,)
    assert losses.tolist() == pytest.approx(expected, rel=1e-6)


def test_task_losses_check_shapes() -> None:
    with pytest.raises(ValueError, match="targets must have shape"):
        task_losses([torch.zeros(2, 1)], torch.zeros(2, 2, dtype=torch.long), [2])
    with pytest.raises(ValueError, match="logits for 1 tasks"):
        task_losses([torch.zeros(2, 1)], torch.zeros(2, 2, dtype=torch.long), [2, 2])
