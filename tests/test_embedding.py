"""Dense tasks in the generator (method-spec §8): label-embedding nets beside the class tables."""

from __future__ import annotations

import json

import pytest
import torch

from mtlue_cli.fit.losses import embedding_regulariser
from mtlue_cli.models.embedding import LabelEmbedding, dense_input
from mtlue_cli.models.generator import PerturbationGenerator
from mtlue_cli.models.persistence import load_generator, save_generator

# Mixed and not in alphabetical order: classification, segmentation, depth, classification, normals.
TASKS = {"count": ["1", "2", "3"], "seg": ["bg", "a", "b", "c"], "depth": [], "gender": ["f", "m"], "normals": []}
KINDS = {"seg": "segmentation", "depth": "depth", "normals": "normals"}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _batch(b: int = 3, size: int = 16):
    x = torch.rand(b, 3, size, size)
    labels = torch.stack([torch.arange(b) % 3, torch.zeros(b, dtype=torch.long), torch.zeros(b, dtype=torch.long),
                          torch.arange(b) % 2, torch.zeros(b, dtype=torch.long)], dim=1)  # (B, K)
    seg = torch.randint(-1, 4, (b, size, size))
    depth = torch.rand(b, 1, size, size) * 5
    depth[:, :, :2] = 0
    normals = torch.nn.functional.normalize(torch.randn(b, 3, size, size), dim=1)
    return x, labels, [None, seg, depth, None, normals]


def test_dense_input_channels_and_invalid_pixels():
    seg = torch.tensor([[[0, 2], [-1, 255]]])
    onehot = dense_input("segmentation", seg, 3)
    assert onehot.shape == (1, 3, 2, 2)
    assert onehot[0, :, 0, 0].tolist() == [1, 0, 0] and onehot[0, :, 0, 1].tolist() == [0, 0, 1]
    assert onehot[0, :, 1].abs().sum() == 0  # ignore (-1) and VOC void (255) embed as all-zero
    depth = torch.tensor([[[[2.0, 4.0], [0.0, 6.0]]]])
    # mean valid depth 4: 2 -> -0.5, 4 -> 0, 6 -> 0.5, invalid -> 0; the same in millimetres
    assert dense_input("depth", depth, 0).flatten().tolist() == [-0.5, 0.0, 0.0, 0.5]
    assert torch.equal(dense_input("depth", depth * 1000, 0), dense_input("depth", depth, 0))
    with pytest.raises(ValueError, match="normal map"):
        dense_input("normals", torch.zeros(1, 2, 4, 4), 0)


