"""Each command is ONE library call: the CLI builds the configs, calls it once, renders the report it returns and
maps the report's verdict to the exit code. The library is replaced by recorders here; the work functions the
call would reach raise, so a command that did the work itself (or made a second call) fails."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

from mtlue_cli.cli import app
from mtlue_cli.config import (
    DataConfig,
    FitConfig,
    ProtectConfig,
    VerifyConfig,
    make_config,
)
from mtlue_cli.protect.protect import ProtectReport
from mtlue_cli.recipes import FIT_RECIPES, VERIFY_RECIPES
from mtlue_cli.verify.verdict import TaskRow, VerifyReport

runner = CliRunner()
ENV = {"COLUMNS": "300"}


class Recorder:
    """Stands in for the one library function: records every call, returns `result`."""

    def __init__(self, result: Any) -> None:
        self.result, self.calls = result, []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((args, {k: v for k, v in kwargs.items() if k != "on_event"}))
        return self.result


def _forbid(monkeypatch: pytest.MonkeyPatch, *targets: str) -> None:
    def forbidden(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the CLI must make one library call, not do its work")

    for target in targets:
        # import the module first: monkeypatch resolves a dotted path by attribute, which a lazy export may shadow
        importlib.import_module(target.rsplit(".", 1)[0])
        monkeypatch.setattr(target, forbidden)


def _protect_report(out: Path, **fields: Any) -> ProtectReport:
    return ProtectReport(out=out, total=3, written=3, resumed=0, failed=[], held_out=0, epsilon_255=8.0, max_linf_255=8,
                         mean_psnr=40.0, mean_ssim=0.99, seconds=1.0, images_per_second=3.0, format="png", **fields)


def _verify_report(protected_acc: float) -> VerifyReport:
    rows = [TaskRow("shape", 0.4, 0.9, 0.9, protected_acc, 0.4, 1.0, {"none": protected_acc, "jpeg10": 0.4})]
    recipe = {"victim": "resnet18", "stem": "imagenet", "epochs": 3, "res": 64, "crop": 58, "batch_size": 128,
              "weighting": "ew", "adv_train": False, "device": "cpu", "test": "seeded split 0.2"}
    return VerifyReport(rows, ["none", "jpeg10"], 10, 3, {}, recipe, 5.0, seconds=1.0)


def _fit_result() -> SimpleNamespace:
    return SimpleNamespace(method="tap", epochs_run=2, seconds=3.0, stop_reason="epoch cap",
                           surrogate_clean_acc=[0.9, 0.8, 0.7], attacked_train_acc=[0.1, 0.2, 0.3])


def test_inspect_is_one_call_with_its_data_config(monkeypatch, tiny_csv_dataset) -> None:
    from mtlue_cli.data.inspect import InspectReport

    report = InspectReport(str(tiny_csv_dataset.root), "csv", None, 12, [], {"16x16": 12}, {"RGB": 12}, {}, [], 1000)
    call = Recorder(report)
    monkeypatch.setattr("mtlue_cli.data.inspect.inspect_dataset", call)
    _forbid(monkeypatch, "mtlue_cli.data.labels.read_labels")
    d = tiny_csv_dataset
    result = runner.invoke(app, ["inspect", str(d.root), "-l", str(d.labels), "--split", "all", "-q"], env=ENV)
    assert result.exit_code == 0, result.output
    assert call.calls == [((DataConfig(root=d.root, labels=d.labels, split="all"),), {})]


def test_fit_is_one_call_with_the_recipe_the_library_chose(monkeypatch, tiny_csv_dataset, tmp_path) -> None:
    from mtlue_cli.fit.folder import FitReport

    out = tmp_path / "gen"
    call = Recorder(FitReport(_fit_result(), out, ["gender", "age", "glasses"], 12))
    monkeypatch.setattr("mtlue_cli.fit.folder.fit_folder", call)
    _forbid(monkeypatch, "mtlue_cli.fit.loop.fit_generator", "mtlue_cli.data.dataset.load_dataset")
    d = tiny_csv_dataset
    result = runner.invoke(app, ["fit", str(d.root), "-l", str(d.labels), "--out", str(out), "--method", "sep",
                                 "--preset", "high", "--epochs", "7", "--size", "16", "--time-budget", "none",
                                 "--device", "cpu", "-q"], env=ENV)
    assert result.exit_code == 0, result.output
    # auto on a CPU: the library picked `cpu`; --time-budget none lifts the recipe's budget
    expected = make_config(FitConfig, {**FIT_RECIPES["cpu"], "time_budget": None}, method="sep", epsilon=16 / 255,
                           epochs=7, image_size=16, device="cpu")
    assert call.calls == [((DataConfig(root=d.root, labels=d.labels), expected, out), {})]
    assert "recipe cpu" in result.output and "TAP generator" in result.output and "generator written" in result.output


def test_protect_is_one_call_and_its_report_gives_the_exit_code(monkeypatch, tiny_csv_dataset, tmp_path) -> None:
    out = tmp_path / "prot"
    call = Recorder(_protect_report(out))
    monkeypatch.setattr("mtlue_cli.protect.protect.protect_folder", call)
    _forbid(monkeypatch, "mtlue_cli.protect.protect.protect_dataset", "mtlue_cli.models.persistence.load_generator")
    d = tiny_csv_dataset
    base = ["protect", str(d.root), "-l", str(d.labels), "--out", str(out), "--device", "cpu", "-q", "--workers", "1"]
    result = runner.invoke(app, [*base, "-g", "demo-shapes", "--format", "webp", "--holdout", "0.2"], env=ENV)
    assert result.exit_code == 0, result.output
    data = DataConfig(root=d.root, labels=d.labels, workers=1)
    cfg = ProtectConfig(format="webp", holdout=0.2, device="cpu", workers=1)
    assert call.calls == [((data, out, cfg, "demo-shapes", None, None), {})]

    call.calls.clear()  # without --generator: the fit recipe is the library's choice, --time-budget its budget
    assert runner.invoke(app, [*base, "--time-budget", "15m"], env=ENV).exit_code == 0
    fit = make_config(FitConfig, FIT_RECIPES["cpu"], device="cpu", time_budget=900.0)
    assert call.calls == [((data, out, ProtectConfig(device="cpu", workers=1), None, None, fit), {})]

    call.result = _protect_report(out, unlabelled=[f"extra/x{i}.png" for i in range(7)])
    result = runner.invoke(app, [*base, "-g", "demo-shapes", "--skip-bad"], env=ENV)
    assert result.exit_code == 3 and not call.result.complete
    assert result.output.count("label row") == 2  # the summary's count, then ONE line with five names
    assert "7 image(s) without a label row were NOT protected (e.g. extra/x0.png, extra/x1.png, extra/x2.png, " \
           "extra/x3.png, extra/x4.png ...)" in result.output
    assert runner.invoke(app, [*base, "-g", "demo-shapes", "--time-budget", "1m"], env=ENV).exit_code == 2


def test_verify_is_one_call_and_the_verdict_is_the_reports(monkeypatch, tmp_path) -> None:
    from mtlue_cli.verify.run import VerifyRequest

    out = tmp_path / "prot"
    call = Recorder(_verify_report(0.41))
    monkeypatch.setattr("mtlue_cli.verify.run.verify_folder", call)
    _forbid(monkeypatch, "mtlue_cli.verify.run.verify", "mtlue_cli.protect.outputs.read_run")
    result = runner.invoke(app, ["verify", str(out), "--defense", "none,jpeg10", "--epochs", "3", "--device", "cpu",
                                 "--seed", "5", "--seeds", "3", "--json", str(tmp_path / "r.json"), "-q"], env=ENV)
    assert result.exit_code == 0, result.output  # within majority + 5 points with no defence and after jpeg10
    cfg = make_config(VerifyConfig, VERIFY_RECIPES["quick"], epochs=3, defenses=("none", "jpeg10"), device="cpu",
                      time_budget=1200.0, seeds=3)
    # Left None: what protect recorded in OUT/run.json, which the library reads; save: OUT/verify.json
    assert call.calls == [((VerifyRequest(out, seed=5, save=True), cfg), {})]
    assert json.loads((tmp_path / "r.json").read_text())["effective"] is True
    assert "protection effective" in result.output

    call.result = _verify_report(0.6)
    result = runner.invoke(app, ["verify", "--protected", str(out), "--clean", str(tmp_path), "-q"], env=ENV)
    assert result.exit_code == 4 and "NOT effective" in result.output and "shape with no defence" in result.output
    assert call.calls[-1][0][0] == VerifyRequest(out, clean=tmp_path)  # the long form: no verify.json in OUT

    call.result = _verify_report(0.41)
    call.result.tasks[0].clean_acc = 0.42  # the victim trained on the originals did not learn `shape` either
    result = runner.invoke(app, ["verify", str(out), "-q"], env=ENV)
    assert result.exit_code == 5 and "no verdict" in result.output and "did not learn shape" in result.output


def test_publish_is_one_call_with_its_config(monkeypatch, tmp_path) -> None:
    from mtlue_cli.hub.publish import PublishConfig, PublishReport

    report = PublishReport(out=tmp_path, folder=tmp_path / "up", repo_id="org/x", train_images=7, test_images=0, files=9,
                           bytes=1000, card=tmp_path / "up" / "README.md", license="mit", verified=False)
    call = Recorder(report)
    monkeypatch.setattr("mtlue_cli.hub.publish.publish_dataset", call)
    result = runner.invoke(app, ["publish", str(tmp_path), "--to", "org/x", "--license", "mit", "--dry-run", "-q"], env=ENV)
    assert result.exit_code == 0, result.output
    assert call.calls == [((tmp_path, PublishConfig(repo_id="org/x", license="mit", dry_run=True), None), {})]
    assert "dry run" in result.output and "7 protected images" in result.output


def test_demo_is_one_call_and_exits_by_the_verdict(monkeypatch, tmp_path) -> None:
    from mtlue_cli.demo.run import DemoReport

    call = Recorder(DemoReport(tmp_path / "data", tmp_path / "prot", _protect_report(tmp_path / "prot"),
                               _verify_report(0.6), "demo-shapes"))
    monkeypatch.setattr("mtlue_cli.demo.run.run_demo", call)
    _forbid(monkeypatch, "mtlue_cli.protect.protect.protect_dataset", "mtlue_cli.verify.run.verify")
    result = runner.invoke(app, ["demo", "--out", str(tmp_path), "--images", "40", "--device", "cpu", "-q"], env=ENV)
    assert result.exit_code == 4, result.output
    # left None, the generator and the epochs are the demo's own (demo.run.DEMOS)
    assert call.calls == [((tmp_path,), dict(generator=None, images=40, epochs=None, device="cpu", seed=0, plot=True,
                                             kind="shapes"))]
    result = runner.invoke(app, ["demo", "--out", str(tmp_path), "--no-plot", "-q"], env=ENV)
    assert call.calls[-1][1]["plot"] is False
    runner.invoke(app, ["demo", "--out", str(tmp_path), "--dense", "-q"], env=ENV)
    assert call.calls[-1][1]["kind"] == "scenes"


def test_export_is_one_call_with_its_config(monkeypatch, tmp_path) -> None:
    from mtlue_cli.hub.export import ExportConfig, ExportReport

    call = Recorder(ExportReport(tmp_path / "to"))
    monkeypatch.setattr("mtlue_cli.hub.export.export_and_push", call)
    _forbid(monkeypatch, "mtlue_cli.models.persistence.load_generator", "mtlue_cli.hub.export.export_generator",
            "mtlue_cli.hub.export.push_generator")
    result = runner.invoke(app, ["export", "demo-shapes", "--to", str(tmp_path / "to"), "--overwrite"], env=ENV)
    assert result.exit_code == 0, result.output
    assert call.calls == [((ExportConfig("demo-shapes", to=tmp_path / "to", overwrite=True),), {})]
    assert "generator exported to" in result.output and "pushed" not in result.output

    call.result = ExportReport(tmp_path / "to", "org/x", "https://hub/commit")
    result = runner.invoke(app, ["export", "demo-shapes", "--to", str(tmp_path / "to"), "--push", "org/x",
                                 "--private", "--revision", "dev"], env=ENV)
    assert result.exit_code == 0, result.output
    assert call.calls[-1] == ((ExportConfig("demo-shapes", to=tmp_path / "to", push="org/x", private=True,
                                            revision="dev"),), {})
    assert "pushed to org/x" in result.output and "https://hub/commit" in result.output
    assert runner.invoke(app, ["export", "demo-shapes"], env=ENV).exit_code == 2  # neither --to nor --push
    assert len(call.calls) == 2
