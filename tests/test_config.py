"""The configs own validation: a bad option is a ConfigError naming the field, the value and what is allowed,
raised when the config is built, so nothing has trained (counted below) when the user hears of it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mtlue_cli import config
from mtlue_cli.config import (
    DataConfig,
    FitConfig,
    ProtectConfig,
    VerifyConfig,
    make_config,
)
from mtlue_cli.errors import ConfigError
from mtlue_cli.recipes import FIT_RECIPES, VERIFY_RECIPES

# (config class, bad fields, what the message must say: the flag, the value and the allowed values)
BAD = [
    (FitConfig, dict(method="pgd"), r"--method 'pgd' .*em, tap, sep"),
    (FitConfig, dict(bound="sigmoid"), r"--bound 'sigmoid' .*clamp, tanh"),
    (FitConfig, dict(stem="vit"), r"--stem 'vit' .*cifar, imagenet"),
    (FitConfig, dict(width=48), r"--width 48 .*16, 32, 64"),
    (FitConfig, dict(conditioning="labels"), r"--conditioning 'labels' .*full, classwise, z_only"),
    (FitConfig, dict(intra_form="mean"), r"--intra-form 'mean' .*code, paper"),
    (FitConfig, dict(tap_binary="flip"), r"--tap-binary 'flip' .*auto, untargeted, targeted"),
    (FitConfig, dict(em_stop_mode="xyz"), r"--em-stop-mode 'xyz' .*eval, train"),
    (FitConfig, dict(amp="fp8"), r"--amp 'fp8' .*auto, bf16, fp16, off"),
    (FitConfig, dict(surrogate="alexnet"), r"--surrogate 'alexnet' .*resnet18, resnet50, vgg16, densenet121, vit_b_16"),
    (FitConfig, dict(surrogate_stem="tiny"), r"--surrogate-stem 'tiny' .*imagenet, cifar"),
    (FitConfig, dict(robust=("grayscale", "sepia")), r"--robust 'sepia' .*identity, grayscale, jpeg, bits, blur"),
    (FitConfig, dict(robust_surrogate=True), r"--robust-surrogate .*--robust"),
    (FitConfig, dict(robust=("jpeg",), paired_surrogates=True), r"--paired-surrogates .*--robust-surrogate"),
    (FitConfig, dict(device="tpu"), r"--device 'tpu' .*auto\|cpu\|cuda\|cuda:N\|mps"),
    (FitConfig, dict(epochs=0), r"--epochs 0 .*integer >= 1"),
    (FitConfig, dict(batch_size=2.5), r"--batch-size 2.5 .*integer >= 1"),
    (FitConfig, dict(epsilon=0.0), r"--epsilon 0.0 .*\(0, 64/255\]"),
    (FitConfig, dict(epsilon=0.5), r"--epsilon 0.5 .*\(0, 64/255\]"),
    (FitConfig, dict(lr=0), r"--lr 0 .*number > 0"),
    (FitConfig, dict(lambda_inter=-1.0), r"--lambda-inter -1.0 .*number >= 0"),
    (FitConfig, dict(image_size=15), r"--image-size 15 .*multiple of 2"),
    (FitConfig, dict(image_size=36, stem="imagenet"), r"--image-size 36 .*multiple of 8"),
    (FitConfig, dict(image_size=4), r"--image-size 4 .*integer >= 8"),
    (FitConfig, dict(crop=4), r"--crop 4 .*integer from 8 to 64, or none"),
    (FitConfig, dict(crop=72), r"--crop 72 .*integer from 8 to 64, or none"),
    (FitConfig, dict(surrogate="vit_b_16"), r"--surrogate vit_b_16 reads 16-px patches, but its crop is 59 px"),
    (FitConfig, dict(milestones=(3, -1)), r"--milestones -1 .*integer >= 0"),
    (FitConfig, dict(stop_error=1.5), r"--stop-error 1.5 .*\[0, 1\], or none"),
    (FitConfig, dict(stop_acc=-0.1), r"--stop-acc -0.1 .*\[0, 1\], or none"),
    (FitConfig, dict(time_budget=0.0), r"--time-budget 0.0 .*number > 0, or none"),
    (FitConfig, dict(checkpoint_every=0), r"--checkpoint-every 0 .*integer >= 1"),
    (FitConfig, dict(seed="7"), r"--seed '7' .*an integer"),
    (ProtectConfig, dict(format="gif"), r"--format 'gif' .*png, webp, jpeg"),
    (ProtectConfig, dict(metadata="some"), r"--metadata 'some' .*strip, keep-safe, keep-all"),
    (ProtectConfig, dict(quality=101), r"--quality 101 .*integer from 1 to 100"),
    (ProtectConfig, dict(holdout=1.0), r"--holdout 1.0 .*\[0, 1\)"),
    (ProtectConfig, dict(workers=-1), r"--workers -1 .*integer >= 0"),
    (ProtectConfig, dict(preview=-2), r"--preview -2 .*integer >= 0"),
    (ProtectConfig, dict(batch_size=0), r"--batch-size 0 .*integer >= 1"),
    (VerifyConfig, dict(victim="lenet"), r"--victim 'lenet' .*resnet18, resnet50"),
    (VerifyConfig, dict(victim_stem="tiny"), r"--victim-stem 'tiny' .*imagenet, cifar"),
    (VerifyConfig, dict(weighting="magic"), r"--weighting 'magic' .*ew, uw, rlw"),
    (VerifyConfig, dict(metric="f1"), r"--metric 'f1' .*acc, auc"),
    (VerifyConfig, dict(test_split=1.0), r"--test-split 1.0 .*\[0, 1\)"),
    (VerifyConfig, dict(threshold=-5.0), r"--threshold -5.0 .*number >= 0"),
    (VerifyConfig, dict(res=64, crop=72), r"--crop 72 .*integer from 8 to 64"),
    (VerifyConfig, dict(victim="vit_b_16", crop=24), r"--victim vit_b_16 reads 16-px patches, but its crop is 24 px"),
    (VerifyConfig, dict(time_budget=-1.0), r"--time-budget -1.0 .*number > 0, or none"),
    (VerifyConfig, dict(defenses=()), r"--defenses \(\) .*non-empty"),
    (VerifyConfig, dict(amp="int8"), r"--amp 'int8' .*auto, bf16, fp16, off"),
    (DataConfig, dict(layout="xml"), r"--layout 'xml' .*auto, csv, folder, utkface, celeba"),
    (DataConfig, dict(split="val"), r"--split 'val' .*train, valid, test, all"),
    (DataConfig, dict(cache="disk"), r"--cache 'disk' .*auto, memory, mmap"),
    (DataConfig, dict(size=0), r"--size 0 .*integer >= 8"),
    (DataConfig, dict(workers=-1), r"--workers -1 .*integer >= 0"),
]


def _build(cls: type, bad: dict):
    return cls(Path("data"), **bad) if cls is DataConfig else cls(**bad)


@pytest.mark.parametrize("cls, bad, message", BAD, ids=[f"{c.__name__}-{'-'.join(b)}" for c, b, _ in BAD])
def test_bad_option_names_field_value_and_allowed_values(cls, bad, message) -> None:
    with pytest.raises(ConfigError, match=message):
        _build(cls, bad)
    # dataclasses.replace and the recipes go through the same checks.
    good = _build(cls, {})
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(good, **bad)


def test_every_allowed_value_and_every_recipe_builds() -> None:
    for field, allowed in [("method", config.METHODS), ("bound", config.BOUNDS), ("width", config.WIDTHS),
                           ("conditioning", config.CONDITIONINGS), ("intra_form", config.ER_FORMS),
                           ("tap_binary", config.TAP_BINARY), ("tap_dense", config.TAP_DENSE),
                           ("em_stop_mode", config.EM_STOP_MODES),
                           ("amp", config.AMPS), ("surrogate", config.ARCHS), ("stem", config.GENERATOR_STEMS)]:
        for value in allowed:
            assert getattr(FitConfig(**{field: value, "crop": 32}), field) == value
    FitConfig(robust=config.SQUEEZES, robust_surrogate=True, paired_surrogates=True, device="cuda:1", seed=-3,
              crop=None, time_budget=None, milestones=(0, 5))
    for recipe in FIT_RECIPES.values():
        make_config(FitConfig, recipe)
    for recipe in VERIFY_RECIPES.values():
        make_config(VerifyConfig, recipe)
    for value in config.FORMATS:
        ProtectConfig(format=value, metadata="keep-safe", quality=1, holdout=0.0)
    VerifyConfig(test_split=0.0, res=32, crop=32, weighting="rlw", metric="auc", victim="vit_b_16", defenses=("all",))
    for layout in config.LAYOUTS:
        DataConfig(Path("."), layout=layout, size=8, workers=0)


def test_allowed_values_have_one_home() -> None:
    from mtlue_cli.fit import losses, methods
    from mtlue_cli.models import classifiers, generator

    assert tuple(methods.METHODS) == config.METHODS
    assert classifiers.ARCHS is config.ARCHS and losses.BINARY_MODES is config.BINARY_MODES
    for stem in ("resnet", "imagenet2"):
        with pytest.raises(ValueError, match=", ".join(config.GENERATOR_STEMS)):
            generator.PerturbationGenerator({"t": ["a", "b"]}, image_size=16, stem=stem)


# ----------------------------------------------------------------------------- nothing trains first


@pytest.fixture
def work(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts of the work a run does: classifier steps (surrogates, EM, victims) and generator forward passes."""
    from mtlue_cli.models.engine import ClassifierTrainer
    from mtlue_cli.models.generator import PerturbationGenerator

    counts = {"classifier_steps": 0, "generator_passes": 0}
    step, forward = ClassifierTrainer.step, PerturbationGenerator.forward

    def counted_step(self, *args, **kwargs):
        counts["classifier_steps"] += 1
        return step(self, *args, **kwargs)

    def counted_forward(self, *args, **kwargs):
        counts["generator_passes"] += 1
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(ClassifierTrainer, "step", counted_step)
    monkeypatch.setattr(PerturbationGenerator, "forward", counted_forward)
    return counts


