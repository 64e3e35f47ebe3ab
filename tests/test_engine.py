import pytest
import torch

from mtlue_cli.errors import ConfigError
from mtlue_cli.models.classifiers import MTLClassifier
from mtlue_cli.models.engine import (
    ClassifierTrainer,
    augment,
    batch_indices,
    center_crop,
    pgd_attack,
    resolve_device,
    train_classifier,
)
from mtlue_cli.verify.defenses import bit_depth, grayscale, parse_defense


def test_augment_crops_each_sample_independently_and_keeps_gradients():
    gen = torch.Generator().manual_seed(0)
    x = torch.arange(16 * 16, dtype=torch.float32).view(1, 1, 16, 16).repeat(32, 3, 1, 1).requires_grad_(True)
    out = augment(x, 12, gen)
    assert out.shape == (32, 3, 12, 12)
    # identical inputs, per-sample offsets/flips: not all crops are the same (the official code shares one)
    assert len({tuple(o[0].flatten().tolist()) for o in out}) > 1
    # every crop is a contiguous window of the input, possibly mirrored
    for o in out[:, 0]:
        top_left = int(min(o[0, 0], o[0, -1]))
        r, c = divmod(top_left, 16)
        window = x[0, 0, r : r + 12, c : c + 12]
        assert torch.equal(o, window) or torch.equal(o, window.flip(-1))
    out.sum().backward()
    assert x.grad is not None and x.grad.sum() == 32 * 3 * 144


def test_center_crop_and_batches():
    x = torch.arange(25.0).view(1, 1, 5, 5)
    assert center_crop(x, 3)[0, 0, 0].tolist() == [6.0, 7.0, 8.0]
    assert [len(b) for b in batch_indices(10, 4, False, None)] == [4, 4, 2]
    assert [len(b) for b in batch_indices(10, 4, False, None, drop_last=True)] == [4, 4]
    assert [len(b) for b in batch_indices(3, 4, False, None, drop_last=True)] == [3]  # tiny sets keep a batch


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert resolve_device("auto").type in ("cpu", "mps")
        with pytest.raises(ConfigError, match="no CUDA"):
            resolve_device("cuda")
    with pytest.raises(ConfigError):
        resolve_device("tpu9")


@pytest.mark.parametrize("weighting", ["ew", "uw", "rlw"])
def test_trainer_learns_a_trivial_task(weighting):
    torch.manual_seed(0)
    images = torch.zeros(32, 3, 16, 16, dtype=torch.uint8)
    labels = torch.zeros(32, 2, dtype=torch.long)
    images[16:] = 200  # class 1 of both tasks is bright
    labels[16:] = 1
    labels[:, 1] = labels[:, 1] * 2  # second task has 3 classes, uses 0 and 2
    trainer = ClassifierTrainer(MTLClassifier([2, 3], stem="cifar", image_size=12), [2, 3], weighting=weighting)
    result = train_classifier(trainer, images, labels, epochs=6, batch_size=16, crop=12,
                              gen=torch.Generator().manual_seed(0), checkpoint_every=2)
    assert sorted(result.checkpoints) == [0, 2, 4]
    assert result.history[-1]["train_acc"] > 0.9


def test_save_atomic_replaces_the_file_and_leaves_no_temporary(tmp_path):
    from mtlue_cli.models.engine import save_atomic

    path = tmp_path / "state.pt"
    save_atomic({"epoch": 1, "w": torch.ones(2)}, path)
    save_atomic({"epoch": 2, "w": torch.zeros(2)}, path)
    state = torch.load(path, weights_only=True)
    assert state["epoch"] == 2 and torch.equal(state["w"], torch.zeros(2))
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_pgd_stays_in_the_ball():
    torch.manual_seed(0)
    model = MTLClassifier([2, 3], stem="cifar", image_size=12)
    x = torch.rand(4, 3, 12, 12)
    y = torch.tensor([[0, 1], [1, 2], [0, 0], [1, 1]])
    adv = pgd_attack(model, x, y, [2, 3], steps=3)
    assert (adv - x).abs().max() <= 8 / 255 + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1


