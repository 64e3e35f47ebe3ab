"""publish_dataset: the imagefolder layout, the card, the refusals, no local path, the offline upload."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from mtlue_cli.cli import app
from mtlue_cli.config import DataConfig, ProtectConfig
from mtlue_cli.errors import MtlueError
from mtlue_cli.hub.publish import PublishConfig, PublishError, PublishRefused, publish_dataset
from mtlue_cli.models.generator import PerturbationGenerator
from mtlue_cli.models.persistence import load_generator, save_generator
from mtlue_cli.protect.protect import protect_dataset
from mtlue_cli.verify.run import TaskRow, VerifyReport

TASKS = {"shape": ["a", "b", "c"], "size": ["1", "2"]}  # numeric class names: they load as integers
N = 10


@pytest.fixture(scope="module")
def protected(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real protect run on 10 tiny images (two in a subfolder), 3 held out, --tag-no-ai."""
    base = tmp_path_factory.mktemp("publish")
    torch.manual_seed(0)
    save_generator(PerturbationGenerator(tasks=TASKS, image_size=16), base / "gen", method="tap")
    root, rng = base / "photos", np.random.default_rng(0)
    lines = ["path,shape,size"]
    for i in range(N):
        rel = f"img{i}.png" if i < 8 else f"sub/img{i}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16 + i, 16, 3), dtype=np.uint8)).save(root / rel)
        lines.append(f"{rel},{'abc'[i % 3]},{1 + i % 2}")
    (base / "labels.csv").write_text("\n".join(lines) + "\n")
    out = base / "prot"
    report = protect_dataset(load_generator(str(base / "gen")), DataConfig(root=root, labels=base / "labels.csv"), out,
                             ProtectConfig(device="cpu", workers=1, batch_size=4, holdout=0.3, tag_no_ai=True))
    assert report.written == 7 and report.held_out == 3 and not report.failed
    return out


@pytest.fixture
def out(protected: Path, tmp_path: Path) -> Path:
    """A private copy of the protected folder that a test may break (run.json keeps pointing at the originals)."""
    copy = tmp_path / "prot"
    shutil.copytree(protected, copy)
    return copy


def _dry(out: Path, tmp_path: Path, **cfg) -> object:
    return publish_dataset(out, PublishConfig(**{"repo_id": "org/faces", "dry_run": True, **cfg}), tmp_path / "upload")


def _manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def _labels(path: Path, key: str) -> dict[str, tuple[str, str]]:
    with path.open(newline="") as fh:
        return {r[key]: (r["shape"], r["size"]) for r in csv.DictReader(fh)}


# ----------------------------------------------------------------------------- the folder and the card


def test_dry_run_folder_loads_with_datasets(out: Path, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    report = _dry(out, tmp_path, include_clean_test=True, license="cc-by-nc-4.0")
    folder = report.folder
    assert (report.train_images, report.test_images, report.url) == (7, 3, None)
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "mtlue-manifest.jsonl", "mtlue-run.json", "test", "train"]
    ds = datasets.load_dataset("imagefolder", data_dir=str(folder), cache_dir=str(tmp_path / "hf-cache"))
    assert ds["train"].num_rows == 7 and ds["test"].num_rows == 3
    # train: the labels protect wrote, row for row, and the pixels of the protected files
    want = _labels(out / "labels.csv", "path")
    got = sorted((str(r["shape"]), str(r["size"])) for r in ds["train"])
    assert got == sorted(want.values())
    first = sorted(want)[0]
    row = next(r for r in ds["train"] if r["image"].size == Image.open(out / first).size)
    assert np.array_equal(np.asarray(row["image"]), np.asarray(Image.open(out / first)))
    # test: the held-out ORIGINALS with their original labels, as lossless PNG
    run = json.loads((out / "run.json").read_text())
    originals = _labels(Path(run["labels_file"]), "path")
    assert sorted((str(r["shape"]), str(r["size"])) for r in ds["test"]) == sorted(originals[p] for p in run["held_out"])
    for rel in run["held_out"]:
        name = str(Path(rel).with_suffix(".png"))
        with Image.open(folder / "test" / name) as clean, Image.open(Path(run["input_root"]) / rel) as original:
            assert np.array_equal(np.asarray(clean), np.asarray(original.convert("RGB")))
    # the card's own config (train/** and test/**) loads too, as `load_dataset("org/faces")` would
    assert datasets.load_dataset(str(folder), cache_dir=str(tmp_path / "hf-cache2"))["test"].num_rows == 3


