"""Label-map task kinds (data.dense_kinds), their scores (metrics), joint flips (data.augment) and the TaskSpec's
JSON form with kinds: every number hand-computed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtlue_cli.data.augment import joint_flip
from mtlue_cli.data.kinds import Binary, Depth, MultiClass, Normals, Segmentation, kind_named, kinds_of
from mtlue_cli.data.tasks import TaskSpec
from mtlue_cli.metrics import (
    SegmentationMeter,
    angle_scores,
    angular_errors,
    confusion_matrix,
    protection_ratio,
    segmentation_scores,
)

PRETRAINED = Path(__file__).resolve().parent.parent / "pretrained"

# ----------------------------------------------------------------------------- scores


def test_miou_from_a_hand_computed_global_confusion_matrix() -> None:
    target = torch.tensor([[[0, 0, 1], [1, 2, -1]]])  # (1, 2, 3); -1 ignored
    pred = torch.tensor([[[0, 1, 1], [1, 2, 0]]])
    # (t, p): (0,0) (0,1) (1,1) (1,1) (2,2); the ignored pixel predicted 0 is not counted.
    assert confusion_matrix(pred, target, 3).tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 1]]
    # IoU: 1/(1+2-1), 2/(3+2-2), 1/(1+1-1); pixel accuracy 4/5.
    scores = segmentation_scores(confusion_matrix(pred, target, 3))
    assert scores == pytest.approx({"miou": (1 / 2 + 2 / 3 + 1) / 3, "pixel_accuracy": 4 / 5})
    # A class neither present nor predicted is left out of the mean (LibMTL's plain mean would be nan).
    assert segmentation_scores(confusion_matrix(pred, target, 4)) == pytest.approx(scores)
    # Global over batches, not a mean of per-image mIoUs: the two halves alone score 1/2 and (2/3 + 1)/2 ... but
    # together they give the matrix above.
    meter = Segmentation(3).meter()
    meter.update(pred[..., :2], target[..., :2])
    meter.update(pred[..., 2:], target[..., 2:])
    assert meter.result() == pytest.approx(scores)
    assert math.isnan(SegmentationMeter(3).result()["miou"])


def test_depth_and_normal_scores_hand_computed() -> None:
    meter = Depth().meter()
    meter.update(torch.tensor([[[[1.0, 2.0], [3.0, 5.0]]]]), torch.tensor([[[[2.0, 0.0], [1.0, 4.0]]]]))
    # Valid pixels (target > 0): |1-2| = 1, |3-1| = 2, |5-4| = 1 -> 4/3; relative 1/2 + 2/1 + 1/4 -> 2.75/3;
    # ratios 2, 3 and 1.25 (not < 1.25): none within delta1.
    assert meter.result() == pytest.approx({"abs_error": 4 / 3, "rel_error": 2.75 / 3, "delta1": 0.0})
    target = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]).T.reshape(1, 3, 1, 4)
    pred = torch.tensor([[2.0, 0.0, 0.0], [5.0, 5.0, 5.0], [0.0, 3.0, 0.0], [0.0, 1.0, 1.0]]).T.reshape(1, 3, 1, 4)
    errors = angular_errors(pred, target)  # the zero target vector is invalid
    assert errors.tolist() == pytest.approx([0.0, 90.0, 45.0])
    assert angle_scores(errors) == pytest.approx({"mean_angle": 45.0, "median_angle": 45.0, "within_11.25": 1 / 3,
                                                  "within_22.5": 1 / 3, "within_30": 1 / 3})


def test_protection_ratio_and_its_sign_for_errors() -> None:
    assert protection_ratio(0.6, 0.9, 0.5, higher_is_better=True) == pytest.approx(0.25)
    # An error: trivial 1.0, clean 0.5, protected 0.9 keeps a fifth of the clean victim's lead.
    assert protection_ratio(0.9, 0.5, 1.0, higher_is_better=False) == pytest.approx(0.2)
    assert protection_ratio(1.2, 0.5, 1.0, higher_is_better=False) == pytest.approx(-0.4)  # worse than trivial
    assert protection_ratio(0.6, 0.4, 0.5, higher_is_better=True) is None  # the clean victim does not beat trivial
    assert protection_ratio(0.9, 1.2, 1.0, higher_is_better=False) is None
    assert protection_ratio(float("nan"), 0.9, 0.5, higher_is_better=True) is None


# ----------------------------------------------------------------------------- losses and targets


def test_segmentation_loss_and_score_ignore_void_pixels() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 2, 2, generator=gen, requires_grad=True)
    target = torch.tensor([[[0, 2], [-1, 1]], [[-1, -1], [2, 0]]])
    kind = Segmentation(3)
    loss = kind.loss(logits, target)
    keep = target >= 0
    expected = F.cross_entropy(logits.permute(0, 2, 3, 1)[keep], target[keep])
    assert torch.allclose(loss, expected)
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.all(grad.permute(0, 2, 3, 1)[~keep] == 0)  # void pixels get no gradient
    all_void = kind.loss(logits, torch.full_like(target, -1))
    assert all_void.item() == 0 and not torch.autograd.grad(all_void, logits)[0].isnan().any()
    # The score ignores them too: a wrong prediction at a void pixel changes nothing.
    meter_a, meter_b = kind.meter(), kind.meter()
    pred = kind.predict(logits.detach())
    meter_a.update(pred, target)
    meter_b.update(torch.where(keep, pred, (pred + 1) % 3), target)
    assert meter_a.result() == meter_b.result()


def test_depth_and_normals_losses_over_valid_pixels_gradient_safe() -> None:
    pred = torch.tensor([[[[1.0, float("nan")], [3.0, 4.0]]]], requires_grad=True)
    loss = Depth().loss(pred, torch.tensor([[[[2.0, 0.0], [1.0, 4.0]]]]))
    assert loss.item() == pytest.approx((1 + 2 + 0) / 3)  # the nan sits on an invalid pixel
    (grad,) = torch.autograd.grad(loss, pred)
    assert torch.isfinite(grad).all() and grad[0, 0, 0, 1] == 0
    none_valid = Depth().loss(pred, torch.zeros(1, 1, 2, 2))
    assert none_valid.item() == 0 and torch.isfinite(torch.autograd.grad(none_valid, pred)[0]).all()

    target = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).T.reshape(1, 3, 1, 3)
    npred = torch.tensor([[2.0, 0.0, 0.0], [float("inf"), 0.0, 0.0], [1.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 3)
    npred.requires_grad_(True)
    loss = Normals().loss(npred, target)
    assert loss.item() == pytest.approx((0 + 1) / 2)  # 1 - cos: 0 (same direction, any length), 1 (orthogonal)
    assert torch.isfinite(torch.autograd.grad(loss, npred)[0]).all()
    assert Normals().predict(npred.detach())[:, :, 0, 0].tolist() == [[1.0, 0.0, 0.0]]


def test_shifted_targets_of_the_dense_kinds() -> None:
    seg = torch.tensor([[[0, 4], [-1, 2]]])
    assert Segmentation(5).shifted(seg).tolist() == [[[2, 1], [-1, 4]]]  # (t + 5 // 2) mod 5, void kept
    depth = torch.tensor([[[[2.0, 0.0], [5.0, 3.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    # Per image over its own valid range 2..5: d -> 7 - d; invalid stays 0; an all-invalid image stays 0.
    assert Depth().shifted(depth).tolist() == [[[[5.0, 0.0], [2.0, 4.0]]], [[[0.0, 0.0], [0.0, 0.0]]]]
    normals = torch.tensor([0.6, 0.8, 0.0]).reshape(1, 3, 1, 1)
    assert Normals().shifted(normals).flatten().tolist() == pytest.approx([-0.6, -0.8, 0.0])
    assert [k.tap_untargeted("untargeted") for k in (Segmentation(3), Depth(), Normals())] == [False] * 3
    assert Depth(tap_target="untargeted").tap_untargeted("targeted")  # the switch §8 leaves open
    with pytest.raises(ValueError, match="reflect, untargeted"):
        Depth(tap_target="shift")


def test_kind_attributes_and_names() -> None:
    kinds = [MultiClass(4), Binary(), Segmentation(13), Depth(), Normals()]
    assert [k.dense for k in kinds] == [False, False, True, True, True]
    assert [k.outputs for k in kinds] == [4, 1, 13, 1, 3]
    assert [k.primary for k in kinds] == ["accuracy", "accuracy", "miou", "abs_error", "mean_angle"]
    assert [k.higher_is_better for k in kinds] == [True, True, True, False, False]
    assert [kind_named(k.name, n) for k, n in zip(kinds, [4, 2, 13, 0, 0])] == kinds
    assert kinds_of([Depth(), 3]) == [Depth(), MultiClass(3)]
    with pytest.raises(ValueError, match="unknown task kind 'edges'"):
        kind_named("edges", 0)
    with pytest.raises(ValueError, match="a depth task has no classes"):
        kind_named("depth", 3)


# ----------------------------------------------------------------------------- resize and joint flips


def test_resize_is_nearest_and_renormalises_normals() -> None:
    seg = np.arange(16).reshape(4, 4)
    assert Segmentation(16).resize(seg, 2).tolist() == [[5, 7], [13, 15]]  # pixel centres 1 and 3
    assert Depth().resize(np.arange(16, dtype=np.float32).reshape(1, 4, 4), 8).shape == (1, 8, 8)
    normals = np.zeros((3, 2, 2), dtype=np.float32)
    normals[2, 0, 0] = 2.0  # not unit (as a quantised PNG gives); the rest invalid
    out = Normals().resize(normals, 2)
    assert out[:, 0, 0].tolist() == [0.0, 0.0, 1.0] and not out[:, 1:, :].any()
    assert MultiClass(3).resize(2, 8) == 2 and torch.equal(Binary().flip(torch.tensor([1, 0])), torch.tensor([1, 0]))


def test_joint_flip_keeps_maps_aligned_and_negates_normals_x() -> None:
    seg = torch.tensor([[[0, 1, 2], [2, -1, 0]], [[1, 1, 0], [0, 2, 2]]])  # (2, 2, 3)
    normals = F.normalize(torch.randn(2, 3, 2, 3, generator=torch.Generator().manual_seed(1)), dim=1)
    labels = torch.tensor([1, 0])
    # The image carries its maps in its channels: class x 10 and the normal's x, so alignment is checkable.
    images = torch.stack([seg.float() * 10, normals[:, 0], normals[:, 1]], dim=1)
    kinds = [Binary(), Segmentation(3), Normals()]
    out, (lab, seg_f, nrm_f) = joint_flip(images, [labels, seg, normals], kinds, torch.tensor([True, False]))
    assert torch.equal(lab, labels)
    assert seg_f[0].tolist() == [[2, 1, 0], [0, -1, 2]] and torch.equal(seg_f[1], seg[1])  # only sample 0 flips
    assert torch.equal(out[:, 0], seg_f.float() * 10)  # a flipped image's map is flipped with it
    assert torch.equal(nrm_f[0, 0], -normals[0, 0].flip(-1)) and torch.equal(nrm_f[0, 1:], normals[0, 1:].flip(-1))
    assert torch.equal(out[0, 1], -nrm_f[0, 0]) and torch.equal(out[1, 1], nrm_f[1, 0])  # x negated, image not
    with pytest.raises(ValueError, match="one target per task"):
        joint_flip(images, [labels], kinds, torch.tensor([True, False]))


# ----------------------------------------------------------------------------- trivial baselines


def test_segmentation_trivial_global_and_per_pixel_hand_computed() -> None:
    train = torch.tensor([[[0, 1], [1, 1]], [[0, 1], [2, -1]], [[0, 0], [2, -1]]], dtype=torch.int16)
    kind = Segmentation(3)
    guesses = kind.trivial_predictions(train)
    # Class totals 4, 4, 2: the tie goes to class 0. Per pixel: (0,0,0) (1,1,0) (1,2,2) (1,-,-).
    assert guesses["global"].tolist() == [[0, 0], [0, 0]]
    assert guesses["per-pixel"].tolist() == [[0, 1], [2, 1]]
    test = torch.tensor([[[0, 1], [2, -1]], [[1, 1], [2, 0]]])
    # Per-pixel: rows [1,1,0] [1,2,0] [0,0,2]: IoU 1/3, 2/4, 2/2; accuracy 5/7. Global: mIoU (2/7)/3.
    assert kind.trivial(train, test) == pytest.approx({"miou": (1 / 3 + 1 / 2 + 1) / 3, "pixel_accuracy": 5 / 7})


def test_depth_and_normals_trivial_hand_computed() -> None:
    train = torch.tensor([[1.0, 4.0], [2.0, 0.0], [3.0, 6.0], [0.0, 8.0]]).reshape(4, 1, 1, 2)
    guesses = Depth().trivial_predictions(train)
    # Valid depths 1 2 3 4 6 8: lower median 3; per pixel (1, 2, 3) -> 2 and (4, 6, 8) -> 6.
    assert guesses["global"].flatten().tolist() == [3.0, 3.0] and guesses["per-pixel"].flatten().tolist() == [2.0, 6.0]
    test = torch.tensor([[2.0, 6.0], [3.0, 0.0]]).reshape(2, 1, 1, 2)
    assert Depth().trivial(train, test) == pytest.approx({"abs_error": 1 / 3, "rel_error": 1 / 9,
                                                           "delta1": 2 / 3})  # per-pixel: 2 vs 3 is a ratio of 1.5
    assert Depth().trivial(train, torch.tensor([3.0, 3.0]).reshape(1, 1, 1, 2)) == {"abs_error": 0.0,
                                                                                   "rel_error": 0.0,
                                                                                   "delta1": 1.0}  # global
    normals = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], [[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]])  # (N, px, 3)
    train_n = normals.permute(0, 2, 1).reshape(2, 3, 1, 2)
    guesses = Normals().trivial_predictions(train_n)
    assert guesses["per-pixel"].reshape(3, 2).T.flatten().tolist() == pytest.approx([2**-0.5, 2**-0.5, 0, 0, 0, 1])
    assert guesses["global"][:, 0, 0].tolist() == pytest.approx([3**-0.5] * 3)
    test_n = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]).reshape(1, 3, 1, 2)
    assert Normals().trivial(train_n, test_n) == pytest.approx(
        {"mean_angle": 22.5, "median_angle": 22.5, "within_11.25": 0.5, "within_22.5": 0.5, "within_30": 0.5})


def test_classification_kinds_score_like_the_dense_ones() -> None:
    train, test = torch.tensor([0, 2, 2, 1]), torch.tensor([2, 2, 0, 1])
    assert MultiClass(3).trivial(train, test) == {"accuracy": 0.5}
    meter = Binary().meter()
    meter.update(Binary().predict(torch.tensor([[1.0], [-1.0], [2.0]])), torch.tensor([1, 1, 1]))
    assert meter.result() == {"accuracy": 2 / 3}


# ----------------------------------------------------------------------------- TaskSpec with kinds


def test_taskspec_json_with_kinds_and_old_generator_configs() -> None:
    for config in sorted(PRETRAINED.glob("*/config.json")):
        saved = json.loads(config.read_text())
        tasks = saved["tasks"]
        if "task_kinds" in saved:  # a generator with label maps (demo-scenes): its two arguments round-trip
            spec = TaskSpec.from_generator(tasks, saved["task_kinds"])
            assert spec.generator_tasks() == (tasks, saved["task_kinds"]) and any(spec.dense)
            continue
        spec = TaskSpec.from_dict(tasks)
        assert spec == TaskSpec(tuple(tasks), tuple(tuple(v) for v in tasks.values())) and spec.kind_names == ()
        assert spec.to_dict() == tasks and not any(spec.dense)
    spec = TaskSpec(("scene", "seg", "depth", "normal"), (("in", "out"), ("bg", "wall"), (), ()),
                    ("binary", "segmentation", "depth", "normals"))
    as_json = json.loads(json.dumps(spec.to_dict()))
    assert as_json == {"scene": ["in", "out"], "seg": {"kind": "segmentation", "classes": ["bg", "wall"]},
                       "depth": {"kind": "depth"}, "normal": {"kind": "normals"}}
    assert TaskSpec.from_dict(as_json) == spec
    assert spec.kinds == [Binary(), Segmentation(2), Depth(), Normals()] and spec.dense == (False, True, True, True)
    assert spec.num_classes == [2, 2, 0, 0] and spec.binary == (True, False, False, False)
    # Classification kinds spelled out are the same spec as none given.
    assert TaskSpec(("a",), (("x", "y"),), ("binary",)) == TaskSpec(("a",), (("x", "y"),))
    with pytest.raises(ValueError, match="a depth task has no classes"):
        TaskSpec.from_dict({"d": {"kind": "depth", "classes": ["near"]}})
    with pytest.raises(ValueError, match="expected"):
        TaskSpec.from_dict({"d": {"classes": ["a", "b"]}})
