"""mtlue_cli.data.inspect and `mtlue inspect`: counts, flags, problems, the JSON, exit codes, one red error line."""

from __future__ import annotations

import json
import subprocess
import sys

from data_helpers import append_rows, with_bad_images  # noqa: F401 (with_bad_images: a fixture)
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from mtlue_cli.cli import app
from mtlue_cli.cli import render as cli_module
from mtlue_cli.config import LAYOUTS, DataConfig
from mtlue_cli.data.inspect import InspectReport, inspect_dataset

# ----------------------------------------------------------------------------- inspect


def test_inspect_dataset_counts_flags_problems(tiny_csv_dataset, make_image) -> None:
    ds = tiny_csv_dataset
    Image.new("RGBA", (16, 16), (1, 2, 3, 40)).save(ds.root / "alpha.png")
    make_image(ds.root / "grey.png", mode="L")
    make_image(ds.root / "deep.png", mode="I;16")
    rotated = Image.new("RGB", (16, 8), (9, 9, 9))
    exif = rotated.getexif()
    exif[0x0112] = 6
    rotated.save(ds.root / "rotated.jpg", exif=exif)
    (ds.root / "broken.jpg").write_bytes(b"\xff\xd8garbage" * 20)
    append_rows(ds.labels, "alpha.png,female,2,no", "grey.png,female,2,no", "deep.png,male,9,no",
                "rotated.jpg,male,10,yes", "broken.jpg,male,10,yes", "ghost.png,male,10,yes")

    events: list[str] = []
    report = inspect_dataset(DataConfig(root=ds.root), on_event=lambda kind, info: events.append(kind))
    assert isinstance(report, InspectReport)
    assert report.layout == "csv" and report.labels_file == str(ds.labels) and report.root == str(ds.root)
    assert report.images == 16
    summary = {t.name: (t.classes, t.counts) for t in report.tasks}
    assert summary == {
        "gender": (["female", "male"], [8, 8]),
        "age": (["2", "9", "10"], [6, 5, 5]),
        "glasses": (["no", "yes"], [12, 4]),
    }
    assert [t.majority_share for t in report.tasks] == [0.5, 6 / 16, 0.75]
    assert report.sizes == {"16x16": 15, "8x16": 1}
    assert report.modes == {"RGB": 13, "RGBA": 1, "L": 1, "I;16": 1}
    assert report.flags == {"alpha": 1, "grayscale": 2, "16-bit": 1, "exif_rotated": 1}
    assert [(p["path"], p["row"]) for p in report.problems] == [("ghost.png", 19), ("broken.jpg", 18)]
    assert report.problems[1]["reason"] == "not an image Pillow can read (corrupt or wrong extension)"
    # Decoded bands (+1 for alpha) x pixels: 12 RGB, RGBA, L, 16-bit->L, rotated 8x16 RGB; halved for PNG.
    raw = 12 * 256 * 3 + 256 * 4 + 256 * 1 + 256 * 1 + 128 * 3
    assert report.estimated_output_bytes == int(raw * 0.5)
    assert events.count("progress") == 17 and events[0] == "start" and events[-1] == "end"
    as_json = json.loads(json.dumps(report.to_dict()))
    assert as_json["tasks"][2] == {"name": "glasses", "classes": ["no", "yes"], "counts": [12, 4], "majority_share": 0.75}


# ----------------------------------------------------------------------------- CLI


def invoke(*args: str, columns: int = 1000):
    # Wide COLUMNS: Rich wraps stderr lines at 80 columns when it is not a terminal.
    return CliRunner().invoke(app, list(args), env={"COLUMNS": str(columns)})


