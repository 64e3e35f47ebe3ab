"""verify on label maps (issue 28): the ratio verdict, and a run on a hand-made protected folder of mixed tasks."""

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtlue_cli.config import DataConfig, VerifyConfig
from mtlue_cli.data.dataset import split_indices
from mtlue_cli.data.labels import read_labels
from mtlue_cli.verify.verdict import TaskRow, VerifyReport, judge

N, SIZE, HOLDOUT = 24, 32, 0.25


# ----------------------------------------------------------------------------- the verdict on hand-made numbers


def _dense(task: str, trivial: float, clean: float, higher: bool = True, **by_defense: float) -> TaskRow:
    return TaskRow(task, trivial, clean, clean, by_defense["none"], 0.0, 0.0, by_defense=by_defense, kind="segmentation",
                   metric="miou" if higher else "abs_error", higher_is_better=higher, ratio_threshold=0.2)


def test_a_label_map_task_is_protected_while_its_ratio_is_at_most_the_dense_threshold():
    # mIoU: no skill 0.2, clean 0.6 (a lead of 0.4). Protected 0.25 keeps 12.5% of it; 0.3 keeps 25%.
    seg = _dense("seg", 0.2, 0.6, none=0.25, grayscale=0.3)
    assert seg.ratio(0.25) == pytest.approx(0.125) and seg.ratio(0.3) == pytest.approx(0.25)
    assert judge([seg], threshold=5.0) == {"grayscale": ["seg"]}  # the points threshold plays no part
    assert seg.line(5.0) == pytest.approx(0.28)
    # Depth error (lower is better): no skill 1.0 m, clean 0.5 m. Protected 0.95 m keeps 10% of the lead, 0.85 m 30%.
    depth = _dense("depth", 1.0, 0.5, higher=False, none=0.95, jpeg10=0.85)
    assert depth.ratio(0.95) == pytest.approx(0.1) and depth.ratio(0.85) == pytest.approx(0.3)
    assert depth.ratio(1.2) == pytest.approx(-0.4)  # worse than no skill: below 0, protected
    assert judge([depth], threshold=5.0) == {"jpeg10": ["depth"]}
    depth.by_defense["jpeg10"] = 1.2
    report = VerifyReport([seg, depth], ["none", "grayscale", "jpeg10"], 10, 5, {}, {}, 5.0, dense_threshold=0.2)
    assert report.broken_by == {"grayscale": ["seg"]} and report.verdict == "not effective"
    seg.by_defense["grayscale"] = 0.2
    assert report.verdict == "effective"
    out = report.to_dict()
    assert out["tasks"][1]["ratio"] == pytest.approx(0.1)
    assert out["tasks"][1]["ratio_by_defense"]["jpeg10"] == pytest.approx(-0.4)
    assert out["dense_threshold"] == 0.2 and out["tasks"][0]["metric"] == "miou"
    assert out["mean"]["by_defense"]["none"] != out["mean"]["by_defense"]["none"]  # nan: no accuracies to average


def test_no_verdict_for_a_label_map_the_clean_victim_did_not_learn():
    # The clean-trained victim's depth error (1.1 m) is no better than no skill (1.0 m): no ratio, no verdict.
    depth = _dense("depth", 1.0, 1.1, higher=False, none=1.5)
    assert depth.ratio(1.5) is None and not depth.learned(5.0)
    learnt = TaskRow("count", 0.4, 0.9, 0.9, 0.4, 0.0, 0.9, by_defense={"none": 0.4}, chance=1 / 3)
    report = VerifyReport([learnt, depth], ["none"], 10, 5, {}, {}, 5.0, dense_threshold=0.2)
    assert report.unlearned == ["depth"] and report.verdict == "inconclusive"
    assert report.to_dict()["tasks"][1]["ratio"] is None
    assert report.to_dict()["mean"]["clean_acc"] == pytest.approx(0.9)  # the means are the class tasks' only
    learnt.by_defense["none"] = 0.9  # a broken class task is a verdict whatever else went on
    assert report.verdict == "not effective"


def test_seeded_label_map_rows_are_within_noise_of_their_ratio_line():
    seg = _dense("seg", 0.2, 0.6, none=0.29)
    seg.by_defense_seeds = {"none": [0.25, 0.33]}  # sd 0.057 > |0.29 - 0.28|
    report = VerifyReport([seg], ["none"], 10, 5, {}, {}, 5.0, dense_threshold=0.2)
    assert report.within_noise == {"none": ["seg"]}


# ----------------------------------------------------------------------------- a run on a hand-made protected folder


MAPS_OF = {"seg": "segmentation", "depth": "depth"}


def originals(scenes: Path) -> DataConfig:
    return DataConfig(root=scenes / "images", labels=scenes / "labels.csv", size=SIZE, depth_scale=1000.0,
                      maps=tuple(f"{t}={k}:{scenes / k}" for t, k in MAPS_OF.items()))