def test_card_front_matter_and_plain_words(out: Path, tmp_path: Path) -> None:
    import yaml

    card = _dry(out, tmp_path, include_clean_test=True).card.read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["license"] == "other" and front["task_categories"] == ["image-classification"]
    assert "unlearnable-examples" in front["tags"]
    run = json.loads((out / "run.json").read_text())
    linf = max(e["linf_255"] for e in _manifest(out))
    for text in (f"mtlue {run['version']}", run["generator"]["sha256"], "TAP", "8/255", f"max |δ| {linf}/255",
                 "Mean PSNR", "Images: 7 protected", "No-AI tag (`--tag-no-ai`): yes", "DMI-PROHIBITED-AIMLTRAINING",
                 "**unprotected original images**", "Not verified", "mtlue verify OUT"):
        assert text in card, text
    shipped = json.loads((tmp_path / "upload" / "mtlue-run.json").read_text())
    assert shipped["config"]["tag_no_ai"] == "True"


def test_verify_out_writes_verify_json_and_it_goes_into_the_card(out: Path, tmp_path: Path, monkeypatch) -> None:
    import importlib

    rows = [TaskRow("shape", 0.4, 0.9, 0.9, 0.35, 0.4, 1.0, {"none": 0.35, "jpeg10": 0.62}),
            TaskRow("size", 0.5, 0.8, 0.8, 0.5, 0.5, 1.0, {"none": 0.5, "jpeg10": 0.51})]
    recipe = {"victim": "resnet18", "stem": "cifar", "epochs": 2, "res": 64, "crop": 56, "batch_size": 8,
              "weighting": "ew", "adv_train": False, "device": "cpu", "test": "seeded split 0.3"}
    report = VerifyReport(rows, ["none", "jpeg10"], 7, 3, {}, recipe, 5.0, seconds=1.0)  # shape: broken after jpeg10
    # the victims are not trained here: the library call returns a fixed report (the CLI is what is tested)
    monkeypatch.setattr(importlib.import_module("mtlue_cli.verify.run"), "verify", lambda *a, **k: report)
    assert CliRunner().invoke(app, ["verify", str(out), "-q"]).exit_code == 4
    assert json.loads((out / "verify.json").read_text())["broken_by"] == {"jpeg10": ["shape"]}
    built = _dry(out, tmp_path)
    card = built.card.read_text()
    assert built.verified and "Not verified" not in card
    assert "| shape | 40.0% | 90.0% | 35.0% | 62.0% |" in card and "not effective" in card and "shape after jpeg10" in card
    assert (built.folder / "mtlue-verify.json").is_file()
    os.utime(out / "verify.json", (1, 1))  # older than run.json: the result of an earlier protection
    stale = _dry(out, tmp_path)
    assert not stale.verified and "Not verified" in stale.card.read_text()
    assert not (stale.folder / "mtlue-verify.json").exists() and any("older" in w for w in stale.warnings)


def test_no_local_path_in_any_written_file(out: Path, tmp_path: Path, tmp_path_factory) -> None:
    report = _dry(out, tmp_path, include_clean_test=True, license="mit")
    base = str(tmp_path_factory.getbasetemp())  # the parent of the originals, labels, generator, OUT and the upload
    files = [p for p in report.folder.rglob("*") if p.is_file()]
    assert len(files) == report.files == 7 + 3 + 2 + 3
    for path in files:
        assert base.encode() not in path.read_bytes(), path
    shipped = [json.loads(line) for line in (report.folder / "mtlue-manifest.jsonl").read_text().splitlines()]
    assert len(shipped) == 7 and all(not Path(e["source"]).is_absolute() for e in shipped)


# ----------------------------------------------------------------------------- refusals


def test_refuses_an_image_the_manifest_does_not_list(out: Path, tmp_path: Path) -> None:
    shutil.copy(Path(json.loads((out / "run.json").read_text())["input_root"]) / "img0.png", out / "sub" / "stray.png")
    with pytest.raises(PublishRefused, match="not in its manifest") as caught:
        _dry(out, tmp_path)
    assert [p.path for p in caught.value.problems] == ["sub/stray.png"]
    assert not (tmp_path / "upload").exists()  # nothing is built before the checks pass


