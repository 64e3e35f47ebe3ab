"""The synthetic dense scene set: layouts, label conventions, determinism and the geometry its depth comes from."""

from __future__ import annotations

import csv
import itertools
import json

import numpy as np
import pytest
from PIL import Image

from mtlue_cli.demo.scenes import CLASSES, COUNTS, VOID, make_scenes, render_scene


def test_voc_layout_and_conventions(tmp_path):
    out = make_scenes(tmp_path / "s", n=6, size=32, seed=3)
    rows = list(csv.DictReader((out / "labels.csv").open()))
    assert [r["path"] for r in rows] == [f"{i:04d}.png" for i in range(6)]
    assert {r["count"] for r in rows} <= set(COUNTS)
    assert json.loads((out / "segmentation" / "id2label.json").read_text()) == {str(i): c for i, c in enumerate(CLASSES)}
    for r in rows:
        image = Image.open(out / "images" / r["path"])
        assert image.mode == "RGB" and image.size == (32, 32)
        seg = Image.open(out / "segmentation" / r["path"])
        assert seg.mode == "P"  # read with np.array, never .convert(): the values are the class indices
        labels = np.array(seg)
        assert set(np.unique(labels)) <= set(range(len(CLASSES))) | {VOID}
        assert (labels == 0).any() and ((labels > 0) & (labels != VOID)).any()
        depth = np.array(Image.open(out / "depth" / r["path"]))
        assert depth.dtype == np.uint16 and depth.max() > 1000  # millimetres: metres-deep rooms
        normals = np.array(Image.open(out / "normals" / r["path"])).astype(float) / 127.5 - 1
        valid = depth > 0
        assert np.allclose(np.linalg.norm(normals[valid], axis=-1), 1, atol=0.03)
        assert np.allclose(normals[~valid], 0, atol=0.01)
    assert not list(out.rglob(".*"))  # no temporaries left behind


def test_void_lies_on_object_borders_only():
    scene = render_scene(np.random.default_rng(0), 48)
    label = scene["label"]
    void = label == VOID
    assert void.any()
    inner = label.copy()
    inner[void] = 1  # any object class: a void pixel must touch an object pixel or be one
    padded = np.pad(label, 1, mode="edge")
    neighbours = [padded[1 + dy : 49 + dy, 1 + dx : 49 + dx] for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0))]
    next_to_other = np.zeros_like(void)
    for n in neighbours:
        next_to_other |= n != label
    assert next_to_other[void].all()


def test_seeded_and_extendable(tmp_path):
    a = make_scenes(tmp_path / "a", n=3, size=16, seed=1)
    b = make_scenes(tmp_path / "b", n=5, size=16, seed=1)
    c = make_scenes(tmp_path / "c", n=3, size=16, seed=2)
    for name in ("images/0002.png", "segmentation/0002.png", "depth/0002.png", "normals/0002.png"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "images/0000.png").read_bytes() != (c / "images/0000.png").read_bytes()


def test_depth_follows_placement_and_occlusion():
    for seed in range(5):
        s = render_scene(np.random.default_rng(seed), 64)
        depth, label = s["depth"], s["label"]
        background = (label == 0) & (depth > 0)
        # The floor comes nearer row by row towards the bottom; the wall above it is farther than any floor row.
        rows = [np.median(depth[i][background[i]]) for i in range(32, 64) if background[i].sum() > 4]
        assert all(a >= b - 1e-4 for a, b in itertools.pairwise(rows))
        objects = (label > 0) & (label != VOID) & (depth > 0)
        assert depth[objects].max() < depth[background].max()  # objects stand in front of the wall


def test_nyuv2_layout(tmp_path):
    out = make_scenes(tmp_path / "n", n=2, size=16, layout="nyuv2")
    image, label = np.load(out / "image/1.npy"), np.load(out / "label/1.npy")
    depth, normal = np.load(out / "depth/1.npy"), np.load(out / "normal/1.npy")
    assert image.shape == (16, 16, 3) and image.dtype == np.float32 and 0 <= image.min() and image.max() <= 1
    assert label.shape == (16, 16) and label.dtype == np.int64 and set(np.unique(label)) <= {-1, 0, 1, 2, 3}
    assert depth.shape == (16, 16, 1) and depth.dtype == np.float32 and depth.max() > 1
    assert normal.shape == (16, 16, 3) and normal.dtype == np.float32
    assert not (out / "labels.csv").exists()
    with pytest.raises(ValueError, match="layout"):
        make_scenes(tmp_path / "x", n=1, layout="coco")


def test_without_normals(tmp_path):
    out = make_scenes(tmp_path / "s", n=1, size=16, normals=False)
    assert not (out / "normals").exists() and (out / "depth/0000.png").is_file()