@pytest.mark.parametrize("downsampling, size", [(2, 16), (8, 32)])
def test_label_embedding_reaches_the_latent_size(downsampling, size):
    net = LabelEmbedding("segmentation", 4, 16, downsampling)
    assert net(torch.randint(0, 4, (2, size, size))).shape == (2, 16, size // downsampling, size // downsampling)


@pytest.mark.parametrize("stem, size", [("cifar", 16), ("imagenet", 32)])
def test_mixed_generator_shape_and_bound(stem, size):
    g = PerturbationGenerator(TASKS, image_size=size, stem=stem, task_kinds=KINDS)
    assert g.dense_tasks == ["seg", "depth", "normals"]
    assert g.decoder[0].in_channels == 16 * 5 + 128  # every task's embedding, dense or not, then z
    x, labels, maps = _batch(2, size)
    delta = g(x, labels, maps=maps)
    assert delta.shape == x.shape and delta.abs().max() <= g.epsilon
    with torch.no_grad():
        for p in g.parameters():
            p.mul_(50)
    delta = g(100 * x, labels, maps=maps)
    assert delta.abs().max().item() == pytest.approx(8 / 255) and delta.abs().max().item() <= 8 / 255


def test_every_parameter_gets_a_gradient_with_dense_tasks():
    g = PerturbationGenerator(TASKS, image_size=16, epsilon=0.99, task_kinds=KINDS)
    x, labels, maps = _batch(4)
    delta = g(x, labels, maps=maps)
    (delta * torch.randn_like(delta)).sum().backward()
    inert = {"decoder.1.bias", "decoder.4.bias"}  # they feed an InstanceNorm (test_generator.py)
    for name, p in g.named_parameters():
        assert p.grad is not None, name
        if name not in inert:
            assert p.grad.abs().sum() > 0, name


def test_labels_and_maps_forms():
    g = PerturbationGenerator(TASKS, image_size=16, task_kinds=KINDS).eval()
    x, labels, maps = _batch()
    full = g(x, labels, maps=maps)
    # One column per classification task only, and maps by name, give the same perturbation.
    assert torch.equal(full, g(x, labels[:, [0, 3]], maps={"seg": maps[1], "depth": maps[2], "normals": maps[4]}))
    # The dense tasks' label columns are not read; their maps are.
    other = labels.clone()
    other[:, [1, 2, 4]] = 7
    assert torch.equal(full, g(x, other, maps=maps))
    changed = list(maps)
    changed[1] = (maps[1] + 1) % 4
    assert not torch.equal(full, g(x, labels, maps=changed))
    with pytest.raises(ValueError, match="no label map"):
        g(x, labels)
    with pytest.raises(ValueError, match="labels must have shape"):
        g(x, labels[:, :3], maps=maps)
    with pytest.raises(ValueError, match="classification tasks"):
        g(x, labels, maps=[labels[:, 0]] + maps[1:])


def test_unprotected_dense_task_ignores_its_map():
    g = PerturbationGenerator(TASKS, image_size=16, task_kinds=KINDS, unprotected=["depth"]).eval()
    x, labels, maps = _batch()
    changed = list(maps)
    changed[2] = maps[2] * torch.rand_like(maps[2])
    assert torch.equal(g(x, labels, maps=maps), g(x, labels, maps=changed))
    assert torch.equal(g(x, labels, maps=maps), g(x, labels, maps={"seg": maps[1], "normals": maps[4]}))


def test_only_class_tables_are_regularised():
    g = PerturbationGenerator(TASKS, image_size=8, task_kinds=KINDS)
    weights = g.embedding_weights()
    assert [tuple(w.shape) for w in weights] == [(3, 16 * 4 * 4), (2, 16 * 4 * 4)]
    embedding_regulariser(weights).backward()
    assert all(p.grad is None for name, p in g.named_parameters() if name.startswith(("embeddings.1.", "embeddings.2.")))


def test_round_trip_of_a_dense_generator(tmp_path):
    g = PerturbationGenerator(TASKS, image_size=16, task_kinds=KINDS)
    x, labels, maps = _batch()
    g(x, labels, maps=maps)  # move the BN running statistics
    g.eval()
    save_generator(g, tmp_path / "gen", "em")
    config = json.loads((tmp_path / "gen" / "config.json").read_text())
    assert list(config["tasks"]) == list(TASKS) and config["task_kinds"] == KINDS
    loaded = load_generator(str(tmp_path / "gen")).model
    assert loaded.task_kinds == KINDS and loaded.dense_tasks == ["seg", "depth", "normals"]
    assert torch.equal(g(x, labels, maps=maps), loaded(x, labels, maps=maps))
    assert "task_kinds" not in PerturbationGenerator({"a": ["x", "y"]}, image_size=8).config


@pytest.mark.parametrize("tasks, kinds, match", [
    ({"d": ["x", "y"]}, {"d": "depth"}, "has no classes"),
    ({"s": ["x", "y"]}, {"s": "edges"}, "kind is one of"),
    ({"s": ["x", "y"]}, {"t": "depth"}, "unknown tasks"),
    ({"s": ["x"]}, {"s": "segmentation"}, "at least 2 classes"),
])
def test_bad_task_kinds(tasks, kinds, match):
    with pytest.raises(ValueError, match=match):
        PerturbationGenerator(tasks, image_size=8, task_kinds=kinds)


def test_card_names_the_dense_maps():
    from mtlue_cli.models.card import model_card

    g = PerturbationGenerator(TASKS, image_size=8, task_kinds=KINDS)
    card = model_card(g.config, g.weights_metadata(), None)
    assert "  - `depth`: a depth map\n" in card and "  - `seg`: a segmentation map: `bg` (0)" in card


@pytest.mark.parametrize("alias", ["demo-shapes", "faces-utkface"])
def test_bundled_generators_keep_their_config(alias, tmp_path):
    loaded = load_generator(alias)
    assert loaded.model.task_kinds == {} and loaded.model.dense_tasks == []
    loaded.model.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").read_bytes() == (loaded.folder / "config.json").read_bytes()
