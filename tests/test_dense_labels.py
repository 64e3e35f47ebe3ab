"""Label maps: the files (data.label_maps), the three forms owners keep them in (data.dense_labels), their targets
in the dataset, inspect's summary and the config fields. Tiny 16x16 scenes made here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import write_text
from PIL import Image

from mtlue_cli.config import DataConfig
from mtlue_cli.data.dataset import load_dataset
from mtlue_cli.data.images import decode
from mtlue_cli.data.inspect import inspect_dataset
from mtlue_cli.data.label_maps import MapReading, read_map
from mtlue_cli.data.labels import TaskSpec, detect_layout, read_labels
from mtlue_cli.errors import BadFiles, ConfigError, DatasetError, FileProblem

N = 4
TASKS = ("segmentation", "depth", "normal")  # LibMTL's names of NYUv2's tasks
SPEC = TaskSpec(TASKS, (("0", "1", "2"), (), ()), ("segmentation", "depth", "normals"))


def scene(i: int) -> dict[str, np.ndarray]:
    """Image i's pixels and maps: classes 0..2 with void (-1), depths in quarter metres with holes (0), unit
    normals with invalid (zero) pixels."""
    rng = np.random.default_rng(i)
    seg = rng.integers(0, 3, (16, 16))
    seg[rng.random((16, 16)) < 0.1] = -1
    depth = rng.integers(0, 20, (16, 16)) * 0.25  # 0 = invalid
    normals = rng.normal(size=(16, 16, 3))
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    normals[rng.random((16, 16)) < 0.1] = 0
    rgb = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    return {"rgb": rgb, "seg": seg, "depth": depth.astype(np.float32), "normals": normals.astype(np.float32)}


def palette_png(path: Path, seg: np.ndarray) -> Path:
    """A VOC-style palette PNG: pixel value = class index, 255 = void; the palette colours are not the indices."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.where(seg < 0, 255, seg).astype(np.uint8), "P")
    image.putpalette([128, 0, 0, 0, 128, 0, 0, 0, 128] + [224, 224, 192] * 253)
    image.save(path)
    return path


def depth_png(path: Path, depth_m: np.ndarray, scale: float = 1000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.rint(depth_m * scale).astype(np.uint16)).save(path)  # 16-bit, mode I;16
    return path


def save_npy(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, arr)
    return path


def folders_form(tmp: Path) -> DataConfig:
    """(a) JPEGImages-style images with one folder of maps per task (palette PNG, 16-bit mm PNG, .npy)."""
    for i in range(N):
        s = scene(i)
        (tmp / "img").mkdir(exist_ok=True)
        Image.fromarray(s["rgb"]).save(tmp / "img" / f"{i}.png")
        palette_png(tmp / "seg" / f"{i}.png", s["seg"])
        depth_png(tmp / "depth" / f"{i}.png", s["depth"])
        save_npy(tmp / "normal" / f"{i}.npy", s["normals"])
    return DataConfig(tmp / "img", size=8, workers=1, depth_scale=1000,
                      maps=(f"segmentation=segmentation:{tmp / 'seg'}", f"depth=depth:{tmp / 'depth'}",
                            f"normal=normals:{tmp / 'normal'}"))


def columns_form(tmp: Path) -> DataConfig:
    """(b) A labels CSV whose columns hold paths to .npy maps (mtan's float labels with -1 void)."""
    rows = []
    for i in range(N):
        s = scene(i)
        (tmp / "photos").mkdir(parents=True, exist_ok=True)
        Image.fromarray(s["rgb"]).save(tmp / "photos" / f"p{i}.png")
        save_npy(tmp / "maps" / f"s{i}.npy", s["seg"].astype(np.float32))
        save_npy(tmp / "maps" / f"d{i}.npy", s["depth"])
        save_npy(tmp / "maps" / f"n{i}.npy", s["normals"])
        rows.append(f"photos/p{i}.png,maps/s{i}.npy,maps/d{i}.npy,maps/n{i}.npy")
    write_text(tmp / "labels.csv", "path,segmentation,depth,normal\n" + "\n".join(rows) + "\n")
    return DataConfig(tmp, size=8, workers=1,
                      map_columns=("segmentation=segmentation", "depth=depth", "normal=normals"))