def test_cli_inspect_json(tiny_csv_dataset) -> None:
    ds = tiny_csv_dataset
    result = invoke("inspect", str(ds.root), "--labels", str(ds.labels), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["images"] == 12 and report["layout"] == "csv" and report["problems"] == []
    assert [(t["name"], t["classes"], t["counts"]) for t in report["tasks"]] == [
        ("gender", ["female", "male"], [6, 6]), ("age", ["2", "9", "10"], [4, 4, 4]), ("glasses", ["no", "yes"], [9, 3]),
    ]
    assert report["sizes"] == {"16x16": 12}


def test_cli_inspect_builds_the_data_config(tiny_csv_dataset, monkeypatch) -> None:
    import mtlue_cli.data.inspect as inspect_module

    seen = []
    real = inspect_module.inspect_dataset
    monkeypatch.setattr(inspect_module, "inspect_dataset", lambda cfg, on_event=None: seen.append(cfg) or real(cfg))
    ds = tiny_csv_dataset
    result = invoke("inspect", str(ds.root), "--labels", str(ds.labels), "--layout", "csv",
                    "--tasks", "age, gender", "--path-column", "path", "--workers", "1", "--json")
    assert result.exit_code == 0, result.output
    assert seen == [DataConfig(root=ds.root, labels=ds.labels, layout="csv", path_column="path",
                               tasks=("age", "gender"), workers=1)]
    assert [t["name"] for t in json.loads(result.stdout)["tasks"]] == ["age", "gender"]


def test_cli_inspect_problems_exit_1(with_bad_images) -> None:
    ds = with_bad_images
    (ds.root / "more" / "half.jpg").unlink()
    append_rows(ds.labels, "random.jpg,male,9,no")
    result = invoke("inspect", str(ds.root), "--labels", str(ds.labels))
    assert result.exit_code == 1, result.output
    assert "random.jpg (row 14): not an image Pillow can read (corrupt or wrong extension)" in result.output
    assert "1 problem(s):" in result.output and "12 usable images" in result.output


def test_cli_inspect_json_problems_exit_1(with_bad_images) -> None:
    ds = with_bad_images
    append_rows(ds.labels, "random.jpg,male,9,no")
    (ds.root / "more" / "half.jpg").unlink()
    result = invoke("inspect", str(ds.root), "--labels", str(ds.labels), "--json")
    assert json.loads(result.stdout)["problems"][0]["path"] == "random.jpg"
    assert result.exit_code == 1


def test_cli_missing_labels_file_one_red_line(tiny_csv_dataset, monkeypatch) -> None:
    ds = tiny_csv_dataset
    missing = ds.root / "nope.csv"
    result = invoke("inspect", str(ds.root), "--labels", str(missing))
    assert result.exit_code == 1
    assert result.stdout == ""
    # (The stopped, empty progress display leaves one blank line before it.)
    assert [line for line in result.stderr.splitlines() if line.strip()] == [f"error: {missing}: labels file not found"]
    # Red: the same run on a colour terminal.
    monkeypatch.setattr(cli_module, "console", Console(stderr=True, force_terminal=True, color_system="standard", width=1000))
    result = invoke("inspect", str(ds.root), "--labels", str(missing))
    assert result.exit_code == 1 and "\x1b[1;31merror:\x1b[0m" in result.stderr


def test_cli_error_line_not_wrapped_when_piped(tiny_csv_dataset) -> None:
    missing = tiny_csv_dataset.root / ("x" * 80) / "nope.csv"
    result = invoke("inspect", str(tiny_csv_dataset.root), "--labels", str(missing), columns=80)
    assert [line for line in result.stderr.splitlines() if line.strip()] == [f"error: {missing}: labels file not found"]


def test_cli_bad_layout_is_a_usage_error(tiny_csv_dataset) -> None:
    result = invoke("inspect", str(tiny_csv_dataset.root), "--layout", "zip")
    assert result.exit_code == 2
    # DataConfig checks it (config owns validation), naming the allowed values
    assert "error: --layout 'zip' is not allowed" in result.stderr and ", ".join(LAYOUTS) in result.stderr


def test_cli_import_does_not_load_torch() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import mtlue_cli.cli, sys; print('torch' in sys.modules)"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    assert out.stdout.strip() == "False"


def test_cli_inspect_reads_label_maps(tmp_path) -> None:
    from typer.testing import CliRunner

    from mtlue_cli.cli import app
    from mtlue_cli.demo.scenes import make_scenes

    root = make_scenes(tmp_path / "scenes", n=6, size=32)
    result = CliRunner().invoke(app, [
        "inspect", str(root / "images"), "--labels", str(root / "labels.csv"), "--json",
        "--map", f"seg=segmentation:{root / 'segmentation'}", "--map", f"depth=depth:{root / 'depth'}",
        "--depth-scale", "1000"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["images"] == 6
    seg, depth = report["dense_tasks"]
    assert (seg["name"], seg["kind"], seg["classes"]) == ("seg", "segmentation", ["background", "sphere", "cube",
                                                                              "pyramid"])  # its id2label.json
    assert sum(seg["pixel_counts"]) + round(seg["invalid_share"] * 6 * 32 * 32) == 6 * 32 * 32
    assert depth["kind"] == "depth" and 0.5 < depth["value_range"][0] < depth["value_range"][1] < 20  # metres
