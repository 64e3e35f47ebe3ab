import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from mtlue_cli.cli import app
from mtlue_cli.config import DataConfig, VerifyConfig, victim_res
from mtlue_cli.data.dataset import split_indices
from mtlue_cli.data.labels import read_labels
from mtlue_cli.errors import ConfigError
from mtlue_cli.verify.defenses import ALL, expand_defenses
from mtlue_cli.verify.run import TaskRow, VerifyReport, judge, verify

N, SIZE = 96, 16


def draw(bright: int, band: int, rng: np.random.Generator) -> np.ndarray:
    """Task 'light': global brightness; task 'band': which horizontal third holds a bright stripe."""
    img = rng.integers(40, 80, (SIZE, SIZE, 3)) + 90 * bright
    rows = slice(band * SIZE // 3 + 1, (band + 1) * SIZE // 3)
    img[rows] += 60
    return np.clip(img, 0, 255).astype(np.uint8)


def write_set(root: Path, shortcut: bool = False, only: set[str] | None = None) -> Path:
    """Clean images, or 'protected' ones carrying an inverted class-wise shortcut (labels unchanged)."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    rows = []
    for i in range(N):
        light, band = i % 2, i % 3
        name = f"{i:03d}.png"
        pixels = draw(1 - light if shortcut else light, (band + 1) % 3 if shortcut else band, rng)
        if only is None or name in only:
            Image.fromarray(pixels).save(root / name)
            rows.append((name, light, band))
    with (root / "labels.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([("path", "light", "band"), *rows])
    return root


@pytest.fixture()
def sets(tmp_path):
    clean = write_set(tmp_path / "clean")
    records = read_labels(DataConfig(root=clean, labels=clean / "labels.csv")).records
    train, _ = split_indices(records, 0.25, 0)
    names = {records[i].path for i in train}
    return clean, names, tmp_path


CFG = VerifyConfig(epochs=15, batch_size=16, seed=0, device="cpu", test_split=0.25, defenses=("none",), time_budget=None)


def data(root: Path) -> DataConfig:
    return DataConfig(root=root, labels=root / "labels.csv", size=SIZE)


def test_shortcut_is_effective_and_clean_copies_are_not(sets):
    clean, names, tmp = sets
    fake_protected = write_set(tmp / "prot", shortcut=True, only=names)
    report = verify(data(clean), fake_protected, CFG)
    assert [r.task for r in report.tasks] == ["light", "band"]
    assert report.effective, report.to_dict()
    assert all(r.protected_acc <= r.majority + 0.05 for r in report.tasks)
    assert all(r.protected_train_acc > r.protected_acc + 0.3 for r in report.tasks)  # the shortcut signature
    assert all(r.clean_acc > r.majority + 0.3 for r in report.tasks)

    copies = write_set(tmp / "copies", only=names)
    report = verify(data(clean), copies, CFG)
    assert not report.effective and set(report.failing) == {"light", "band"}


def test_majority_baseline_is_exact_and_defences_add_columns(sets):
    clean, names, tmp = sets
    prot = write_set(tmp / "prot", shortcut=True, only=names)
    cfg = VerifyConfig(epochs=1, batch_size=16, device="cpu", test_split=0.25, defenses=("grayscale", "bdr2"))
    report = verify(data(clean), prot, cfg)
    records = read_labels(data(clean)).records
    train, test = split_indices(records, 0.25, 0)
    for k, row in enumerate(report.tasks):
        counts = np.bincount([records[i].labels[k] for i in train], minlength=3)
        expected = np.mean([records[i].labels[k] == counts.argmax() for i in test])
        assert row.majority == pytest.approx(expected)
        assert set(row.by_defense) == {"none", "grayscale", "bdr2"}
    assert report.defenses == ["none", "grayscale", "bdr2"] and report.test_images == len(test)


def test_refuses_to_test_on_protected_images(sets):
    clean, _, tmp = sets
    everything = write_set(tmp / "all", shortcut=True)
    with pytest.raises(ConfigError, match="--holdout 0.25 --seed 0"):
        verify(data(clean), everything, CFG)


def test_cli_exit_codes_and_json(sets):
    clean, names, tmp = sets
    prot = write_set(tmp / "prot", shortcut=True, only=names)
    copies = write_set(tmp / "copies", only=names)
    runner = CliRunner()
    base = ["verify", "--clean", str(clean), "--labels", str(clean / "labels.csv"), "--test-split", "0.25",
            "--epochs", "15", "--batch-size", "16", "--res", str(SIZE), "--device", "cpu", "-q", "--defense", "none",
            "--time-budget", "none"]
    ok = runner.invoke(app, [*base, "--protected", str(prot), "--json", str(tmp / "r.json")])
    assert ok.exit_code == 0, ok.output
    assert json.loads((tmp / "r.json").read_text())["effective"] is True
    bad = runner.invoke(app, [*base, "--protected", str(copies)])
    assert bad.exit_code == 4, bad.output
    assert "NOT effective" in bad.output


def test_clean_baseline_is_cached_by_data_and_recipe(sets):
    clean, names, tmp = sets
    prot = write_set(tmp / "prot", shortcut=True, only=names)
    cfg = VerifyConfig(epochs=1, batch_size=16, device="cpu", test_split=0.25, defenses=("none",), time_budget=None)
    logs: list[str] = []
    first = verify(data(clean), prot, cfg)
    second = verify(data(clean), prot, cfg, on_event=lambda kind, info: logs.append(info.get("message", "")))
    assert any("cached result reused" in m for m in logs)
    assert [r.clean_acc for r in first.tasks] == [r.clean_acc for r in second.tasks]
    logs.clear()
    verify(data(clean), prot, dataclasses.replace(cfg, epochs=2), on_event=lambda k, i: logs.append(i.get("message", "")))
    assert not any("cached" in m for m in logs)  # another recipe, another baseline


def test_time_budget_picks_the_epochs(sets):
    clean, names, tmp = sets
    prot = write_set(tmp / "prot", shortcut=True, only=names)
    tiny = verify(data(clean), prot, dataclasses.replace(CFG, epochs=50, time_budget=0.01))
    assert tiny.recipe["epochs"] == 1


def test_cache_key_separates_adversarial_clean_victims(sets):
    from mtlue_cli.data.dataset import load_dataset
    from mtlue_cli.verify.run import _cache_key

    clean, _, _ = sets
    ds = load_dataset(data(clean))
    plain = _cache_key(ds, ds, CFG, SIZE, 15)
    assert _cache_key(ds, ds, dataclasses.replace(CFG, adv_train=True), SIZE, 15) != plain  # trains differently
    assert _cache_key(ds, ds, dataclasses.replace(CFG, time_budget=60.0), SIZE, 15) == plain  # epochs carry it


def _row(task: str, majority: float, **by_defense: float) -> TaskRow:
    return TaskRow(task, majority, 0.8, 0.8, by_defense["none"], 0.0, 0.9, by_defense=by_defense)


def test_the_verdict_fails_when_only_a_squeeze_breaks_it():
    rows = [_row("age", 0.2, none=0.1, grayscale=0.4, jpeg10=0.2), _row("sex", 0.5, none=0.3, grayscale=0.52, jpeg10=0.5)]
    assert judge(rows, threshold=5.0) == {"grayscale": ["age"]}  # 0.52 is within 0.5 + 5 points
    assert judge(rows, threshold=25.0) == {}


def test_an_informed_defence_that_breaks_it_gets_the_measured_note():
    from mtlue_cli.verify.verdict import informed_note

    assert informed_note({"grayscale": ["age"]}) is None
    note = informed_note({"op": ["age"], "grayscale": ["age"], "ueraser-lite": ["sex"]})
    assert note.startswith("op and ueraser-lite broke the protection") and "54.7%" in note


def test_the_threshold_counts_from_a_uniform_guess_where_the_majority_class_scores_less():
    # 3 classes; the training majority class is rare in this test split (28%): a victim at 36% has learnt nothing a
    # guess (33.3%) would not give, so it counts as protected; at 39% it does not.
    rows = [TaskRow("shape", 0.28, 0.6, 0.6, 0.36, 0.0, 0.9, by_defense={"none": 0.36, "grayscale": 0.39}, chance=1 / 3)]
    assert rows[0].baseline == pytest.approx(1 / 3)
    assert judge(rows, threshold=5.0) == {"grayscale": ["shape"]}
    rows[0].chance = 0.0  # the majority class alone: both break it
    assert judge(rows, threshold=5.0) == {"none": ["shape"], "grayscale": ["shape"]}


def test_no_verdict_when_the_clean_trained_victim_did_not_learn_the_task():
    # Protected-trained at the baseline, but so is the victim trained on the originals: that proves nothing.
    unlearnt = TaskRow("age", 0.2, 0.23, 0.23, 0.2, 0.0, 0.5, by_defense={"none": 0.2})
    learnt = _row("sex", 0.5, none=0.5)
    report = VerifyReport([unlearnt, learnt], ["none"], 10, 5, {}, {}, 5.0)
    assert report.unlearned == ["age"] and report.verdict == "inconclusive" and not report.effective
    assert report.to_dict()["verdict"] == "inconclusive" and report.to_dict()["unlearned"] == ["age"]
    learnt.by_defense["none"] = 0.7  # a broken task is a verdict whatever else went on
    assert report.verdict == "not effective"
    unlearnt.clean_acc, learnt.by_defense["none"] = 0.26, 0.5  # 6 points above the baseline: learnt
    assert report.verdict == "effective" and report.effective


def test_verify_records_each_task_s_uniform_guess(sets):
    clean, names, tmp = sets
    prot = write_set(tmp / "prot", shortcut=True, only=names)
    report = verify(data(clean), prot, dataclasses.replace(CFG, epochs=1))
    classes = read_labels(data(clean)).spec.num_classes
    assert [row.chance for row in report.tasks] == pytest.approx([1 / c for c in classes])


def test_default_victim_resolution_and_defences():
    assert VerifyConfig().defenses == ("none", "grayscale", "jpeg10", "bdr2")
    assert victim_res(32, 200) == 64  # never below 64 px, whatever the working size
    assert victim_res(140, 200) == 140  # the paper's 140-px working size is kept
    assert victim_res(32, 32) == 32  # the images' own size when smaller
    assert victim_res(None, None) == 64


def test_default_resolution_follows_run_json(sets):
    clean, names, tmp = sets
    prot = write_set(tmp / "prot", shortcut=True, only=names)
    (prot / "run.json").write_text(json.dumps({"generator": {"image_size": 8}}))
    report = verify(data(clean), prot, dataclasses.replace(CFG, epochs=1, res=None))
    assert report.recipe["res"] == SIZE  # 64 px asked for, but the images are only 16 px


# ----------------------------------------------------------------------------- informed-attacker defences,
# robustness profile, --detect, --plot (issue 16). A tiny stand-in victim keeps these runs to seconds.


class TinyVictim(torch.nn.Module):
    """MTLClassifier's interface (one logits tensor per task) on a pooled linear model."""

    def __init__(self, num_classes, arch="resnet18", stem="imagenet", image_size=64, in_channels=3):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(48, 16),
                                        torch.nn.ELU())
        self.heads = torch.nn.ModuleList(torch.nn.Linear(16, 1 if c == 2 else c) for c in num_classes)

    def forward(self, x):
        h = self.body(x)
        return [head(h) for head in self.heads]