def nyuv2_form(tmp: Path) -> DataConfig:
    """(c) mtan / LibMTL NYUv2: float images in [0, 1], float labels (-1 void), depth (H, W, 1), normals (H, W, 3)."""
    for i in range(N):
        s = scene(i)
        save_npy(tmp / "image" / f"{i}.npy", s["rgb"].astype(np.float32) / 255)
        save_npy(tmp / "label" / f"{i}.npy", s["seg"].astype(np.float32))
        save_npy(tmp / "depth" / f"{i}.npy", s["depth"][..., None])
        save_npy(tmp / "normal" / f"{i}.npy", s["normals"])
    return DataConfig(tmp, size=8, workers=1)


# ----------------------------------------------------------------------------- the three forms


def test_three_forms_give_the_same_tasks_and_targets(tmp_path) -> None:
    loaded = []
    for form in (folders_form, columns_form, nyuv2_form):
        (tmp_path / form.__name__).mkdir()
        cfg = form(tmp_path / form.__name__)
        table = read_labels(cfg)
        assert table.spec == SPEC and table.problems == [], form.__name__
        loaded.append(load_dataset(cfg))
    assert [d.table.layout for d in loaded] == ["maps", "csv", "nyuv2"]
    reference = loaded[0]
    assert reference.labels.tolist() == [[0, 0, 0]] * N  # label-map tasks' columns hold 0
    seg, depth, normals = reference.targets(list(range(N)))
    assert seg.dtype == torch.int64 and seg.shape == (N, 8, 8) and depth.shape == (N, 1, 8, 8)
    assert normals.shape == (N, 3, 8, 8) and normals.dtype == torch.float32
    first = scene(0)  # nearest at pixel centres: rows and columns 1, 3, 5, ... of the 16x16 maps
    assert seg[0].tolist() == first["seg"][1::2, 1::2].tolist()
    assert depth[0, 0].tolist() == first["depth"][1::2, 1::2].tolist()
    for other in loaded[1:]:
        assert torch.equal(other.images, reference.images)
        for mine, theirs in zip(other.targets(list(range(N))), reference.targets(list(range(N)))):
            assert torch.allclose(mine, theirs, atol=1e-6)


def test_nyuv2_layout_detected_and_its_float_images_kept(tmp_path) -> None:
    cfg = nyuv2_form(tmp_path)
    assert detect_layout(tmp_path, None) == "nyuv2"
    (tmp_path / "depth" / "0.npy").unlink()  # a missing map names the file it looked for
    table = read_labels(cfg)
    assert [(p.path, p.reason) for p in table.problems] == [("depth/0.npy", "label map of image/0.npy not found")]
    decoded = decode(tmp_path, "image/1.npy")
    assert decoded.source_mode == "npy" and decoded.array.dtype == np.float32
    assert np.array_equal(np.asarray(decoded.image), scene(1)["rgb"])
    only = read_labels(DataConfig(tmp_path, tasks=("normal", "segmentation")))
    assert only.spec.names == ("normal", "segmentation") and only.records[0].maps == ("normal/0.npy", "label/0.npy")
    with pytest.raises(DatasetError, match=r"no NYUv2 task\(s\) \['edges'\]"):
        read_labels(DataConfig(tmp_path, tasks=("edges",)))


def test_classification_and_label_maps_mix_in_one_run(tmp_path) -> None:
    for i in range(N):
        Image.fromarray(scene(i)["rgb"]).save(tmp_path / f"{i}.png")
        palette_png(tmp_path / "masks" / f"{i}.png", scene(i)["seg"])  # inside the root: not images to label
    write_text(tmp_path / "labels.csv", "path,room\n" + "".join(f"{i}.png,{('bath', 'kitchen')[i % 2]}\n"
                                                                for i in range(N)))
    write_text(tmp_path / "masks" / "id2label.json", json.dumps({"0": "floor", "1": "wall", "3": "door"}))
    cfg = DataConfig(tmp_path, size=16, workers=1, maps=(f"seg=segmentation:{tmp_path / 'masks'}",))
    table = read_labels(cfg)
    assert table.spec == TaskSpec(("room", "seg"), (("bath", "kitchen"), ("floor", "wall", "2", "door")),
                                  ("binary", "segmentation"))
    assert table.problems == [] and table.records[1].maps == (None, "masks/1.png")
    dataset = load_dataset(cfg)
    room, seg = dataset.targets([1, 2])
    assert room.tolist() == [1, 0] and seg[1].tolist() == scene(2)["seg"].tolist()
    assert dataset.labels[:, 1].tolist() == [0] * N