def _tiny_dataset(size: int = 16):
    from test_fit import tiny_dataset

    return tiny_dataset(size=size)


QUICK = dict(image_size=16, crop=14, batch_size=6, epochs=1, surrogate_epochs=1, sep_every=1, checkpoint_every=1,
             device="cpu", stop_error=0.0, width=16)


@pytest.mark.parametrize("bad", [b for c, b, _ in BAD if c is FitConfig], ids=lambda b: "-".join(b))
def test_bad_fit_option_stops_before_any_training(tmp_path, work, bad) -> None:
    from mtlue_cli.fit.loop import fit_generator

    dataset = _tiny_dataset()
    with pytest.raises(ConfigError):
        fit_generator(dataset, FitConfig(**{**QUICK, **bad}), tmp_path / "gen")
    assert work == {"classifier_steps": 0, "generator_passes": 0}
    assert not (tmp_path / "gen").exists()


@pytest.mark.parametrize("bad, size, message", [
    (dict(stem="imagenet", image_size=16, crop=None), 20, "decoded at 20 px but --image-size is 16"),
    (dict(unprotected=("colour",)), 16, "unknown task"),
    (dict(unprotected=("shape", "size")), 16, "every task"),
    (dict(resume=True), 16, "--resume: no checkpoint"),
], ids=["size", "unprotected", "all-unprotected", "resume"])
def test_options_that_need_the_dataset_fail_before_any_training(tmp_path, work, bad, size, message) -> None:
    from mtlue_cli.fit.loop import fit_generator

    with pytest.raises(ConfigError, match=message):
        fit_generator(_tiny_dataset(size), FitConfig(**{**QUICK, **bad}), tmp_path / "gen")
    assert work == {"classifier_steps": 0, "generator_passes": 0}