@pytest.fixture()
def tiny_victim(monkeypatch, one_thread):
    import mtlue_cli.models.classifiers

    monkeypatch.setattr(mtlue_cli.models.classifiers, "MTLClassifier", TinyVictim)


TINY = dataclasses.replace(CFG, epochs=2)


def test_profile_adaptive_defences_detect_and_plot(sets, tiny_victim, tmp_path):
    pytest.importorskip("matplotlib")
    clean, names, tmp = sets
    prot = write_set(tmp / "prot", shortcut=True, only=names)
    cfg = dataclasses.replace(TINY, defenses=("op", "ueraser-lite"), detect=True, plot=tmp_path / "curves.png",
                              profile=True)
    report = verify(data(clean), prot, cfg)
    assert report.defenses == ["none", "op", "ueraser-lite"]
    assert [p.defense for p in report.profile] == report.defenses
    for p in report.profile:  # a clean-trained and a protected-trained figure per defence
        assert 0 <= p.clean_mean <= 1 and 0 <= p.protected_mean <= 1 and p.verdict in ("holds", "broken")
    for row in report.tasks:
        assert set(row.clean_by_defense) == set(row.by_defense) == set(report.defenses)
        assert row.clean_by_defense["none"] == row.clean_acc
    for trained in ("clean", "protected"):
        assert {d: len(c) for d, c in report.curves[trained].items()} == {d: 2 for d in report.defenses}
    assert [r.task for r in report.detect.tasks] == ["light", "band"]
    assert report.plot == str(tmp_path / "curves.png") and (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    as_json = json.loads(json.dumps(report.to_dict()))
    assert as_json["profile"][1]["defense"] == "op" and "summary" in as_json["detect"]
    broken = [d for d in ("op", "ueraser-lite") if d in report.broken_by]  # said with the figures when it happens
    assert any(n.startswith(" and ".join(broken) + " broke") for n in report.notes) == bool(broken)
    cache = list((tmp_path / "mtlue-cache" / "verify").glob("*.json"))
    assert len(cache) == 3  # one clean-trained victim per defence


def test_planning_counts_every_victim():
    from mtlue_cli.verify.run import count_victims, plan_epochs

    assert count_victims(len(ALL)) == 18  # --defense all: clean- and protected-trained under nine defences
    assert count_victims(4, stl_tasks=3) == 14
    assert count_victims(4, profile=False) == 5  # the default: one clean-trained victim, without defence
    assert plan_epochs(50, budget=18 * 5 * 2.0, victims=18, seconds_per_epoch=2.0) == 5
    assert plan_epochs(3, budget=1e9, victims=18, seconds_per_epoch=2.0) == 3 and plan_epochs(50, 1.0, 18, 2.0) == 1


def test_plot_without_matplotlib_says_how_and_verify_goes_on(sets, tiny_victim, tmp_path, monkeypatch):
    import sys

    clean, names, tmp = sets
    prot = write_set(tmp / "prot", shortcut=True, only=names)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    result = CliRunner().invoke(app, [
        "verify", "--clean", str(clean), "--protected", str(prot), "--labels", str(clean / "labels.csv"),
        "--test-split", "0.25", "--epochs", "1", "--batch-size", "16", "--res", str(SIZE), "--device", "cpu", "-q",
        "--defense", "none", "--time-budget", "none", "--plot", str(tmp_path / "curves.png"), "--json", str(tmp_path / "r.json")])
    assert result.exit_code in (0, 4, 5), result.output  # a verdict, whichever: 1 epoch
    assert 'pip install "mtlue[plot]"' in result.output
    assert not (tmp_path / "curves.png").exists()
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["plot"] is None and any("mtlue[plot]" in n for n in saved["notes"])


def test_cli_passes_defense_all_detect_and_plot_to_the_library(sets, monkeypatch, tmp_path):
    import importlib

    clean, names, tmp = sets
    prot = write_set(tmp / "prot", shortcut=True, only=names)
    seen = {}

    def fake_verify(clean, protected, cfg, test=None, on_event=None):
        seen["cfg"] = cfg
        raise SystemExit(0)

    monkeypatch.setattr(importlib.import_module("mtlue_cli.verify.run"), "verify", fake_verify)
    result = CliRunner().invoke(app, ["verify", "--clean", str(clean), "--protected", str(prot), "--labels",
                                      str(clean / "labels.csv"), "--test-split", "0.25", "-q", "--defense", "all",
                                      "--detect", "--plot", str(tmp_path / "c.png")])
    assert result.exit_code == 0, result.output
    cfg = seen["cfg"]
    assert (cfg.defenses, cfg.detect, cfg.plot) == (("all",), True, tmp_path / "c.png")
    assert expand_defenses(cfg.defenses) == list(ALL)


def test_mean_sd_is_the_sample_sd():
    from mtlue_cli.verify.verdict import mean_sd

    mean, sd = mean_sd([0.2, 0.4, 0.6])
    assert mean == pytest.approx(0.4) and sd == pytest.approx(0.2)  # sqrt((0.04 + 0 + 0.04) / 2)
    assert mean_sd([0.3]) == (0.3, 0.0)


def test_seeded_verdict_reads_the_mean_and_flags_tasks_within_noise():
    from mtlue_cli.verify.verdict import noise_text

    # age: baseline 0.5, line 0.55; seeds 0.52 / 0.56 / 0.60 -> mean 0.56 (above: broken), sd 0.04 > |0.56 - 0.55|
    age = TaskRow("age", 0.5, 0.8, 0.8, 0.56, 0.0, 0.9, by_defense={"none": 0.56},
                  by_defense_seeds={"none": [0.52, 0.56, 0.60]})
    # sex: baseline 0.5; seeds 0.10 / 0.20 / 0.30 -> mean 0.2, sd 0.1: 0.35 from the line, not within noise
    sex = TaskRow("sex", 0.5, 0.8, 0.8, 0.2, 0.0, 0.9, by_defense={"none": 0.2},
                  by_defense_seeds={"none": [0.1, 0.2, 0.3]})
    report = VerifyReport([age, sex], ["none"], 10, 10, {}, {"victim_seeds": [0, 1, 2]}, 5.0)
    assert report.broken_by == {"none": ["age"]} and report.verdict == "not effective"
    assert report.within_noise == {"none": ["age"]}
    assert age.sd("none") == pytest.approx(0.04) and sex.sd("none") == pytest.approx(0.1)
    assert noise_text(report) == "age with no defence (56.0% ± 4.0%, line 55.0%)"
    out = report.to_dict()
    assert out["within_noise"] == {"none": ["age"]}
    assert out["mean"]["by_defense_seeds"]["none"] == pytest.approx([0.31, 0.38, 0.45])  # task means per seed
    assert out["mean"]["by_defense_sd"]["none"] == pytest.approx(0.07)
    assert out["tasks"][0]["by_defense_seeds"] == {"none": [0.52, 0.56, 0.60]}


def test_seeds_train_one_victim_per_seed_on_one_split(sets, monkeypatch):
    import mtlue_cli.models.engine as engine

    clean, names, tmp = sets
    prot = write_set(tmp / "prot", shortcut=True, only=names)
    used: list[int] = []
    seed_everything = engine.seed_everything
    monkeypatch.setattr(engine, "seed_everything", lambda s: used.append(s) or seed_everything(s))
    cfg = dataclasses.replace(CFG, epochs=1, seeds=2, victim_seed=3, cache=False)
    report = verify(data(clean), prot, cfg)
    assert used == [3, 4, 3, 4]  # clean then protected, seeds 3 and 4
    assert report.recipe["victim_seeds"] == [3, 4] and report.recipe["seed"] == 0  # the split's seed stays
    one = verify(data(clean), prot, dataclasses.replace(cfg, seeds=1, victim_seed=0))
    assert report.test_images == one.test_images  # the same clean test split
    for row in report.tasks:
        values = row.by_defense_seeds["none"]
        assert len(values) == 2 and row.protected_acc == pytest.approx(sum(values) / 2)
        assert row.clean_acc == pytest.approx(sum(row.clean_by_defense_seeds["none"]) / 2)


def test_a_victim_s_seed_keys_its_cached_clean_result(sets):
    from mtlue_cli.data.dataset import load_dataset
    from mtlue_cli.verify.run import _cache_key, count_victims

    clean, _, _ = sets
    ds = load_dataset(data(clean))
    plain = _cache_key(ds, ds, CFG, SIZE, 15)
    assert _cache_key(ds, ds, dataclasses.replace(CFG, seeds=3), SIZE, 15, "none", 0) == plain  # seed 0 as before
    assert _cache_key(ds, ds, CFG, SIZE, 15, "none", 1) != plain
    assert count_victims(4, profile=False, seeds=3) == 15


def test_each_victim_reports_its_result_as_it_finishes(sets):
    clean, names, tmp = sets
    prot = write_set(tmp / "prot", shortcut=True, only=names)
    events: list[dict] = []
    report = verify(data(clean), prot, dataclasses.replace(CFG, epochs=1, cache=False),
                    on_event=lambda kind, info: events.append(info) if kind == "victim" else None)
    assert [(e["trained_on"], e["defense"], e["seed"]) for e in events] == [("clean", "none", 0), ("protected", "none", 0)]
    assert events[1]["final"] == [r.protected_acc for r in report.tasks]