def test_cityscapes_names_and_png_maps_listed_in_a_csv(tmp_path) -> None:
    # Cityscapes: leftImg8bit/train/aachen/x_leftImg8bit.png <-> gtFine/train/aachen/x_gtFine_labelIds.png.
    city = tmp_path / "leftImg8bit" / "train" / "aachen"
    city.mkdir(parents=True)
    for i in range(2):
        Image.fromarray(scene(i)["rgb"]).save(city / f"aachen_{i}_leftImg8bit.png")
        palette_png(tmp_path / "gtFine" / "train" / "aachen" / f"aachen_{i}_gtFine_labelIds.png", scene(i)["seg"])
        Image.new("RGB", (16, 16)).save(tmp_path / "gtFine" / "train" / "aachen" / f"aachen_{i}_gtFine_color.png")
    table = read_labels(DataConfig(tmp_path / "leftImg8bit", maps=(f"seg=segmentation:{tmp_path / 'gtFine'}",)))
    assert table.layout == "maps" and table.problems == []
    assert [r.maps[0] for r in table.records] == [
        str(tmp_path / "gtFine" / "train" / "aachen" / f"aachen_{i}_gtFine_labelIds.png") for i in range(2)]
    # PNG maps listed in a CSV under the image root are labels, not images without a label row.
    root = tmp_path / "voc"
    for i in range(2):
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.fromarray(scene(i)["rgb"]).save(root / "JPEGImages" / f"{i}.png")
        palette_png(root / "SegmentationClass" / f"{i}.png", scene(i)["seg"])
    write_text(root / "labels.csv", "path,seg\n" + "".join(f"JPEGImages/{i}.png,SegmentationClass/{i}.png\n"
                                                           for i in range(2)))
    table = read_labels(DataConfig(root, map_columns=("seg=segmentation",)))
    assert table.problems == [] and table.spec.classes == (("0", "1", "2"),)
    # maps in nested folders (a protected folder's maps/seg/<subdir>/...): the id2label.json of their common folder
    nested = tmp_path / "nested"
    for i in range(2):
        (nested / "img" / f"d{i}").mkdir(parents=True)
        Image.fromarray(scene(i)["rgb"]).save(nested / "img" / f"d{i}" / "x.png")
        palette_png(nested / "maps" / "seg" / f"d{i}" / "x.png", scene(i)["seg"])
    write_text(nested / "maps" / "seg" / "id2label.json", '{"0": "floor", "1": "ball", "2": "box", "3": "cone"}')
    write_text(nested / "labels.csv", "path,seg\n" + "".join(f"img/d{i}/x.png,maps/seg/d{i}/x.png\n" for i in range(2)))
    table = read_labels(DataConfig(nested, map_columns=("seg=segmentation",)))
    assert table.spec.classes == (("floor", "ball", "box", "cone"),)


# ----------------------------------------------------------------------------- map files


def test_palette_png_reads_as_indices_never_colours(tmp_path) -> None:
    seg = np.array([[0, 1], [2, -1]])
    path = palette_png(tmp_path / "m.png", seg)
    assert Image.open(path).mode == "P"
    assert read_map(tmp_path, "m.png", "segmentation").tolist() == [[0, 1], [2, -1]]  # 255 -> -1
    # An L mask with 0 as void (--ignore-index 0): 0 is void, the rest stay.
    Image.fromarray(np.array([[0, 5]], dtype=np.uint8)).save(tmp_path / "l.png")
    assert read_map(tmp_path, "l.png", "segmentation", MapReading(ignore_index=0)).tolist() == [[-1, 5]]
    with pytest.raises(FileProblem, match="class index 5 is outside the task's 3 classes"):
        read_map(tmp_path, "l.png", "segmentation", classes=3)


