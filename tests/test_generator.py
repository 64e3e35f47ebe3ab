import json

import pytest
import torch
from safetensors.torch import load_file

from mtlue_cli.fit.losses import embedding_regulariser
from mtlue_cli.models.generator import PerturbationGenerator

# Deliberately not in alphabetical order: config.json must keep it.
TASKS = {"age": [f"a{i}" for i in range(4)], "race": ["r0", "r1", "r2"], "gender": ["female", "male"]}


def _labels(batch: int = 2) -> torch.Tensor:
    return torch.tensor([[3, 2, 1], [0, 1, 0], [2, 0, 1], [1, 2, 0]])[:batch]  # (B, K)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize(
    "stem, in_channels, latent",
    [("cifar", 3, 16), ("imagenet", 1, 4)],
)
def test_output_shape_and_bound(stem: str, in_channels: int, latent: int) -> None:
    g = PerturbationGenerator(TASKS, image_size=32, in_channels=in_channels, stem=stem)
    assert g.latent_size == latent
    shape = (2, in_channels, 32, 32)
    for x in (torch.rand(shape), torch.zeros(shape), torch.ones(shape)):
        delta = g(x, _labels())
        assert delta.shape == (2, in_channels, 32, 32)
        assert delta.abs().max() <= g.epsilon
    # Extreme inputs and embeddings drive the decoder far past epsilon; the clamp must still hold.
    with torch.no_grad():
        for e in g.embeddings:
            e.weight.mul_(1e3)
    delta = g(100 * torch.randn(2, in_channels, 32, 32), _labels())
    assert delta.abs().max().item() == pytest.approx(8 / 255)
    assert delta.abs().max().item() <= 8 / 255


def test_embeddings_are_one_table_per_task() -> None:
    g = PerturbationGenerator(TASKS, image_size=16, embed_channels=4)
    weights = g.embedding_weights()
    assert [w.shape for w in weights] == [(4, 4 * 8 * 8), (3, 4 * 8 * 8), (2, 4 * 8 * 8)]
    assert sum(w.shape[0] for w in weights) == 9  # sum of C_k, not their product
    assert g.task_names == ["age", "race", "gender"]
    assert g.num_classes == [4, 3, 2]
    # Embeddings first, then z: 16K + 128 decoder input channels (§2.2).
    assert g.decoder[0].in_channels == 4 * 3 + 128
    assert all(w is e.weight for w, e in zip(weights, g.embeddings))


@pytest.mark.parametrize("conditioning", ["full", "classwise", "z_only"])
def test_every_parameter_gets_a_gradient(conditioning: str) -> None:
    # epsilon close to 1 so the hard clamp saturates (almost) nothing.
    g = PerturbationGenerator(TASKS, image_size=16, epsilon=0.99, conditioning=conditioning)
    delta = g(torch.rand(4, 3, 16, 16), _labels(4))
    (delta * torch.randn_like(delta)).sum().backward()
    # The biases of decoder layers 2 and 3 feed an InstanceNorm, which removes any per-channel
    # constant: their gradient is zero by construction.
    inert = {"decoder.1.bias", "decoder.4.bias"}
    for name, p in g.named_parameters():
        assert p.grad is not None, name
        if name in inert:
            assert p.grad.abs().max() < 1e-4, name
        else:
            assert p.grad.abs().sum() > 0, name


def test_regulariser_reaches_every_embedding() -> None:
    g = PerturbationGenerator(TASKS, image_size=8)
    embedding_regulariser(g.embedding_weights()).backward()
    assert all(e.weight.grad is not None and (e.weight.grad.abs().sum(dim=1) > 0).all() for e in g.embeddings)


def test_conditioning_variants() -> None:
    x, other_x = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    labels, other_labels = _labels(2), _labels(4)[2:]
    classwise = PerturbationGenerator(TASKS, image_size=16, conditioning="classwise").eval()
    assert classwise.encoder is None and classwise.decoder[0].in_channels == 16 * 3
    assert torch.equal(classwise(x, labels), classwise(other_x, labels))
    assert not torch.equal(classwise(x, labels), classwise(x, other_labels))
    z_only = PerturbationGenerator(TASKS, image_size=16, conditioning="z_only").eval()
    assert z_only.embedding_weights() == [] and z_only.decoder[0].in_channels == 128
    assert torch.equal(z_only(x, labels), z_only(x, other_labels))
    assert not torch.equal(z_only(x, labels), z_only(other_x, labels))


