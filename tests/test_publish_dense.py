"""publish on label-map tasks (issue 28): image + map pairs that the real `datasets` loads as Image columns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mtlue_cli.config import DataConfig, ProtectConfig
from mtlue_cli.data.labels import read_labels
from mtlue_cli.demo.scenes import make_scenes
from mtlue_cli.hub.publish import PublishConfig, PublishRefused, publish_dataset
from mtlue_cli.models.generator import PerturbationGenerator
from mtlue_cli.models.persistence import load_generator, save_generator
from mtlue_cli.protect.protect import protect_dataset

CFG = {"device": "cpu", "workers": 1, "batch_size": 4}


def _protect(cfg: DataConfig, base: Path) -> Path:
    torch.manual_seed(0)
    tasks, kinds = read_labels(cfg).spec.generator_tasks()
    save_generator(PerturbationGenerator(tasks, task_kinds=kinds, image_size=32, width=16), base / "gen", method="tap")
    out = base / "prot"
    assert protect_dataset(load_generator(str(base / "gen")), cfg, out, ProtectConfig(**CFG)).complete
    return out


def test_image_and_map_pairs_load_as_image_columns(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    scenes = make_scenes(tmp_path / "scenes", n=6, size=32, seed=2, normals=False)
    cfg = DataConfig(root=scenes / "images", labels=scenes / "labels.csv", size=32, workers=1, depth_scale=1000,
                     maps=(f"seg=segmentation:{scenes / 'segmentation'}", f"depth=depth:{scenes / 'depth'}"))
    out = _protect(cfg, tmp_path)
    report = publish_dataset(out, PublishConfig(repo_id="org/scenes", dry_run=True), tmp_path / "upload")
    assert report.train_images == 6
    header = (report.folder / "train/metadata.csv").read_text().splitlines()[0]
    assert header == "file_name,count,seg_file_name,depth_file_name"
    ds = datasets.load_dataset("imagefolder", data_dir=str(report.folder), cache_dir=str(tmp_path / "hf-cache"))["train"]
    assert isinstance(ds.features["image"], datasets.Image) and isinstance(ds.features["seg"], datasets.Image)
    assert isinstance(ds.features["depth"], datasets.Image) and ds.num_rows == 6
    for row in ds:  # each map as it was: the palette indices and the 16-bit depths, pixel for pixel
        stem = next(p.stem for p in (scenes / "images").glob("*.png")
                    if np.array_equal(np.asarray(Image.open(out / f"{p.stem}.png")), np.asarray(row["image"])))
        assert np.array_equal(np.asarray(row["seg"]), np.asarray(Image.open(scenes / f"segmentation/{stem}.png")))
        assert np.array_equal(np.asarray(row["depth"]), np.asarray(Image.open(scenes / f"depth/{stem}.png")))
    card = report.card.read_text()
    assert "`seg`: a segmentation label map per image" in card and "`depth`: a depth label map" in card
    assert '"image-segmentation"' in card and '"depth-estimation"' in card

    # a map changed after protect is refused, as an image is
    Image.new("P", (32, 32)).save(out / "maps/seg/0001.png")
    with pytest.raises(PublishRefused, match=r"changed after .* maps/seg/0001.png"):
        publish_dataset(out, PublishConfig(repo_id="org/scenes", dry_run=True), tmp_path / "upload2")


def test_npy_images_are_refused_with_what_to_do(tmp_path: Path) -> None:
    src = make_scenes(tmp_path / "nyu", n=4, size=32, layout="nyuv2", normals=False)
    out = _protect(DataConfig(root=src, layout="nyuv2", size=32, workers=1), tmp_path)
    with pytest.raises(PublishRefused, match="hf upload"):
        publish_dataset(out, PublishConfig(repo_id="org/nyu", dry_run=True), tmp_path / "upload")