def test_the_counters_see_a_fit_train(tmp_path, work, one_thread) -> None:
    """The control for the tests above: a good config does reach the surrogate and the generator."""
    from mtlue_cli.fit.loop import fit_generator

    fit_generator(_tiny_dataset(), FitConfig(**QUICK), tmp_path / "gen")
    assert work["classifier_steps"] >= 2 and work["generator_passes"] >= 2


@pytest.mark.parametrize("bad", [b for c, b, _ in BAD if c is ProtectConfig], ids=lambda b: "-".join(b))
def test_bad_protect_option_stops_before_any_image_is_perturbed(tmp_path, work, tiny_csv_dataset, bad) -> None:
    from mtlue_cli.models.persistence import load_generator
    from mtlue_cli.protect.protect import protect_dataset

    loaded = load_generator("demo-shapes")
    with pytest.raises(ConfigError):
        protect_dataset(loaded, DataConfig(tiny_csv_dataset.root), tmp_path / "out", ProtectConfig(**bad))
    assert work["generator_passes"] == 0 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("bad", [b for c, b, _ in BAD if c is VerifyConfig], ids=lambda b: "-".join(b))
def test_bad_verify_option_stops_before_any_victim_trains(tmp_path, work, tiny_csv_dataset, bad) -> None:
    from mtlue_cli.verify.run import verify

    with pytest.raises(ConfigError):
        verify(DataConfig(tiny_csv_dataset.root), tiny_csv_dataset.root, VerifyConfig(**bad))
    assert work["classifier_steps"] == 0


@pytest.mark.parametrize("flag, value, message", [
    ("--bound", "xyz", "--bound 'xyz' is not allowed: use one of clamp, tanh"),
    ("--em-stop-mode", "xyz", "--em-stop-mode 'xyz' is not allowed: use one of eval, train"),
    ("--surrogate", "alexnet", "--surrogate 'alexnet' is not allowed"),
    ("--size", "15", "--image-size 15 is not allowed: use a multiple of"),  # of the recipe's stem's factor
])
def test_cli_fit_with_a_bad_option_is_a_usage_error_before_any_work(tmp_path, work, tiny_csv_dataset, flag, value,
                                                                     message) -> None:
    from typer.testing import CliRunner

    from mtlue_cli.cli import app

    result = CliRunner().invoke(app, ["fit", str(tiny_csv_dataset.root), "--out", str(tmp_path / "gen"),
                                      "--device", "cpu", flag, value])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert "internal error" not in result.output
    assert work == {"classifier_steps": 0, "generator_passes": 0}
    assert not (tmp_path / "gen" / "model.safetensors").exists()


def test_decorrelate_is_checked_and_reaches_the_generator():
    from mtlue_cli.config import DECORRELATIONS
    from mtlue_cli.data.tasks import TaskSpec
    from mtlue_cli.fit.loop import _build_generator
    from mtlue_cli.fit.methods import METHODS

    assert FitConfig().decorrelate == "none"  # the paper's δ unless asked
    with pytest.raises(ConfigError, match="decorrelate"):
        FitConfig(decorrelate="phase")

    class Data:
        spec = TaskSpec(("a", "b"), (("0", "1"), ("x", "y", "z")))

    for mode in DECORRELATIONS:
        g = _build_generator(Data(), FitConfig(image_size=16, decorrelate=mode), METHODS["tap"], 1)
        assert g.decorrelate == mode