def protect_by_hand(scenes: Path, out: Path, noise: int = 4) -> Path:
    """OUT as `protect` writes it for dense tasks: noisy copies of the training images, byte-identical copies of
    their maps under OUT/maps/<task>/, labels.csv (path, class column, map paths), manifest.jsonl and run.json."""
    clean = originals(scenes)
    table = read_labels(clean)
    train, _ = split_indices(table.records, HOLDOUT, 0)
    rng = np.random.default_rng(0)
    rows, manifest = [], []
    for i in train:
        record = table.records[i]
        pixels = np.asarray(Image.open(clean.root / record.path).convert("RGB"), dtype=np.int16)
        noisy = np.clip(pixels + rng.integers(-noise, noise + 1, pixels.shape), 0, 255).astype(np.uint8)
        out.mkdir(parents=True, exist_ok=True)
        Image.fromarray(noisy).save(out / record.path)
        row = [record.path, table.spec.classes[0][record.labels[0]]]
        for k, task in enumerate(MAPS_OF, start=1):
            rel = f"maps/{task}/{Path(record.maps[k]).name}"
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(record.maps[k], out / rel)
            row.append(rel)
        rows.append(row)
        manifest.append({"source": record.path, "output": record.path, "status": "ok", "linf_255": noise,
                         "psnr": 40.0, "ssim": 0.99})
    with (out / "labels.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([["path", *table.spec.names], *rows])
    (out / "manifest.jsonl").write_text("".join(json.dumps(e) + "\n" for e in manifest))
    data = {"path_column": None, "tasks": None, "partition": None, "split": "train", "maps": list(clean.maps),
            "map_columns": [], "ignore_index": 255, "depth_scale": 1000.0}
    run = {"generator": {"image_size": SIZE}, "tasks": table.spec.to_dict(), "input_root": str(clean.root),
           "labels_file": str(clean.labels), "layout": "csv", "data": data, "holdout": HOLDOUT, "seed": 0}
    (out / "run.json").write_text(json.dumps(run))
    return out


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from mtlue_cli.demo.scenes import make_scenes

    return make_scenes(tmp_path_factory.mktemp("dense") / "scenes", n=N, size=SIZE, seed=0)


CFG = VerifyConfig(epochs=1, batch_size=8, device="cpu", defenses=("none", "grayscale"), time_budget=None, res=SIZE)


def test_verify_folder_on_mixed_tasks_records_every_score(scenes, tmp_path, one_thread):
    from mtlue_cli.data.dataset import load_dataset
    from mtlue_cli.metrics import protection_ratio
    from mtlue_cli.models.engine import center_crop
    from mtlue_cli.verify.run import VerifyRequest, verify_folder

    out = protect_by_hand(scenes, tmp_path / "out")
    cfg = dataclasses.replace(CFG, defenses=("none", "grayscale", "op"))
    report = verify_folder(VerifyRequest(out, save=True), cfg)  # the originals and their maps: from run.json
    assert [r.task for r in report.tasks] == ["count", "seg", "depth"]
    count, seg, depth = report.tasks
    assert not count.dense and seg.dense and depth.dense and report.defenses == ["none", "grayscale", "op"]
    assert (seg.metric, depth.metric, depth.higher_is_better) == ("miou", "abs_error", False)
    # The no-skill baseline: each kind's trivial predictor, fitted on the clean training maps and scored on the test
    # maps, both centre-cropped as the victims are scored.
    clean = load_dataset(originals(scenes))
    train, test = split_indices(clean.records, HOLDOUT, 0)
    crop = report.recipe["crop"]
    for k, row in ((1, seg), (2, depth)):
        kind = clean.spec.kinds[k]
        expected = kind.trivial(center_crop(clean.subset(train).targets(list(range(len(train))))[k], crop),
                                center_crop(clean.subset(test).targets(list(range(len(test))))[k], crop))
        assert row.trivial == pytest.approx(expected) and row.majority == pytest.approx(expected[kind.primary])
    assert set(seg.clean_scores) == {"miou", "pixel_accuracy"}
    assert set(depth.clean_scores) == {"abs_error", "rel_error", "delta1"}
    for row in (seg, depth):
        assert set(row.scores_by_defense) == {"none", "grayscale", "op"}  # op fitted on the class task
        assert row.by_defense["none"] == pytest.approx(row.scores_by_defense["none"][row.metric])
        assert row.clean_acc == pytest.approx(row.clean_scores[row.metric])
    saved = json.loads((out / "verify.json").read_text())
    assert saved["dense_threshold"] == 0.2 and saved["verdict"] == report.verdict
    for task, row in zip(saved["tasks"][1:], (seg, depth)):
        assert task["ratio"] == (None if task["ratio"] is None else pytest.approx(
            protection_ratio(row.protected_acc, row.clean_acc, row.majority, row.higher_is_better)))
        assert set(task["ratio_by_defense"]) == {"none", "grayscale", "op"}
        assert task["trivial"] and task["clean_scores"] and task["scores_by_defense"]["op"]
    assert saved["tasks"][0]["ratio"] is None and saved["mean"]["clean_acc"] == pytest.approx(count.clean_acc)
    # Two victim seeds: the first seed's clean-trained victim (scores included) comes from the cache.
    again = verify_folder(VerifyRequest(out), dataclasses.replace(CFG, defenses=("none",), seeds=2))
    assert again.tasks[1].clean_by_defense_seeds["none"][0] == pytest.approx(seg.clean_acc)
    for row in again.tasks[1:]:
        assert len(row.by_defense_seeds["none"]) == 2
        assert row.by_defense["none"] == pytest.approx(sum(row.by_defense_seeds["none"]) / 2)


def test_a_missing_protected_map_is_named(scenes, tmp_path):
    from mtlue_cli.errors import MtlueError, problems_of
    from mtlue_cli.verify.run import VerifyRequest, verify_folder

    out = protect_by_hand(scenes, tmp_path / "out")
    gone = min((out / "maps" / "seg").glob("*.png"))
    gone.unlink()
    with pytest.raises(MtlueError) as caught:
        verify_folder(VerifyRequest(out), CFG)
    named = [p.path for p in problems_of(caught.value)]
    assert f"maps/seg/{gone.name}" in named, (str(caught.value), named)


def test_a_protected_map_that_is_not_the_original_is_named(scenes, tmp_path):
    from mtlue_cli.errors import DatasetError
    from mtlue_cli.verify.run import VerifyRequest, verify_folder

    out = protect_by_hand(scenes, tmp_path / "out")
    first, second = sorted((out / "maps" / "depth").glob("*.png"))[:2]
    shutil.copyfile(second, first)  # another scene's depth: not this image's original map
    with pytest.raises(DatasetError, match=f"maps/depth/{first.name}.*not its original"):
        verify_folder(VerifyRequest(out), CFG)


def test_cli_passes_the_maps_and_the_dense_threshold(scenes, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import mtlue_cli.verify.run
    from mtlue_cli.cli import app
    from mtlue_cli.verify.run import VerifyRequest

    seen = {}

    def fake(request: VerifyRequest, cfg: VerifyConfig, on_event=None):
        seen.update(request=request, cfg=cfg)
        seg = _dense("seg", 0.2, 0.6, none=0.25)
        count = TaskRow("count", 0.4, 0.9, 0.9, 0.4, 0.0, 0.9, by_defense={"none": 0.4}, chance=1 / 3)
        recipe = {"victim": "resnet18", "stem": "imagenet", "epochs": 1, "res": 32, "crop": 29, "batch_size": 8,
                  "weighting": "ew", "adv_train": False, "device": "cpu", "test": "seeded split 0.25"}
        return VerifyReport([count, seg], ["none"], 17, 7, {}, recipe, 5.0, dense_threshold=0.2)

    monkeypatch.setattr(mtlue_cli.verify.run, "verify_folder", fake)
    result = CliRunner().invoke(app, ["verify", str(tmp_path / "out"), "--map", f"seg=segmentation:{scenes}/segmentation",
                                      "--depth-scale", "1000", "--dense-threshold", "0.3", "-q"])
    assert result.exit_code == 0, result.output
    request, cfg = seen["request"], seen["cfg"]
    assert request.maps == (f"seg=segmentation:{scenes}/segmentation",) and request.depth_scale == 1000.0
    assert request.map_columns is None and request.ignore_index is None  # not given: run.json's
    assert cfg.dense_threshold == 0.3
    assert "mIoU 0.6 clean, 0.25 protected, 0.2 no-skill: ratio +0.12" in " ".join(result.output.split())


def test_verify_folder_takes_the_maps_from_run_json_unless_given(tmp_path):
    from mtlue_cli.protect.outputs import RunRecord
    from mtlue_cli.verify.run import VerifyRequest, _map_fields

    run = RunRecord({"data": {"maps": ["seg=segmentation:/x"], "map_columns": [], "depth_scale": 1000.0}})
    assert _map_fields(VerifyRequest(tmp_path), run) == {"maps": ("seg=segmentation:/x",), "map_columns": (),
                                                         "depth_scale": 1000.0}
    given = VerifyRequest(tmp_path, maps=("seg=segmentation:/y",), ignore_index=0)
    assert _map_fields(given, run) == {"maps": ("seg=segmentation:/y",), "map_columns": (), "ignore_index": 0,
                                       "depth_scale": 1000.0}
    assert _map_fields(VerifyRequest(tmp_path), RunRecord({})) == {}  # a run.json from before label maps
