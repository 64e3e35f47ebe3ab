"""protect on label-map tasks (issue 28): maps read at the working size, copied byte-identical; the three input
forms; nyuv2 float .npy written back; the labels.csv / run.json / manifest contract `verify` reads."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from mtlue_cli.cli import app
from mtlue_cli.config import DataConfig, ProtectConfig
from mtlue_cli.data.dataset import load_dataset
from mtlue_cli.data.labels import read_labels
from mtlue_cli.demo.scenes import make_scenes
from mtlue_cli.errors import BadFiles, DatasetError, problems_of
from mtlue_cli.models.generator import PerturbationGenerator
from mtlue_cli.models.persistence import load_generator, save_generator
from mtlue_cli.protect import maps as carried
from mtlue_cli.protect.outputs import load_manifest, protected_data_config, read_run
from mtlue_cli.protect.protect import protect_dataset

EPS = 8 / 255
CFG = {"device": "cpu", "workers": 1, "batch_size": 4}


def _generator(cfg: DataConfig, folder: Path) -> Path:
    torch.manual_seed(0)
    tasks, kinds = read_labels(cfg).spec.generator_tasks()
    save_generator(PerturbationGenerator(tasks, task_kinds=kinds, image_size=32, stem="cifar", width=16), folder,
                   method="tap")
    return folder


@pytest.fixture(scope="module")
def voc(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DataConfig, Path]:
    """6 scenes at 32 px, VOC style, read with --map folders beside the class column `count`; and its generator."""
    base = tmp_path_factory.mktemp("voc")
    scenes = make_scenes(base / "scenes", n=6, size=32, seed=1)
    cfg = DataConfig(root=scenes / "images", labels=scenes / "labels.csv", size=32, workers=1, depth_scale=1000,
                     maps=(f"seg=segmentation:{scenes / 'segmentation'}", f"depth=depth:{scenes / 'depth'}",
                           f"normals=normals:{scenes / 'normals'}"))
    return scenes, cfg, _generator(cfg, base / "gen")


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "labels.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_maps_copied_byte_identical_and_the_contract(voc, tmp_path) -> None:
    scenes, cfg, gen = voc
    out = tmp_path / "out"
    report = protect_dataset(load_generator(str(gen)), cfg, out, ProtectConfig(**CFG))
    assert report.complete and report.written == 6 and report.max_linf_255 <= 8
    assert report.protected_tasks == ["count", "seg", "depth", "normals"]
    with (out / "labels.csv").open(newline="") as fh:
        assert next(csv.reader(fh)) == ["path", "count", "seg", "depth", "normals"]
    manifest = load_manifest(out)
    counts = {r["path"]: r["count"] for r in _rows(scenes)}
    for row in _rows(out):
        stem = Path(row["path"]).stem
        assert row["seg"] == f"maps/seg/{stem}.png" and row["depth"] == f"maps/depth/{stem}.png"
        assert row["count"] == counts[row["path"]]  # the class name as written
        for task, folder in (("seg", "segmentation"), ("depth", "depth"), ("normals", "normals")):
            assert (out / row[task]).read_bytes() == (scenes / folder / f"{stem}.png").read_bytes()
        # δ measured on the written file: within ε, and not nothing
        a = np.asarray(Image.open(out / row["path"]).convert("RGB"), np.int16)
        b = np.asarray(Image.open(scenes / "images" / row["path"]).convert("RGB"), np.int16)
        assert 0 < np.abs(a - b).max() <= 8
        entry = manifest[row["path"]]
        assert [m["task"] for m in entry["maps"]] == ["seg", "depth", "normals"]
        seg = entry["maps"][0]
        assert seg["output"] == row["seg"] and Path(seg["source"]).name == f"{stem}.png"
        import hashlib
        assert seg["sha256"] == hashlib.sha256((out / row["seg"]).read_bytes()).hexdigest()

    run = read_run(out)
    assert run.label_tasks["seg"]["kind"] == "segmentation" and run.label_tasks["depth"] == {"kind": "depth"}
    assert run.raw["tasks"]["normals"] == {"kind": "normals"} and isinstance(run.raw["tasks"]["count"], list)
    assert run.data["depth_scale"] == 1000 and run.data["ignore_index"] == 255
    assert json.loads((out / "maps/seg/id2label.json").read_text())["0"] == read_labels(cfg).spec.classes[1][0]

    # OUT read back as verify will: the csv reader with the map columns of run.json, maps equal to the originals'
    back_cfg = protected_data_config(out, workers=1)
    assert back_cfg.map_columns == ("seg=segmentation", "depth=depth", "normals=normals")
    assert back_cfg.size == 32 and back_cfg.depth_scale == 1000 and back_cfg.layout == "csv"
    back, orig = load_dataset(back_cfg), load_dataset(cfg)
    assert back.spec == orig.spec
    order = [[r.path for r in orig.records].index(r.path) for r in back.records]
    for k in (1, 2, 3):
        assert torch.equal(back.maps[k], orig.maps[k][order])


def test_map_columns_mixed_with_a_class_column(voc, tmp_path) -> None:
    scenes, _, gen = voc
    labels = tmp_path / "labels.csv"
    with (scenes / "labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    with labels.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "count", "seg", "depth", "normals"])
        for r in rows:
            n = r["path"]
            w.writerow([f"images/{n}", r["count"], f"segmentation/{n}", f"depth/{n}", f"normals/{n}"])
    cfg = DataConfig(root=scenes, labels=labels, size=32, workers=1, depth_scale=1000,
                     map_columns=("seg=segmentation", "depth=depth", "normals=normals"))
    out = tmp_path / "out"
    report = protect_dataset(load_generator(str(gen)), cfg, out, ProtectConfig(**CFG))
    assert report.complete and report.written == 6
    row = _rows(out)[0]
    assert row["path"] == "images/0000.png" and row["seg"] == "maps/seg/images/0000.png"
    assert (out / row["normals"]).read_bytes() == (scenes / "normals/0000.png").read_bytes()
    assert load_dataset(protected_data_config(out, workers=1)).maps[1] is not None


def test_nyuv2_float_npy_round_trip(tmp_path) -> None:
    src = make_scenes(tmp_path / "nyu", n=6, size=32, layout="nyuv2")
    cfg = DataConfig(root=src, layout="nyuv2", size=32, workers=1)
    gen = _generator(cfg, tmp_path / "gen")
    out = tmp_path / "out"
    report = protect_dataset(load_generator(str(gen)), cfg, out, ProtectConfig(**CFG))
    assert report.complete and report.written == 6 and report.max_linf_255 <= 8
    for i in range(6):
        a, b = np.load(out / f"image/{i}.npy"), np.load(src / f"image/{i}.npy")
        assert a.dtype == b.dtype == np.float32 and a.shape == b.shape
        assert 0 < np.abs(a.astype(np.float64) - b).max() <= EPS + 1e-6 and a.min() >= 0 and a.max() <= 1
        for folder in ("label", "depth", "normal"):
            assert (out / folder / f"{i}.npy").read_bytes() == (src / folder / f"{i}.npy").read_bytes()
    row = _rows(out)[0]
    assert row == {"path": "image/0.npy", "segmentation": "label/0.npy", "depth": "depth/0.npy",
                   "normal": "normal/0.npy"}
    # OUT is a NYUv2 folder and an mtlue csv folder
    as_nyu = load_dataset(DataConfig(root=out, layout="nyuv2", size=32, workers=1))
    as_csv = load_dataset(protected_data_config(out, workers=1))
    assert as_nyu.spec == as_csv.spec == load_dataset(cfg).spec
    assert torch.equal(as_nyu.maps[1], as_csv.maps[1])


def test_a_map_of_the_wrong_size_is_named(voc, tmp_path) -> None:
    scenes, cfg, gen = voc
    import shutil

    data = tmp_path / "scenes"
    shutil.copytree(scenes, data)
    Image.open(data / "segmentation/0002.png").resize((16, 16), Image.Resampling.NEAREST).save(
        data / "segmentation/0002.png")
    cfg = DataConfig(root=data / "images", labels=data / "labels.csv", size=32, workers=1, depth_scale=1000,
                     maps=(f"seg=segmentation:{data / 'segmentation'}", f"depth=depth:{data / 'depth'}"))
    gen = _generator(cfg, tmp_path / "gen")
    with pytest.raises(BadFiles) as err:
        protect_dataset(load_generator(str(gen)), cfg, tmp_path / "out", ProtectConfig(**CFG))
    (problem,) = problems_of(err.value)
    assert problem.path.endswith("segmentation/0002.png") and "16x16" in problem.reason and "0002.png" in problem.reason

    skip = DataConfig(**{**cfg.__dict__, "skip_bad": True})
    report = protect_dataset(load_generator(str(gen)), skip, tmp_path / "out2", ProtectConfig(**CFG))
    assert not report.complete and report.written == 5
    (failed,) = report.failed
    assert failed.source == "0002.png" and "segmentation/0002.png" in failed.reason
    assert "0002.png" not in {r["path"] for r in _rows(tmp_path / "out2")}
    assert not (tmp_path / "out2/maps/seg/0002.png").exists()


def test_resume_redoes_an_image_whose_map_copy_is_gone(voc, tmp_path) -> None:
    _, cfg, gen = voc
    out = tmp_path / "out"
    protect_dataset(load_generator(str(gen)), cfg, out, ProtectConfig(**CFG))
    (out / "maps/depth/0001.png").unlink()
    report = protect_dataset(load_generator(str(gen)), cfg, out, ProtectConfig(**CFG, resume=True))
    assert report.written == 1 and report.resumed == 5 and report.complete
    assert (out / "maps/depth/0001.png").is_file()
    assert len(load_manifest(out)["0001.png"]["maps"]) == 3


def test_a_task_of_another_kind_is_refused(voc) -> None:
    _, cfg, _ = voc
    spec = read_labels(cfg).spec
    tasks, kinds = spec.generator_tasks()
    with pytest.raises(DatasetError, match="'depth' is depth in the labels but normals"):
        carried.dense_tasks(spec, "csv", tasks, {**kinds, "depth": "normals"})
    with pytest.raises(DatasetError, match="segmentation task 'seg' has classes"):
        carried.dense_tasks(spec, "csv", {**tasks, "seg": ["x", "y"]}, kinds)


def test_cli_protect_takes_the_map_options(voc, tmp_path) -> None:
    scenes, _, gen = voc
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "protect", str(scenes / "images"), "-l", str(scenes / "labels.csv"), "-g", str(gen), "-o", str(out),
        "--map", f"seg=segmentation:{scenes / 'segmentation'}", "--map", f"depth=depth:{scenes / 'depth'}",
        "--map", f"normals=normals:{scenes / 'normals'}", "--depth-scale", "1000", "--ignore-index", "255",
        "--device", "cpu", "--workers", "1", "-q"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert read_run(out).data["depth_scale"] == 1000
    assert _rows(out)[0]["normals"] == "maps/normals/0000.png"