def test_unprotected_task_ignores_its_label() -> None:
    g = PerturbationGenerator(TASKS, image_size=16, unprotected=["race"]).eval()
    x = torch.rand(2, 3, 16, 16)
    labels = _labels(2)
    race_changed = labels.clone()
    race_changed[:, 1] = (race_changed[:, 1] + 1) % 3
    age_changed = labels.clone()
    age_changed[:, 0] = (age_changed[:, 0] + 1) % 4
    assert torch.equal(g(x, labels), g(x, race_changed))
    assert not torch.equal(g(x, labels), g(x, age_changed))
    # A per-call protect list overrides the constructor's choice.
    assert not torch.equal(g(x, labels, protect=["race"]), g(x, race_changed, protect=["race"]))
    assert torch.equal(g(x, labels, protect=["race"]), g(x, age_changed, protect=["race"]))
    with pytest.raises(ValueError, match="unknown tasks"):
        g(x, labels, protect=["colour"])


def test_save_pretrained_round_trip_is_bit_exact(tmp_path) -> None:
    g = PerturbationGenerator(TASKS, image_size=16, epsilon=4 / 255, unprotected=["gender"])
    g(torch.rand(4, 3, 16, 16), _labels(4))  # move the BN running statistics off their init
    g.eval()
    g.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    config = json.loads((tmp_path / "config.json").read_text())
    assert list(config["tasks"]) == ["age", "race", "gender"]
    assert config["tasks"] == TASKS
    assert config == {
        "bound": "clamp",
        "tasks": TASKS,
        "image_size": 16,
        "in_channels": 3,
        "epsilon": 4 / 255,
        "stem": "cifar",
        "embed_channels": 16,
        "unprotected": ["gender"],
        "conditioning": "full",
        "width": 64,
    }

    loaded = PerturbationGenerator(**config)
    loaded.load_state_dict(load_file(tmp_path / "model.safetensors"), strict=True)
    loaded.eval()
    original, restored = g.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[k], restored[k]) for k in original)
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(g(x, _labels()), loaded(x, _labels()))


def test_mixin_from_pretrained_keeps_task_order(tmp_path) -> None:
    PerturbationGenerator(TASKS, image_size=8).save_pretrained(tmp_path)
    loaded = PerturbationGenerator.from_pretrained(tmp_path)
    assert loaded.task_names == ["age", "race", "gender"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(stem="resnet"), "unknown stem"),
        (dict(conditioning="labels"), "unknown conditioning"),
        (dict(in_channels=2), "in_channels"),
        (dict(epsilon=0.0), "epsilon"),
        (dict(epsilon=1.0), "epsilon"),
        (dict(epsilon=8), "epsilon"),
        (dict(image_size=15), "multiple of 2"),
        (dict(image_size=20, stem="imagenet"), "multiple of 8"),
        (dict(unprotected=["colour"]), "unknown tasks"),
        (dict(tasks={}), "non-empty"),
        (dict(tasks={"smile": ["yes"]}), "at least 2 classes"),
        (dict(tasks={"smile": ["yes", "yes"]}), "twice"),
        (dict(tasks={"smile": "yn"}), "list of class names"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, match: str) -> None:
    kwargs = {"tasks": TASKS, "image_size": 16, **kwargs}
    with pytest.raises(ValueError, match=match):
        PerturbationGenerator(**kwargs)


def test_bad_input_shapes_raise() -> None:
    g = PerturbationGenerator(TASKS, image_size=8)
    with pytest.raises(ValueError, match="x must have shape"):
        g(torch.rand(2, 3, 16, 16), _labels())
    with pytest.raises(ValueError, match="labels must have shape"):
        g(torch.rand(2, 3, 8, 8), _labels()[:, :2])