def test_defenses_change_pixels_as_specified():
    images = torch.tensor([[[[0, 63, 64, 255]], [[10, 100, 200, 30]], [[255, 0, 128, 7]]]], dtype=torch.uint8)
    bdr = bit_depth(2)(images)
    # floor(4x)/4 on [0,1]: 0->0, 63/255->0, 64/255->0.25 (63.75 -> 64), 255->255
    assert bdr[0, 0, 0].tolist() == [0, 0, 64, 255]
    grey = grayscale(images)
    assert torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(grey[:, 1], grey[:, 2])
    photo = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    jpeg = parse_defense("jpeg10")(photo)
    assert jpeg.shape == photo.shape and jpeg.dtype == torch.uint8 and not torch.equal(jpeg, photo)
    assert parse_defense("none") is None
    with pytest.raises(ConfigError):
        parse_defense("jpeg0")
    with pytest.raises(ConfigError):
        parse_defense("blur")


def test_filter_defenses_remove_fine_detail_and_apply_at_test():
    from mtlue_cli.verify.defenses import applies_at_test

    # The finest +-8/255 patterns on grey: a one-pixel checkerboard (blur and down-up resize flatten it)
    # and isolated spikes (a median removes them).
    ii, jj = torch.arange(16)[:, None], torch.arange(16)[None]
    checker = ((ii + jj) % 2 * 16 + 120).to(torch.uint8).expand(2, 3, 16, 16).contiguous()
    spikes = (((ii % 3 == 0) & (jj % 3 == 0)) * 16 + 128).to(torch.uint8).expand(2, 3, 16, 16).contiguous()
    for name, images in (("blur1", checker), ("resize2", checker), ("median3", spikes), ("blur1", spikes)):
        out = parse_defense(name)(images)
        assert out.shape == images.shape and out.dtype == torch.uint8
        before, after = images[..., 2:-2, 2:-2].float(), out[..., 2:-2, 2:-2].float()
        assert after.std() < 0.4 * before.std(), name
        assert abs(after.mean() - before.mean()) <= 2, name  # the mean tone kept
    assert parse_defense("median3")(spikes)[..., 2:-2, 2:-2].unique().tolist() == [128]
    # median keeps an edge a blur would smear
    edge = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    edge[..., 4:] = 200
    assert torch.equal(parse_defense("median3")(edge), edge)
    for bad in ("median4", "resize1", "blur0", "blur9"):
        with pytest.raises(ConfigError):
            parse_defense(bad)
    assert [applies_at_test(n) for n in ("grayscale", "blur1", "median3", "resize2", "jpeg10", "bdr2", "none")] == [
        True, True, True, True, False, False, False]


def test_roc_auc_hand_computed():
    from mtlue_cli.metrics import roc_auc

    # positives score 0.9, 0.4; negatives 0.6, 0.1, 0.4 -> pairs won 1+1+1 + 0+0+1 with one tie (0.4, 0.4) = 0.5
    scores = torch.tensor([0.9, 0.4, 0.6, 0.1, 0.4])
    positive = torch.tensor([1, 1, 0, 0, 0])
    assert roc_auc(scores, positive) == pytest.approx((3 + 1 + 0.5) / 6)
    assert roc_auc(torch.tensor([1.0, 2.0]), torch.tensor([0, 0])) != roc_auc(torch.tensor([1.0]), torch.tensor([1]))  # nan


def test_evaluate_auc_metric():
    from mtlue_cli.models.engine import evaluate

    torch.manual_seed(0)
    model = MTLClassifier([2, 3], stem="cifar", image_size=12)
    images = torch.randint(0, 256, (20, 3, 12, 12), dtype=torch.uint8)
    labels = torch.stack([torch.arange(20) % 2, torch.arange(20) % 3], 1)
    aucs = evaluate(model, images, labels, [2, 3], 12, torch.device("cpu"), metric="auc")
    assert len(aucs) == 2 and all(0 <= a <= 1 for a in aucs)