def test_rgb_colour_mask_is_an_error_naming_the_file(tmp_path) -> None:
    Image.new("RGB", (2, 2), (128, 0, 0)).save(tmp_path / "colour.png")
    with pytest.raises(FileProblem, match="RGB colour mask without a palette") as info:
        read_map(tmp_path, "colour.png", "segmentation")
    assert info.value.path == "colour.png"


def test_depth_png_with_scale_and_npy_invalid_values(tmp_path) -> None:
    depth_png(tmp_path / "d.png", np.array([[1.5, 0.0], [0.25, 10.0]]))
    assert Image.open(tmp_path / "d.png").mode.startswith("I;16")
    out = read_map(tmp_path, "d.png", "depth", MapReading(depth_scale=1000))
    assert out.dtype == np.float32 and out.tolist() == [[[1.5, 0.0], [0.25, 10.0]]]
    save_npy(tmp_path / "d.npy", np.array([[np.nan, 2.0], [-1.0, np.inf]], dtype=np.float32))
    assert read_map(tmp_path, "d.npy", "depth").tolist() == [[[0.0, 2.0], [0.0, 0.0]]]  # NaN, <= 0, inf: invalid
    with pytest.raises(FileProblem, match="depth must be one channel"):
        Image.new("RGB", (2, 2)).save(tmp_path / "rgb.png")
        read_map(tmp_path, "rgb.png", "depth")


