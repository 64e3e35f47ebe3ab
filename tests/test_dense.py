"""The dense multi-task network: one output per task in task order, at the input size, every parameter trained."""

from __future__ import annotations

import pytest
import torch

from mtlue_cli.models.dense import DenseMTLNet

TASKS = [{"kind": "segmentation", "outputs": 4}, {"kind": "multiclass", "outputs": 3},
         {"kind": "depth", "outputs": 1}, {"kind": "normals", "outputs": 3}, {"kind": "binary", "outputs": 1}]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("size, stem", [(32, "imagenet"), (64, "imagenet"), (16, "cifar")])
def test_output_shapes(size, stem):
    net = DenseMTLNet(TASKS, stem=stem).eval()
    out = net(torch.rand(2, 3, size, size))
    assert [tuple(o.shape) for o in out] == [(2, 4, size, size), (2, 3), (2, 1, size, size), (2, 3, size, size), (2, 1)]
    assert net.kinds == [t["kind"] for t in TASKS]


def test_every_parameter_gets_a_gradient():
    net = DenseMTLNet(TASKS, decoder_width=16)
    out = net(torch.rand(4, 3, 32, 32))
    sum((o * torch.randn_like(o)).sum() for o in out).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_dense_only_builds_no_classification_layers():
    net = DenseMTLNet([{"kind": "depth", "outputs": 1}], in_channels=1).eval()
    assert net.shared is None and len(net.heads) == 0
    assert net(torch.rand(1, 1, 32, 32))[0].shape == (1, 1, 32, 32)


@pytest.mark.parametrize("tasks, match", [
    ([], "at least one"),
    ([{"kind": "edges", "outputs": 1}], "unknown task kind"),
    ([{"kind": "depth", "outputs": 3}], "depth task has 1 outputs"),
    ([{"kind": "normals", "outputs": 1}], "normals task has 3 outputs"),
])
def test_bad_tasks(tasks, match):
    with pytest.raises(ValueError, match=match):
        DenseMTLNet(tasks)
