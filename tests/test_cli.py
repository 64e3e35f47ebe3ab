"""CLI tests: options map to the config the library receives (style rule 10), exit codes, torchrun."""

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from mtlue_cli.cli import app
from mtlue_cli.cli.options import parse_epsilon
from mtlue_cli.config import EPSILON_PRESETS, FitConfig
from mtlue_cli.errors import ConfigError

runner = CliRunner()


def test_help_lists_every_command_and_the_presets():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("inspect", "fit", "protect", "verify", "export", "demo"):
        assert command in result.output
    fit_help = runner.invoke(app, ["fit", "--help"], env={"COLUMNS": "200"}).output
    assert "low = 4/255" in fit_help and "high = 16/255" in fit_help and "Examples" in fit_help


def test_version_is_the_installed_distributions(monkeypatch):
    from importlib import metadata

    import mtlue_cli

    monkeypatch.setattr(metadata, "version", lambda name: mtlue_cli.__version__)
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"mtlue {mtlue_cli.__version__}"
    monkeypatch.setattr(metadata, "version", lambda name: "9.9.9")  # another tree than the one installed
    assert f"mtlue 9.9.9 (the code imported is {mtlue_cli.__version__})" in runner.invoke(app, ["--version"]).output

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    assert "(not installed)" in runner.invoke(app, ["--version"]).output


def test_an_option_group_is_its_fields_as_options_and_reaches_the_command_as_one_dataclass():
    import typer

    from mtlue_cli.cli.options import LabelOptions, ReadOptions, option_groups

    seen = []
    mini = typer.Typer()

    @mini.command()
    @option_groups
    def read(data: str, read: ReadOptions = ReadOptions(), quiet: bool = False) -> None:
        seen.append((data, read, quiet))

    result = runner.invoke(mini, ["here", "--tasks", "a,b", "--split", "all", "--quiet"])
    assert result.exit_code == 0, result.output
    assert seen == [("here", ReadOptions(tasks="a,b", split="all"), True)]
    assert "--path-column" in runner.invoke(mini, ["--help"], env={"COLUMNS": "200"}).output

    def clash(read: LabelOptions = LabelOptions(), tasks: str = "") -> None: ...

    with pytest.raises(ValueError, match="duplicate parameter name"):
        option_groups(clash)


def test_epsilon_parsing():
    assert parse_epsilon("8/255") == pytest.approx(8 / 255)
    assert parse_epsilon("8") == pytest.approx(8 / 255)
    assert parse_epsilon("0.0314") == pytest.approx(0.0314)
    assert parse_epsilon("high") == EPSILON_PRESETS["high"]
    for bad in ("eight", "0", "200/255"):
        with pytest.raises(ConfigError):
            parse_epsilon(bad)