def test_normals_png_decodes_rgb_and_marks_black_invalid(tmp_path) -> None:
    Image.fromarray(np.array([[[255, 128, 128], [0, 0, 0], [128, 128, 0]]], dtype=np.uint8)).save(tmp_path / "n.png")
    out = read_map(tmp_path, "n.png", "normals")  # (3, 1, 3): rgb / 127.5 - 1, normalised
    x = np.array([1.0, 0.5 / 127.5, 0.5 / 127.5])
    assert out[:, 0, 0] == pytest.approx(x / np.linalg.norm(x), abs=1e-6)
    assert out[:, 0, 1].tolist() == [0.0, 0.0, 0.0]  # black: no normal
    assert out[:, 0, 2] == pytest.approx(np.array([0.5, 0.5, -127.5]) / np.linalg.norm([0.5, 0.5, -127.5]), abs=1e-6)
    save_npy(tmp_path / "n.npy", np.array([[[0.0, 0.0, 2.0], [0.0, 0.0, 0.0]]], dtype=np.float32))  # (H, W, 3)
    assert read_map(tmp_path, "n.npy", "normals")[:, 0].T.tolist() == [[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]


# ----------------------------------------------------------------------------- problems


def test_missing_map_is_an_error_or_a_reported_skip(tmp_path) -> None:
    cfg = folders_form(tmp_path)
    (tmp_path / "seg" / "2.png").unlink()
    table = read_labels(cfg)
    assert len(table.records) == N - 1
    [problem] = table.problems
    assert problem.path == "2.png" and f"expected {tmp_path / 'seg' / '2.png'}" in problem.reason
    with pytest.raises(BadFiles) as info:
        load_dataset(cfg)
    assert [p.path for p in info.value.problems] == ["2.png"]
    dataset = load_dataset(DataConfig(**{**cfg.__dict__, "skip_bad": True}))
    assert len(dataset) == N - 1 and [p.path for p in dataset.skipped] == ["2.png"]


def test_size_mismatch_and_bad_maps_name_the_file(tmp_path) -> None:
    cfg = folders_form(tmp_path)
    palette_png(tmp_path / "seg" / "1.png", np.zeros((16, 20), dtype=np.int64))
    Image.new("RGB", (16, 16), (9, 9, 9)).save(tmp_path / "seg" / "3.png")  # a colour mask
    # The colour mask surfaces while the reader counts the classes, the size mismatch while decoding.
    with pytest.raises(BadFiles) as info:
        load_dataset(cfg)
    assert [p.path for p in info.value.problems] == [str(tmp_path / "seg" / "3.png")]
    assert "colour mask without a palette" in info.value.problems[0].reason
    kept = load_dataset(DataConfig(**{**cfg.__dict__, "skip_bad": True}))
    assert [r.path for r in kept.records] == ["0.png", "2.png"] and len(kept.maps[0]) == 2
    problems = {p.path: p.reason for p in kept.skipped}
    assert set(problems) == {str(tmp_path / "seg" / "1.png"), str(tmp_path / "seg" / "3.png")}
    assert problems[str(tmp_path / "seg" / "1.png")].startswith("label map is 20x16 but its image 1.png is 16x16")
    (tmp_path / "seg" / "3.png").unlink()
    palette_png(tmp_path / "seg" / "3.png", scene(3)["seg"])
    with pytest.raises(BadFiles, match="1 bad image or label map file") as info:
        load_dataset(cfg)
    assert [p.path for p in info.value.problems] == [str(tmp_path / "seg" / "1.png")]


def test_inspect_reports_each_label_map_task(tmp_path) -> None:
    cfg = folders_form(tmp_path)
    palette_png(tmp_path / "seg" / "1.png", np.zeros((8, 8), dtype=np.int64))  # a size mismatch
    report = inspect_dataset(cfg)
    assert report.tasks == [] and report.images == N - 1
    seg, depth, normals = report.dense_tasks
    kept = [scene(i) for i in (0, 2, 3)]
    segs = np.stack([s["seg"] for s in kept])
    assert (seg.name, seg.kind, seg.classes, seg.size_mismatches) == ("segmentation", "segmentation",
                                                                      ["0", "1", "2"], 1)
    assert seg.pixel_counts == [int((segs == c).sum()) for c in range(3)]
    assert seg.invalid_share == pytest.approx((segs < 0).mean())
    depths = np.stack([s["depth"] for s in kept])
    assert depth.value_range == (depths[depths > 0].min(), depths.max()) and depth.pixel_counts == []
    assert depth.invalid_share == pytest.approx((depths == 0).mean())
    assert normals.invalid_share == pytest.approx(np.mean([(s["normals"] == 0).all(-1).mean() for s in kept]))
    as_json = json.loads(json.dumps(report.to_dict()))
    assert as_json["dense_tasks"][1]["value_range"] == list(depth.value_range)
    assert [p["path"] for p in as_json["problems"]] == [str(tmp_path / "seg" / "1.png")]


def test_config_fields_for_label_maps() -> None:
    cfg = DataConfig(Path("."), maps=("seg=segmentation:C:\\data\\masks",), map_columns=("d=depth",),
                     ignore_index=0, depth_scale=256)
    assert cfg.layout == "auto"
    for bad, match in [
        (dict(maps=("seg=colour:./m",)), "--maps 'seg=colour:./m' is not allowed: use a list of task=kind:folder"),
        (dict(maps=("seg=segmentation",)), "--maps 'seg=segmentation' is not allowed"),
        (dict(maps="seg=depth:./d"), "--maps 'seg=depth:./d' is not allowed"),
        (dict(map_columns=("d=depth:./x",)), "--map-columns 'd=depth:./x' is not allowed: use a list of task=kind,"),
        (dict(maps=("a=depth:x", "a=normals:y")), "--maps names task 'a' twice"),
        (dict(maps=("a=depth:x",), map_columns=("a=depth",)), r"task\(s\) \['a'\] given by both"),
        (dict(ignore_index=-2), "--ignore-index -2 is not allowed"),
        (dict(depth_scale=0), "--depth-scale 0 is not allowed: use a number > 0"),
    ]:
        with pytest.raises(ConfigError, match=match):
            DataConfig(Path("."), **bad)


def test_map_columns_need_a_labels_csv(tmp_path) -> None:
    nyuv2_form(tmp_path)
    with pytest.raises(DatasetError, match="--map-columns names columns of a labels CSV"):
        read_labels(DataConfig(tmp_path, map_columns=("d=depth",)))
    with pytest.raises(DatasetError, match="--maps seg=segmentation:nowhere: no folder nowhere"):
        read_labels(DataConfig(tmp_path, maps=("seg=segmentation:nowhere",)))
