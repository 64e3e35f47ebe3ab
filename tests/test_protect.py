"""protect_dataset: native size, mirrored tree, L-inf budget on the written files, metadata, resume."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mtlue_cli.config import DataConfig, ProtectConfig
from mtlue_cli.data.dataset import split_indices
from mtlue_cli.data.images import Decoded, compose, open_image
from mtlue_cli.data.labels import read_labels
from mtlue_cli.errors import ConfigError, DatasetError
from mtlue_cli.models.generator import PerturbationGenerator
from mtlue_cli.models.persistence import load_generator, save_generator
from mtlue_cli.protect.protect import protect_dataset

TASKS = {"shape": ["a", "b", "c"], "size": ["s", "l"]}
CFG = dict(device="cpu", workers=1, batch_size=4)


@pytest.fixture(scope="module")
def gen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("gen") / "tiny-gen"
    save_generator(PerturbationGenerator(tasks=TASKS, image_size=16), folder, method="tap")
    return folder


@pytest.fixture(scope="module")
def loaded(gen_dir: Path):
    return load_generator(str(gen_dir))


def _noise(size: tuple[int, int], mode: str, seed: int) -> Image.Image:
    w, h = size
    rng = np.random.default_rng(seed)
    if mode == "L":
        return Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L")
    if mode == "RGBA":
        return Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA")
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def make_dataset(tmp_path: Path, files: list[tuple], name: str = "data") -> tuple[Path, Path]:
    """files: (relpath, (w, h), mode[, shape, size]) -> (root, labels.csv outside the root)."""
    root = tmp_path / name
    lines = ["path,shape,size"]
    for i, spec in enumerate(files):
        rel, size, mode = spec[:3]
        shape = spec[3] if len(spec) > 3 else "abc"[i % 3]
        sz = spec[4] if len(spec) > 4 else "sl"[i % 2]
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        _noise(size, mode, i + 7).save(path)
        lines.append(f"{rel},{shape},{sz}")
    labels = tmp_path / f"{name}-labels.csv"
    labels.write_text("\n".join(lines) + "\n")
    return root, labels


def run(loaded, root: Path, labels: Path, out: Path, skip_bad: bool = False, **cfg):
    data = DataConfig(root=root, labels=labels, skip_bad=skip_bad)
    return protect_dataset(loaded, data, out, ProtectConfig(**{**CFG, **cfg}))


def _manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines() if line.strip()]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- geometry and names


def test_odd_sizes_kept_and_tree_mirrored(tmp_path: Path, loaded) -> None:
    files = [("land.png", (23, 17), "RGB"), ("sub/deep/port.jpg", (17, 23), "RGB"), ("sub/sq.png", (19, 19), "RGB")]
    root, labels = make_dataset(tmp_path, files)
    out = tmp_path / "out"
    report = run(loaded, root, labels, out)
    assert report.written == 3 and not report.failed
    expected = {"land.png": (23, 17), "sub/deep/port.png": (17, 23), "sub/sq.png": (19, 19)}
    for rel, size in expected.items():
        with Image.open(out / rel) as im:
            assert im.size == size
            assert im.format == "PNG"
    assert not (out / "sub/deep/port.jpg").exists()
    images = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.suffix in (".png", ".jpg"))
    assert images == sorted(expected)


# ----------------------------------------------------------------------------- the L-inf budget


def test_written_files_within_epsilon_random_cases(tmp_path: Path, loaded) -> None:
    rng = np.random.default_rng(1234)
    files = []
    for i in range(10):
        size = (int(rng.integers(16, 41)), int(rng.integers(16, 41)))
        mode = ("RGB", "L", "RGBA")[i % 3]
        files.append((f"case{i}.png", size, mode))
    root, labels = make_dataset(tmp_path, files)
    out = tmp_path / "out"
    report = run(loaded, root, labels, out)
    assert report.written == 10
    assert round(report.epsilon_255) == 8
    assert report.max_linf_255 <= 8
    moved = 0
    for rel, size, mode in files:
        original = np.asarray(open_image(root / rel).image).astype(int)
        with Image.open(out / rel) as im:
            assert im.size == size
            back = np.asarray(im.convert("L" if mode == "L" else "RGB")).astype(int)
        diff = np.abs(back - original)
        assert diff.max() <= 8, (rel, mode, size, diff.max())
        moved += int(diff.max() > 0)
    assert moved > 0, "the generator changed nothing: the test would be vacuous"
    entries = _manifest(out)
    assert len(entries) == 10
    assert all(e["status"] == "ok" and e["linf_255"] <= 8 for e in entries)


def _decoded(array: np.ndarray) -> Decoded:
    mode = "L" if array.ndim == 2 else "RGB"
    return Decoded(Image.fromarray(array.astype(np.uint8), mode), None, mode, False, {})


def test_compose_rounds_not_floors() -> None:
    rgb = np.full((1, 2, 3), 100, np.uint8)
    plus = compose(_decoded(rgb), np.full((3, 1, 2), 0.6, np.float32))
    minus = compose(_decoded(rgb), np.full((3, 1, 2), -0.6, np.float32))
    assert plus.dtype == np.uint8 and (plus == 101).all()
    assert (minus == 99).all()
    grey = np.full((2, 2), 100, np.uint8)
    assert (compose(_decoded(grey), np.full((3, 2, 2), 0.6, np.float32)) == 101).all()
    assert (compose(_decoded(grey), np.full((3, 2, 2), -0.6, np.float32)) == 99).all()


def test_compose_clips_to_uint8_range() -> None:
    pixels = np.array([[[250, 3, 128]]], np.uint8)
    delta = np.array([10.0, -10.0, 0.4], np.float32).reshape(3, 1, 1)
    assert compose(_decoded(pixels), delta).tolist() == [[[255, 0, 128]]]


# ----------------------------------------------------------------------------- modes, alpha, originals


def test_alpha_reattached_and_grey_stays_grey(tmp_path: Path, loaded) -> None:
    root, labels = make_dataset(tmp_path, [("rgba.png", (21, 18), "RGBA"), ("grey.png", (18, 21), "L")])
    out = tmp_path / "out"
    run(loaded, root, labels, out)
    with Image.open(root / "rgba.png") as src, Image.open(out / "rgba.png") as dst:
        assert dst.mode == "RGBA"
        assert dst.getchannel("A").tobytes() == src.getchannel("A").tobytes()
    with Image.open(out / "grey.png") as dst:
        assert dst.mode == "L"
    by_source = {e["source"]: e for e in _manifest(out)}
    assert by_source["rgba.png"]["alpha_kept"] is True
    assert by_source["grey.png"]["mode"] == "L"


def test_originals_untouched(tmp_path: Path, loaded) -> None:
    files = [("a.png", (20, 16), "RGB"), ("x/b.jpg", (16, 20), "RGB"), ("c.png", (17, 17), "RGBA")]
    root, labels = make_dataset(tmp_path, files)
    before = {p: _sha(p) for p in [*root.rglob("*"), labels] if p.is_file()}
    run(loaded, root, labels, tmp_path / "out", metadata="keep-all", tag_no_ai=True)
    after = {p: _sha(p) for p in [*root.rglob("*"), labels] if p.is_file()}
    assert after == before


# ----------------------------------------------------------------------------- output folder checks


def test_out_inside_or_equal_to_input_refused(tmp_path: Path, loaded) -> None:
    root, labels = make_dataset(tmp_path, [("a.png", (16, 16), "RGB"), ("b.png", (16, 16), "RGB")])
    for out in (root, root / "protected", root / "x" / "y"):
        with pytest.raises(ConfigError, match="inside"):
            run(loaded, root, labels, out)
    assert not (root / "protected").exists()


def test_non_empty_out_needs_resume_or_overwrite(tmp_path: Path, loaded) -> None:
    root, labels = make_dataset(tmp_path, [("a.png", (16, 16), "RGB"), ("b.png", (16, 16), "RGB")])
    out = tmp_path / "out"
    out.mkdir()
    (out / "something.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        run(loaded, root, labels, out)
    assert run(loaded, root, labels, out, overwrite=True).written == 2


# ----------------------------------------------------------------------------- resume


def test_resume_after_crash(tmp_path: Path, loaded) -> None:
    files = [(f"d{i % 2}/img{i}.png", (16 + i, 20), "RGB") for i in range(6)]
    root, labels = make_dataset(tmp_path, files)
    out = tmp_path / "out"
    run(loaded, root, labels, out)
    first = {rel: (out / rel).read_bytes() for rel, *_ in files}
    entries = _manifest(out)
    deleted = entries[0]["output"]
    cut = entries[-1]["source"]
    assert deleted != cut
    (out / deleted).unlink()
    text = (out / "manifest.jsonl").read_text()
    last = text.rstrip("\n").rsplit("\n", 1)[-1]
    (out / "manifest.jsonl").write_text(text[: len(text) - len(last) // 2 - 1])  # half the last line, no newline

    report = run(loaded, root, labels, out, resume=True)
    assert report.written == 2 and report.resumed == 4 and not report.failed
    assert {rel: (out / rel).read_bytes() for rel, *_ in files} == first
    assert len(list((out / "labels.csv").read_text().splitlines())) == 1 + 6


def test_resume_repairs_cut_manifest_line(tmp_path: Path, loaded) -> None:
    files = [(f"img{i}.png", (16, 16), "RGB") for i in range(4)]
    root, labels = make_dataset(tmp_path, files)
    out = tmp_path / "out"
    run(loaded, root, labels, out)
    text = (out / "manifest.jsonl").read_text()
    last = text.rstrip("\n").rsplit("\n", 1)[-1]
    (out / "manifest.jsonl").write_text(text[: len(text) - len(last) // 2 - 1])
    run(loaded, root, labels, out, resume=True)
    # A second resume right after must find every file done.
    report = run(loaded, root, labels, out, resume=True)
    assert report.resumed == 4 and report.written == 0


# ----------------------------------------------------------------------------- bad inputs


def test_corrupt_image_skipped_and_reported(tmp_path: Path, loaded) -> None:
    root, labels = make_dataset(tmp_path, [("good1.png", (16, 16), "RGB"), ("bad.png", (16, 16), "RGB"),
                                           ("good2.png", (18, 16), "RGB")])
    (root / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    out = tmp_path / "out"
    report = run(loaded, root, labels, out, skip_bad=True)
    assert [f.source for f in report.failed] == ["bad.png"]
    assert report.failed[0].reason
    assert report.written == 2
    assert (out / "good1.png").is_file() and (out / "good2.png").is_file() and not (out / "bad.png").exists()
    failed = [e for e in _manifest(out) if e["status"] == "failed"]
    assert [e["source"] for e in failed] == ["bad.png"] and failed[0]["reason"]
    assert "bad.png" not in (out / "labels.csv").read_text()


def test_corrupt_image_without_skip_bad_raises(tmp_path: Path, loaded) -> None:
    root, labels = make_dataset(tmp_path, [("good1.png", (16, 16), "RGB"), ("bad.png", (16, 16), "RGB")])
    (root / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(DatasetError):
        run(loaded, root, labels, tmp_path / "out", skip_bad=False)


def test_unknown_label_value_names_vocabulary(tmp_path: Path, loaded) -> None:
    root, labels = make_dataset(tmp_path, [("a.png", (16, 16), "RGB", "a", "s"), ("b.png", (16, 16), "RGB", "zebra", "l")])
    with pytest.raises(DatasetError) as info:
        run(loaded, root, labels, tmp_path / "out")
    message = str(info.value)
    assert "zebra" in message and "shape" in message
    assert "['a', 'b', 'c']" in message


def test_class_indices_accepted_for_named_vocabulary(tmp_path: Path, loaded) -> None:
    # "2" is the index of "c" and "0" of "s": the same deltas as the names themselves.
    files = [("a.png", (16, 16), "RGB", "c", "s"), ("b.png", (16, 16), "RGB", "a", "l")]
    by_name = run(loaded, *make_dataset(tmp_path, files), tmp_path / "names")
    root, labels = make_dataset(tmp_path, [("a.png", (16, 16), "RGB", "2", "0"), ("b.png", (16, 16), "RGB", "0", "1")], "idx")
    by_index = run(loaded, root, labels, tmp_path / "indices")
    assert by_name.written == by_index.written == 2
    for name in ("a.png", "b.png"):
        assert _sha(tmp_path / "names" / name) == _sha(tmp_path / "indices" / name)
    root, labels = make_dataset(tmp_path, [("a.png", (16, 16), "RGB", "3", "s"), ("b.png", (16, 16), "RGB", "a", "l")], "bad")
    with pytest.raises(DatasetError, match=r"\['3'\].*\['a', 'b', 'c'\] \(or their indices 0-2\)"):
        run(loaded, root, labels, tmp_path / "bad-out")


def test_numeric_vocabulary_takes_no_indices(tmp_path: Path) -> None:
    # Classes named "1" and "2": a "0" is not silently read as index 0.
    folder = tmp_path / "gen"
    save_generator(PerturbationGenerator(tasks={"grade": ["1", "2"]}, image_size=16), folder, method="tap")
    root = tmp_path / "data"
    root.mkdir()
    _noise((16, 16), "RGB", 0).save(root / "a.png")
    _noise((16, 16), "RGB", 1).save(root / "b.png")
    labels = tmp_path / "labels.csv"
    labels.write_text("path,grade\na.png,0\nb.png,1\n")
    with pytest.raises(DatasetError, match=r"\['0'\].*\['1', '2'\]\. Fit"):
        run(load_generator(str(folder)), root, labels, tmp_path / "out")


def test_partial_labels_leave_missing_tasks_unprotected(tmp_path: Path, loaded) -> None:
    files = [("a.png", (16, 16), "RGB", "c", "s"), ("b.png", (16, 16), "RGB", "a", "l")]
    root, labels = make_dataset(tmp_path, files)
    only_shape = tmp_path / "shape-only.csv"
    only_shape.write_text("path,shape\na.png,c\nb.png,a\n")
    report = run(loaded, root, only_shape, tmp_path / "out")
    assert report.written == 2 and report.protected_tasks == ["shape"] and report.unprotected_tasks == ["size"]
    assert any("lack task(s) ['size']" in w and "NOT protected" in w for w in report.warnings)
    # The delta is the generator's with the label-free mean embedding for `size` (method-spec §2.4).
    x = torch.from_numpy(np.array(_noise((16, 16), "RGB", 7))).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        expected = loaded.model(x, torch.tensor([[2, 0]]), protect=["shape"])[0]
        both = loaded.model(x, torch.tensor([[2, 0]]))[0]
    written = torch.from_numpy(np.array(Image.open(tmp_path / "out" / "a.png"))).permute(2, 0, 1).float()
    inside = (x[0] > 9 / 255) & (x[0] < 246 / 255)  # pixels the uint8 range did not clip
    delta = (written / 255 - x[0])[inside]
    assert torch.allclose(delta, expected[inside], atol=0.51 / 255)
    assert not torch.allclose(delta, both[inside], atol=0.51 / 255)
    none = tmp_path / "none.csv"
    none.write_text("path,colour\na.png,red\nb.png,blue\n")
    with pytest.raises(DatasetError, match="none of the generator's tasks"):
        run(loaded, root, none, tmp_path / "out2")


# ----------------------------------------------------------------------------- records


def test_labels_and_run_json(tmp_path: Path, loaded, gen_dir: Path) -> None:
    files = [("p/one.jpg", (16, 18), "RGB", "c", "l"), ("two.png", (18, 16), "RGB", "a", "s")]
    root, labels = make_dataset(tmp_path, files)
    out = tmp_path / "out"
    run(loaded, root, labels, out)
    rows = (out / "labels.csv").read_text().splitlines()
    assert rows[0] == "path,shape,size"
    assert sorted(rows[1:]) == ["p/one.png,c,l", "two.png,a,s"]
    # The rewritten labels point at the written files.
    for row in rows[1:]:
        assert (out / row.split(",")[0]).is_file()
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["generator"]["sha256"] == hashlib.sha256((gen_dir / "model.safetensors").read_bytes()).hexdigest()
    assert run_json["generator"]["sha256"] == loaded.sha256
    assert run_json["epsilon"] == pytest.approx(8 / 255)
    assert run_json["generator"]["method"] == "tap"


def test_holdout_matches_split_indices(tmp_path: Path, loaded) -> None:
    files = [(f"h{i}.png", (16, 16), "RGB") for i in range(12)]
    root, labels = make_dataset(tmp_path, files)
    out = tmp_path / "out"
    report = run(loaded, root, labels, out, holdout=0.5, seed=3)
    table = read_labels(DataConfig(root=root, labels=labels))
    train, test = split_indices(table.records, 0.5, 3)
    held = {table.records[i].path for i in test}
    kept = {table.records[i].path for i in train}
    assert held and kept
    assert report.held_out == len(held) and report.written == len(kept)
    written = {p.relative_to(out).as_posix() for p in out.rglob("*.png")}
    assert written == kept
    assert set(json.loads((out / "run.json").read_text())["held_out"]) == held


# ----------------------------------------------------------------------------- metadata


def _exif_jpeg(path: Path) -> None:
    exif = Image.Exif()
    exif[0x013B] = "Ada Artist"
    exif[0x8298] = "(c) Ada"
    exif[0x010F] = "CameraMaker"
    gps = exif.get_ifd(0x8825)
    gps[1] = "N"
    gps[2] = (1.0, 2.0, 3.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    _noise((20, 16), "RGB", 5).save(path, exif=exif.tobytes(), quality=95)
    with Image.open(path) as im:  # the fixture really carries GPS
        assert im.getexif().get_ifd(0x8825)


def test_metadata_keep_safe_strip_and_no_ai_tag(tmp_path: Path, loaded) -> None:
    root, labels = make_dataset(tmp_path, [("other.png", (16, 16), "RGB")])
    _exif_jpeg(root / "photo.jpg")
    labels.write_text(labels.read_text() + "photo.jpg,b,l\n")

    run(loaded, root, labels, tmp_path / "safe", metadata="keep-safe", tag_no_ai=True)
    with Image.open(tmp_path / "safe" / "photo.png") as im:
        exif = im.getexif()
        assert exif.get(0x013B) == "Ada Artist" and exif.get(0x8298) == "(c) Ada"
        assert 0x8825 not in exif and not exif.get_ifd(0x8825)
        assert 0x010F not in exif
        assert "DMI-PROHIBITED-AIMLTRAINING" in json.dumps({k: str(v) for k, v in im.info.items()})

    run(loaded, root, labels, tmp_path / "strip")
    with Image.open(tmp_path / "strip" / "photo.png") as im:
        assert "exif" not in im.info and len(im.getexif()) == 0
        assert "DMI-PROHIBITED-AIMLTRAINING" not in json.dumps({k: str(v) for k, v in im.info.items()})


# ----------------------------------------------------------------------------- CLI


def test_cli_protect_exit_codes(tmp_path: Path, gen_dir: Path) -> None:
    from typer.testing import CliRunner

    from mtlue_cli.cli import app

    root, labels = make_dataset(tmp_path, [("a.png", (16, 16), "RGB"), ("b.png", (17, 19), "RGB")])
    runner = CliRunner()
    base = ["protect", str(root), "--labels", str(labels), "--generator", str(gen_dir), "--device", "cpu", "-q"]
    result = runner.invoke(app, [*base, "--out", str(tmp_path / "out1")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out1" / "b.png").is_file()

    (root / "b.png").write_bytes(b"not an image at all")
    result = runner.invoke(app, [*base, "--out", str(tmp_path / "out2"), "--skip-bad"])
    assert result.exit_code == 3, result.output
    assert "b.png" in result.output

    result = runner.invoke(app, [*base, "--out", str(root / "inside")])
    assert result.exit_code == 2, result.output


# ----------------------------------------------------------------------------- images without a label row


def test_unlabelled_images_stop_protect_in_one_line_or_are_listed_with_skip_bad(tmp_path: Path, loaded) -> None:
    root, labels = make_dataset(tmp_path, [("a.png", (16, 16), "RGB"), ("b.png", (16, 16), "RGB")])
    for i in range(7):
        _noise((16, 16), "RGB", 100 + i).save(root / f"x{i}.png")
    with pytest.raises(DatasetError) as info:
        run(loaded, root, labels, tmp_path / "out")
    message = str(info.value)
    assert "\n" not in message and message.startswith("7 files: image has no label row")
    assert "(e.g. x0.png, x1.png, x2.png, x3.png, x4.png ...)" in message and "--skip-bad" in message
    assert not (tmp_path / "out").exists()  # stopped before any work

    report = run(loaded, root, labels, tmp_path / "out", skip_bad=True)
    assert report.written == 2 and not report.failed and not report.complete
    assert report.unlabelled == [f"x{i}.png" for i in range(7)]
    assert json.loads((tmp_path / "out" / "run.json").read_text())["summary"]["unlabelled"] == report.unlabelled
    assert {e["source"] for e in _manifest(tmp_path / "out")} == {"a.png", "b.png"}  # not failures: not attempted


# ----------------------------------------------------------------------------- preview


def _tiles(path: Path, rows: int) -> list[tuple[int, int]]:
    """(top, side) of each row's tiles in a preview: the runs of pixel rows that the first tile column (4 px from the
    left) fills; the header and the captions above the rows are text, which covers a small part of its row."""
    with Image.open(path) as im:
        grid = np.asarray(im.convert("RGB")).astype(int)
    content = (grid[:, 4:132] != 255).any(axis=2).mean(axis=1) > 0.9
    tiles, y = [], 0
    while y < len(content):
        if content[y]:
            start = y
            while y < len(content) and content[y]:
                y += 1
            tiles.append((start, y - start))
        y += 1
    assert len(tiles) == rows
    return tiles


def test_preview_tiles_are_native_crops_a_person_can_judge(tmp_path: Path, loaded) -> None:
    files = [("small.png", (16, 20), "RGB"), ("photo.png", (300, 220), "RGB"), ("grey.png", (40, 40), "L")]
    root, labels = make_dataset(tmp_path, files)
    out = tmp_path / "out"
    report = run(loaded, root, labels, out, preview=3)
    assert report.preview == tmp_path / "out.preview.png" and report.preview.is_file()
    assert not (out / "out.preview.png").exists()
    tiles = _tiles(report.preview, 3)
    assert all(side >= 128 for _, side in tiles), tiles  # not the 16-px working size
    assert tiles[1][0] - sum(tiles[0]) > 4 + 12  # protect captions each row (file and labels) above its tiles
    # The 300x220 photo: a centre crop as large as its height (under 256 px), at its own resolution.
    top, side = tiles[1]
    assert side == 220
    with Image.open(report.preview) as im:
        grid = np.asarray(im.convert("RGB"))
    column = 4 + 220  # the columns are as wide as the largest tile, whatever the row
    shown = grid[top:top + 220, 4 + column:4 + column + 220]  # row 2, the protected tile
    with Image.open(out / "photo.png") as written:
        crop = np.asarray(written.convert("RGB"))[:, 40:260]  # the centre 220 x 220 of the file as written
    assert np.array_equal(shown, crop)
    # The 16x20 image: its 16-px centre crop enlarged 8x, pixel-exact.
    with Image.open(out / "small.png") as written:
        small = np.asarray(written.convert("RGB"))[2:18]
    top = tiles[0][0]
    assert np.array_equal(grid[top:top + 128:8, 4 + column:4 + column + 128:8], small)


def test_preview_names_its_columns_and_rows(tmp_path: Path, loaded) -> None:
    """A header band over the tiles (original, protected, δ with its amplification) and a caption over each row
    (file and labels): the image is taller than its tiles, and the text is there."""
    from mtlue_cli.protect.encode import _drawable, _wrap, write_preview

    root, labels = make_dataset(tmp_path, [("a.png", (64, 64), "RGB"), ("b.png", (64, 64), "RGB")])
    out = tmp_path / "out"
    run(loaded, root, labels, out)
    pairs = [(root / n, out / n) for n in ("a.png", "b.png")]
    bare = write_preview(pairs, tmp_path / "bare.png", 8 / 255)
    named = write_preview(pairs, tmp_path / "named.png", 8 / 255, ["a.png: shape=a, size=s", "b.png: shape=b, size=l"])
    with Image.open(bare) as a, Image.open(named) as b:
        bare_px, named_px = np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB"))
    tiles = _tiles(bare, 2)
    assert tiles[0][0] > 4 + 20  # the header band: two lines of text above the first row
    assert (bare_px[:tiles[0][0] - 4] != 255).any()  # ... with the column names drawn in it
    assert bare_px.shape[0] == tiles[0][0] + 2 * (128 + 4)  # tiles and padding below the header, nothing else
    named_tiles = _tiles(named, 2)
    assert named_px.shape[0] > bare_px.shape[0] and named_tiles[0][0] > tiles[0][0]  # a caption line over each row
    gap = named_px[named_tiles[0][0] + 128 + 4:named_tiles[1][0]]  # between the rows: row 2's caption
    assert (gap != 255).any()
    assert np.array_equal(named_px[named_tiles[1][0]:named_tiles[1][0] + 128], bare_px[tiles[1][0]:tiles[1][0] + 128])
    # What the default font cannot draw becomes '?', and long captions wrap within the width, at most 3 lines.
    from PIL import ImageFont

    font = ImageFont.load_default(size=12)
    assert _drawable("age=\u4e2d, ok", font) == "age=?, ok"
    lines = _wrap(" ".join(["word"] * 200), font, 100)
    assert len(lines) == 3 and lines[-1].endswith("...") and all(font.getlength(x) <= 100 for x in lines[:2])


def test_generator_gets_the_cores_the_workers_leave(monkeypatch: pytest.MonkeyPatch) -> None:
    import mtlue_cli.protect.threads as protect

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(protect, "available_cores", lambda: 8)
    before = torch.get_num_threads()
    torch.set_num_threads(8)
    try:
        for workers, threads in ((8, 1), (3, 5), (12, 1)):
            with protect.generator_threads(torch.device("cpu"), workers) as got:
                assert got == threads == torch.get_num_threads()
            assert torch.get_num_threads() == 8
        with protect.generator_threads(torch.device("cuda"), 8) as got:  # the generator is not on the CPU
            assert got == 8 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