def test_config_is_normalised_and_the_weights_carry_their_provenance(tmp_path) -> None:
    from safetensors import safe_open

    g = PerturbationGenerator({"b": ("x", "y"), "a": ("p", "q", "r")}, image_size=8, epsilon=4 / 255)
    assert g.config["tasks"] == {"b": ["x", "y"], "a": ["p", "q", "r"]} and list(g.config["tasks"]) == ["b", "a"]
    assert g.config["unprotected"] == [] and list(g.config) == sorted(g.config)
    meta = g.weights_metadata()
    assert meta["tasks"] == '{"b": ["x", "y"], "a": ["p", "q", "r"]}'
    assert meta["epsilon_255"] == "4/255" and meta["input_resolution"] == "8" and meta["base_method"] == ""
    g.provenance = {"base_method": "em", "seed": "5"}
    g.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as fh:
        written = fh.metadata()
    assert (written["base_method"], written["seed"], written["created"]) == ("em", "5", "")
    loaded = PerturbationGenerator.from_pretrained(tmp_path)
    assert loaded.provenance == {"base_method": "em", "seed": "5", "train_dataset_fingerprint": "", "created": ""}
    assert loaded.config == g.config


@pytest.mark.parametrize("mode", ["shift", "shift-zm"])
def test_decorrelate_moves_delta_per_image_and_every_parameter_gets_a_gradient(mode: str) -> None:
    torch.manual_seed(0)
    plain = PerturbationGenerator(TASKS, image_size=16, bound="tanh")
    moved = PerturbationGenerator(TASKS, image_size=16, bound="tanh", decorrelate=mode)
    moved.load_state_dict(plain.state_dict())
    plain.eval(), moved.eval()  # running BN statistics: an image's δ does not depend on its batch
    x = torch.rand(6, 3, 16, 16)
    y = torch.zeros(6, len(TASKS), dtype=torch.long)  # one class: a class-wise template would be the same in every row
    with torch.no_grad():
        a, b = plain(x, y), moved(x, y)
    assert not torch.allclose(a, b)  # it changes the pixels
    assert b.abs().max() <= 8 / 255  # before the bound: the budget holds
    if mode == "shift":  # a permutation of each image's own values (shift + flip, nothing else)
        assert torch.allclose(a.flatten(2).sort(-1).values, b.flatten(2).sort(-1).values)
    else:  # no channel keeps a spatial mean (before tanh, so after it only approximately)
        assert b.mean(dim=(2, 3)).abs().max() < 0.2 * a.mean(dim=(2, 3)).abs().max() + 1e-3
    with torch.no_grad():
        assert torch.equal(moved(x, y), b)  # deterministic: the amounts come from the pixels
        assert torch.equal(moved(x[2:4], y[2:4]), b[2:4])  # and from nothing else in the batch
    from mtlue_cli.models.generator import image_code

    assert len(set(image_code(x).tolist())) == 6
    moved.train()
    (moved(x, y) * torch.randn(6, 3, 16, 16)).sum().backward()
    inert = {"decoder.1.bias", "decoder.4.bias"}  # feed an InstanceNorm (test_every_parameter_gets_a_gradient)
    for name, p in moved.named_parameters():
        assert p.grad is not None and (name in inert or p.grad.abs().sum() > 0), name
    assert moved.config["decorrelate"] == mode and "decorrelate" not in plain.config  # the paper's config.json as before


def test_luma_colour_gives_equal_channels_that_grayscale_keeps() -> None:
    from mtlue_cli.fit.squeezes import grayscale

    torch.manual_seed(0)
    g = PerturbationGenerator(TASKS, image_size=16, bound="tanh", colour="luma")
    x = torch.rand(4, 3, 16, 16)
    delta = g(x, _labels(4))
    assert torch.equal(delta[:, 0], delta[:, 1]) and torch.equal(delta[:, 1], delta[:, 2]) and delta.abs().max() > 0
    assert torch.allclose(grayscale(0.5 + delta) - 0.5, delta, atol=1e-4)  # luma weights sum to 0.9999
    (delta * torch.randn_like(delta)).sum().backward()
    inert = {"decoder.1.bias", "decoder.4.bias"}
    for name, p in g.named_parameters():
        assert p.grad is not None and (name in inert or p.grad.abs().sum() > 0), name
    assert g.config["colour"] == "luma"