def test_fit_flags_reach_the_config(monkeypatch, tiny_csv_dataset, tmp_path):
    seen = {}

    def fake_fit(dataset, cfg, out, on_event=None):
        seen.update(cfg=cfg, out=out, n=len(dataset), size=dataset.size)
        raise SystemExit(0)

    monkeypatch.setattr("mtlue_cli.fit.loop.fit_generator", fake_fit)
    d = tiny_csv_dataset
    result = runner.invoke(app, ["fit", str(d.root), "--labels", str(d.labels), "--method", "sep", "--preset", "high",
                                 "--quick", "--epochs", "7", "--size", "16", "--lambda-inter", "50",
                                 "--unprotected", "age", "--out", str(tmp_path / "g"), "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.output
    cfg: FitConfig = seen["cfg"]
    assert (cfg.method, cfg.epochs, cfg.image_size, cfg.lambda_inter) == ("sep", 7, 16, 50.0)
    assert cfg.epsilon == pytest.approx(16 / 255) and cfg.unprotected == ("age",)
    assert cfg.surrogate_epochs == 1 and cfg.batch_size == 32 and cfg.width == 16  # from the quick (smoke-test) recipe
    assert cfg.time_budget == 60.0
    assert seen["size"] == 16 and seen["n"] == 12
    both = runner.invoke(app, ["fit", str(d.root), "--labels", str(d.labels), "--quick", "--recipe", "cpu",
                               "--out", str(tmp_path / "h"), "--device", "cpu", "-q"])
    assert both.exit_code == 2 and "--quick is --recipe quick" in both.output


def test_default_fit_recipe_and_its_new_flags(monkeypatch, tiny_csv_dataset, tmp_path):
    seen = {}

    def fake_fit(dataset, cfg, out, on_event=None):
        seen.setdefault("cfgs", []).append(cfg)
        raise SystemExit(0)

    monkeypatch.setattr("mtlue_cli.fit.loop.fit_generator", fake_fit)
    d = tiny_csv_dataset
    base = ["fit", str(d.root), "--labels", str(d.labels), "--device", "cpu", "-q"]
    assert runner.invoke(app, [*base, "--out", str(tmp_path / "a")]).exit_code == 0
    default: FitConfig = seen["cfgs"][-1]  # auto on a CPU -> cpu
    assert (default.image_size, default.stem, default.width, default.bound, default.time_budget) == (64, "imagenet", 64, "tanh", 1140.0)
    assert set(default.robust) == {"identity", "grayscale", "jpeg", "bits", "blur"}
    result = runner.invoke(app, [*base, "--out", str(tmp_path / "b"), "--no-robust", "--width", "32",
                                 "--time-budget", "15m", "--stop-acc", "0.1"])
    assert result.exit_code == 0, result.output
    cfg: FitConfig = seen["cfgs"][-1]
    assert (cfg.robust, cfg.width, cfg.time_budget, cfg.stop_acc) == ((), 32, 900.0, 0.1)
    paper = runner.invoke(app, [*base, "--out", str(tmp_path / "c"), "--recipe", "paper-utkface"])
    assert paper.exit_code == 0 and seen["cfgs"][-1].robust == () and seen["cfgs"][-1].bound == "clamp"
    bad = runner.invoke(app, [*base, "--out", str(tmp_path / "d"), "--time-budget", "soon"])
    assert bad.exit_code == 2 and "duration" in bad.output


def test_fit_usage_errors_exit_2(tiny_csv_dataset, tmp_path):
    d = tiny_csv_dataset
    result = runner.invoke(app, ["fit", str(d.root), "--labels", str(d.labels), "--preset", "extreme", "-q"])
    assert result.exit_code == 2 and "error:" in result.output
    result = runner.invoke(app, ["fit", str(d.root), "--labels", str(d.labels), "--recipe", "nope", "--device", "cpu", "-q"])
    assert result.exit_code == 2


def test_missing_data_is_exit_1(tmp_path):
    result = runner.invoke(app, ["fit", str(tmp_path / "nothing"), "--device", "cpu", "-q"])
    assert result.exit_code == 1 and "no such folder" in result.output


def test_export_list_shows_the_bundled_alias():
    result = runner.invoke(app, ["export", "--list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "demo-shapes" in result.output
    assert "depth(map)" in result.output  # demo-scenes: a map task has no class count


def test_torchrun_two_gloo_processes_write_one_generator(tmp_path):
    """issue #4: data-parallel fit on CPU with gloo and 2 processes gives a normal generator folder."""
    from mtlue_cli.demo.shapes import make_shapes

    make_shapes(tmp_path / "data", n=16, size=16)
    out = tmp_path / "gen"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "mtlue_cli",
           "fit", str(tmp_path / "data" / "images"), "--labels", str(tmp_path / "data" / "labels.csv"), "--device",
           "cpu", "--size", "16", "--epochs", "1", "--surrogate-epochs", "1", "--batch-size", "8", "--out", str(out), "-q"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == [
        "README.md", "config.json", "fit_record.json", "model.safetensors"]
    import json

    assert json.loads((out / "fit_record.json").read_text())["processes"] == 2
    assert proc.stderr.count("generator written") <= 1 and proc.stdout.count("generator written") <= 1


def test_protect_without_generator_fits_one_and_verify_reads_run_json(monkeypatch, tiny_csv_dataset, tmp_path):
    from mtlue_cli.recipes import FIT_RECIPES
    from mtlue_cli.models.persistence import load_generator

    # A quicker default recipe for the test: the real fit, protect and run.json, at 16 px.
    monkeypatch.setitem(FIT_RECIPES, "cpu", dict(FIT_RECIPES["cpu"], image_size=16, epochs=2, surrogate_epochs=1,
                                                   batch_size=8, width=16))
    d, out = tiny_csv_dataset, tmp_path / "prot"
    result = runner.invoke(app, ["protect", str(d.root), "--labels", str(d.labels), "--out", str(out), "--holdout", "0.25",
                                 "--seed", "3", "--device", "cpu", "-q", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert load_generator(str(out / "generator")).model.image_size == 16  # a normal generator folder
    assert not (out / "generator" / "checkpoint").exists()  # the surrogate does not sit in a folder to publish
    held_out = json.loads((out / "run.json").read_text())["held_out"]
    assert held_out and len(list(out.rglob("*.png"))) + len(held_out) == 12
    seen = {}

    def fake_verify(clean, protected, cfg, test=None, on_event=None):
        seen.update(clean=clean, protected=protected, cfg=cfg, test=test)
        raise SystemExit(0)

    import importlib

    # mtlue_cli re-exports the function `verify`, which hides the module of that name from a dotted path.
    monkeypatch.setattr(importlib.import_module("mtlue_cli.verify.run"), "verify", fake_verify)
    assert runner.invoke(app, ["verify", str(out), "-q"]).exit_code == 0
    assert seen["clean"].root == d.root.resolve() or seen["clean"].root == d.root
    assert seen["clean"].labels == d.labels and seen["protected"] == out
    assert (seen["cfg"].test_split, seen["cfg"].seed, seen["cfg"].defenses) == (0.25, 3, ("none", "grayscale", "jpeg10", "bdr2"))
    assert runner.invoke(app, ["verify", str(out), "--test-split", "0.5", "--seed", "1", "-q"]).exit_code == 0
    assert (seen["cfg"].test_split, seen["cfg"].seed) == (0.5, 1)  # flags override what protect recorded
    assert runner.invoke(app, ["verify", "-q"]).exit_code == 2


def test_protect_names_unlabelled_images_in_one_line(tiny_csv_dataset, make_image, tmp_path):
    from mtlue_cli.models.generator import PerturbationGenerator
    from mtlue_cli.models.persistence import save_generator

    d = tiny_csv_dataset
    save_generator(PerturbationGenerator({k: list(v) for k, v in d.classes.items()}, image_size=16), tmp_path / "g")
    for i in range(7):
        make_image(d.root / "extra" / f"x{i}.png")
    result = runner.invoke(app, ["protect", str(d.root), "--labels", str(d.labels), "--out", str(tmp_path / "p"),
                                 "--generator", str(tmp_path / "g"), "--device", "cpu", "-q"], env={"COLUMNS": "300"})
    assert result.exit_code == 1
    assert result.output.count("no label row") == 1 and "7 files: image has no label row" in result.output
    assert "extra/x0.png, extra/x1.png" in result.output


def test_every_option_has_a_help_text_of_its_own():
    """Within a command no two options may share a help text (`fit --unprotected` used to show --tasks' text)."""
    import click
    import typer

    group = typer.main.get_command(app)
    assert group.commands
    for name, command in group.commands.items():
        texts: dict[str, str] = {}
        for param in command.params:
            if not isinstance(param, click.Option):
                continue
            assert param.help, f"mtlue {name} {param.opts[0]} has no help text"
            assert param.help not in texts, f"mtlue {name}: {param.opts[0]} and {texts[param.help]} share a help text"
            texts[param.help] = param.opts[0]