@pytest.mark.parametrize("linf", [0, None])
def test_refuses_a_file_with_no_measured_perturbation(out: Path, tmp_path: Path, linf) -> None:
    entries = _manifest(out)
    entries[-1]["linf_255"] = linf
    (out / "manifest.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    with pytest.raises(PublishRefused, match="L-inf of 0 or none") as caught:
        _dry(out, tmp_path)
    assert [p.path for p in caught.value.problems] == [entries[-1]["output"]]


def test_refuses_an_unfinished_run(out: Path, tmp_path: Path) -> None:
    # a later `protect --resume` wrote a file and its manifest line, then stopped before labels.csv and run.json
    late = dict(_manifest(out)[0], source="new.png", output="new.png")
    shutil.copy(out / _manifest(out)[0]["output"], out / "new.png")
    with (out / "manifest.jsonl").open("a") as fh:
        fh.write(json.dumps(late) + "\n")
    with pytest.raises(PublishRefused, match="did not finish"):
        _dry(out, tmp_path)
    (out / "new.png").unlink()
    (out / "run.json").unlink()  # the first run never finished: run.json is written last
    with pytest.raises(PublishRefused, match="did not finish"):
        _dry(out, tmp_path)


def test_refuses_a_file_changed_after_protect(out: Path, tmp_path: Path) -> None:
    target = out / _manifest(out)[0]["output"]
    run = json.loads((out / "run.json").read_text())
    shutil.copy(Path(run["input_root"]) / _manifest(out)[0]["source"], target)  # the original copied over it
    with pytest.raises(PublishRefused, match="changed after"):
        _dry(out, tmp_path)


def test_failed_files_are_refused_or_reported(out: Path, tmp_path: Path) -> None:
    with (out / "manifest.jsonl").open("a") as fh:
        fh.write(json.dumps({"source": "broken.jpg", "output": None, "status": "failed", "reason": "corrupt"}) + "\n")
    with pytest.raises(PublishRefused, match="failed in `mtlue protect`.*--allow-failed"):
        _dry(out, tmp_path)
    report = _dry(out, tmp_path, allow_failed=True)
    assert [(p.path, p.reason) for p in report.failed] == [("broken.jpg", "corrupt")]
    assert report.train_images == 7 and "1 image(s) failed" in report.card.read_text()
    assert '"status": "failed"' in (report.folder / "mtlue-manifest.jsonl").read_text()


# ----------------------------------------------------------------------------- upload and CLI


def test_offline_upload_fails_with_a_clear_error(out: Path, tmp_path: Path, monkeypatch) -> None:
    from huggingface_hub import constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no saved token of the user's
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(PublishError, match="upload to org/faces failed.*rerun the same command"):
        publish_dataset(out, PublishConfig(repo_id="org/faces"), tmp_path / "upload")
    assert (tmp_path / "upload" / "README.md").is_file()  # built and kept: a rerun resumes from it
    result = CliRunner().invoke(app, ["publish", str(out), "--to", "org/faces", "--folder", str(tmp_path / "upload"), "-q"])
    assert result.exit_code == 1 and "offline" in result.output


def test_cli_dry_run_and_exit_codes(out: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    folder = tmp_path / "upload"
    ok = runner.invoke(app, ["publish", str(out), "--dry-run", "--folder", str(folder), "-q"])
    assert ok.exit_code == 0, ok.output
    assert "dry run" in ok.output and "7 protected images" in ok.output and "license: other" in ok.output
    again = runner.invoke(app, ["publish", str(out), "--dry-run", "--folder", str(folder), "-q"])
    assert again.exit_code == 0  # a folder publish built is rebuilt
    assert runner.invoke(app, ["publish", str(out), "-q"]).exit_code == 2  # no --to and no --dry-run
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not ours")
    assert runner.invoke(app, ["publish", str(out), "--dry-run", "--folder", str(tmp_path / "mine"), "-q"]).exit_code == 2
    assert (tmp_path / "mine" / "notes.txt").is_file()  # a folder publish did not build is never emptied
    assert runner.invoke(app, ["publish", str(out), "--to", "not a repo", "--dry-run", "-q"]).exit_code == 2
    (out / "run.json").unlink()
    assert runner.invoke(app, ["publish", str(out), "--dry-run", "--folder", str(folder), "-q"]).exit_code == 1
    assert issubclass(PublishRefused, MtlueError)


def test_the_upload_folder_replaces_a_stale_file_whole(tmp_path: Path) -> None:
    from mtlue_cli.hub.imagefolder import link_or_copy

    src, dst = tmp_path / "a.png", tmp_path / "up" / "train" / "a.png"
    src.write_bytes(b"protected")
    dst.parent.mkdir(parents=True)
    dst.write_bytes(b"an older, longer file from an interrupted build")
    link_or_copy(src, dst)
    assert dst.read_bytes() == b"protected" and sorted(p.name for p in dst.parent.iterdir()) == ["a.png"]
    assert src.read_bytes() == b"protected"  # the source is untouched


def test_the_card_gives_no_verdict_where_the_originals_were_not_learnt() -> None:
    from mtlue_cli.hub.dataset_card import _verify_section

    rows = [TaskRow("shape", 0.4, 0.42, 0.42, 0.38, 0.4, 1.0, {"none": 0.38})]  # the clean victim at the baseline too
    report = VerifyReport(rows, ["none"], 7, 3, {}, {"victim": "resnet18", "epochs": 1, "res": 64}, 5.0)
    text = "\n".join(_verify_section(report.to_dict()))
    assert "Verdict: **none**" in text and "did not learn shape" in text and "effective" not in text
