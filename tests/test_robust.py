import pytest
import torch

from mtlue_cli.config import SQUEEZES, FitConfig
from mtlue_cli.errors import ConfigError
from mtlue_cli.fit.squeezes import bit_depth, grayscale, jpeg, random_squeeze, resize_blur
from mtlue_cli.models.generator import PerturbationGenerator
from mtlue_cli.verify.defenses import bit_depth as bdr_uint8
from mtlue_cli.verify.defenses import grayscale as gray_uint8

TASKS = {"age": ["0", "1", "2"], "sex": ["f", "m"]}


def _x(seed: int = 0) -> torch.Tensor:
    return torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name,fn", [("jpeg", lambda x: jpeg(x, 10)), ("bits", lambda x: bit_depth(x, 2))])
def test_non_differentiable_squeezes_change_pixels_and_pass_gradient_straight_through(name, fn):
    x = _x().requires_grad_(True)
    y = fn(x)
    assert (y - x).abs().max() > 0.02  # the squeeze is real in the forward pass
    weights = torch.randn_like(x)
    (y * weights).sum().backward()
    assert torch.equal(x.grad, weights)  # BPDA: the identity's gradient


def test_squeezes_match_the_victim_time_defences():
    x = (_x() * 255).round() / 255
    as_uint8 = (x * 255).round().to(torch.uint8)
    assert torch.equal((bit_depth(x, 2) * 255).round().to(torch.uint8), bdr_uint8(2)(as_uint8))
    assert ((grayscale(x) * 255).round() - gray_uint8(as_uint8).float()).abs().max() <= 1  # rounding only


def test_grayscale_and_blur_have_their_true_gradient():
    x = _x().requires_grad_(True)
    grayscale(x)[:, 0].sum().backward()
    assert torch.allclose(x.grad[:, 0], torch.full_like(x.grad[:, 0], 0.2989))
    assert torch.allclose(x.grad[:, 1], torch.full_like(x.grad[:, 1], 0.587))
    x = _x().requires_grad_(True)
    out = resize_blur(x, 0.5)
    assert out.shape == x.shape and (out - x).abs().mean() > 0.05
    out.sum().backward()
    assert x.grad.abs().sum() > 0 and not torch.equal(x.grad, torch.ones_like(x))


def test_random_squeeze_draws_every_kind_and_rejects_unknown_names():
    gen = torch.Generator().manual_seed(0)
    seen = {random_squeeze(SQUEEZES, gen)[0].rstrip("0123456789.") for _ in range(200)}
    assert seen == {"identity", "grayscale", "jpeg", "bdr", "blur"}
    assert random_squeeze((), gen)[0] == "identity"
    with pytest.raises(ConfigError, match="--robust 'sepia'.*identity, grayscale, jpeg, bits, blur"):
        FitConfig(robust=("grayscale", "sepia"))


def test_tanh_bound_gives_gradient_to_every_pixel_where_the_clamp_does_not():
    torch.manual_seed(0)
    x, y = torch.rand(2, 3, 16, 16), torch.tensor([[0, 1], [2, 0]])
    # Per pixel: tanh's derivative is positive everywhere; the clamp's is zero wherever it saturates.
    g = PerturbationGenerator(TASKS, image_size=16, bound="tanh")
    raw = {}
    g.decoder.register_forward_hook(lambda m, i, o: raw.setdefault("out", o))
    assert g(x, y).abs().max() <= 8 / 255
    pixel_grad = 8 / 255 * (1 - torch.tanh(raw["out"]) ** 2)
    assert (pixel_grad > 0).all()
    saturated = (raw["out"].abs() >= 8 / 255).float().mean()
    assert saturated > 0.5  # at init most raw outputs exceed ±ε: the hard clamp would pass no gradient there


@pytest.mark.parametrize("width", [16, 32, 64])
def test_width_scales_the_generator_and_every_parameter_learns(width):
    g = PerturbationGenerator(TASKS, image_size=16, width=width, bound="tanh")
    x, y = torch.rand(2, 3, 16, 16), torch.tensor([[0, 1], [2, 0]])
    g(x, y).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in g.parameters())
    assert g.encoder.conv1.out_channels == width
    with pytest.raises(ValueError, match="width"):
        PerturbationGenerator(TASKS, image_size=16, width=48)


def test_ueraser_squeeze_changes_pixels_and_has_its_true_gradient():
    from mtlue_cli.fit.ueraser import colour_stage

    torch.manual_seed(0)
    x = _x().requires_grad_(True)
    name, fn = random_squeeze(("ueraser",), torch.Generator().manual_seed(0))
    assert name == "ueraser" and fn is colour_stage
    torch.manual_seed(1)
    y = torch.cat([fn(x) for _ in range(4)])  # each image has a 1/8 chance to come through untouched
    assert (y - x.repeat(4, 1, 1, 1)).abs().amax(dim=(1, 2, 3)).gt(0.05).float().mean() > 0.5
    y.sum().backward()
    assert x.grad.abs().sum() > 0 and not torch.equal(x.grad, torch.full_like(x, 4.0))  # not straight-through
    torch.manual_seed(2)
    first = colour_stage(x.detach())
    torch.manual_seed(2)
    assert torch.equal(colour_stage(x.detach()), first)  # seeded: deterministic
    assert FitConfig(robust=("identity", "ueraser")).robust == ("identity", "ueraser")
