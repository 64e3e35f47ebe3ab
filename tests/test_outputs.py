"""mtlue_cli.protect.outputs: the protected folder's format, written and read back in one place (and files.atomic_write)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mtlue_cli.config import DataConfig, ProtectConfig
from mtlue_cli.errors import ConfigError
from mtlue_cli.files import atomic_write
from mtlue_cli.protect import outputs
from mtlue_cli.protect.outputs import FileResult


def test_output_names_keep_the_tree_and_separate_names_that_would_meet() -> None:
    names = outputs.output_names(["a/x.jpg", "a/x.png", "b/y.JPG", "z.webp"], ".png")
    assert names == {"a/x.jpg": "a/x.jpg.png", "a/x.png": "a/x.png.png", "b/y.JPG": "b/y.png", "z.webp": "z.png"}
    assert outputs.output_names(["A.jpg", "a.png"], ".png") == {"A.jpg": "A.jpg.png", "a.png": "a.png.png"}


def test_manifest_written_line_by_line_read_back_and_repaired_after_a_cut(tmp_path: Path) -> None:
    path = tmp_path / outputs.MANIFEST
    writer = outputs.ManifestWriter(path, append=False)
    writer.write(FileResult("a.jpg", "a.png", "ok", linf_255=8, psnr=40.0, ssim=0.98))
    writer.write(FileResult("b.jpg", None, "failed", reason="corrupt"))
    writer.close()
    path.write_text(path.read_text() + '{"source": "c.jpg", "sta')  # a crash in the middle of a line
    assert [e["source"] for e in outputs.read_entries(path)] == ["a.jpg", "b.jpg"]
    writer = outputs.ManifestWriter(path, append=True)  # --resume: the cut line is closed first
    writer.write(FileResult("c.jpg", "c.png", "ok", linf_255=7, psnr=float("inf"), ssim=1.0))
    writer.close()
    entries = outputs.read_entries(path)
    assert [e["source"] for e in entries] == ["a.jpg", "b.jpg", "c.jpg"]
    assert FileResult(**entries[0]) == FileResult("a.jpg", "a.png", "ok", linf_255=8, psnr=40.0, ssim=0.98)
    assert outputs.source_map(tmp_path) == {"a.png": "a.jpg", "c.png": "c.jpg"}
    # quality: the measured files only; an infinite PSNR (identical file) does not enter the mean
    assert outputs.quality(tmp_path) == {"max_linf_255": 8, "mean_psnr": 40.0, "mean_ssim": pytest.approx(0.99), "files": 2}
    assert outputs.quality(tmp_path / "nothing") == {}


def test_load_manifest_reads_the_parts_an_interrupted_torchrun_left(tmp_path: Path) -> None:
    outputs.append_entries(tmp_path, [{"source": "a", "status": "failed"}])
    outputs.part_path(tmp_path, 1).write_text('{"source": "b", "status": "ok"}\n')
    outputs.part_path(tmp_path, 0).write_text('{"source": "a", "status": "ok"}\n')
    assert [p.name for p in outputs.parts(tmp_path)] == ["manifest.rank0.jsonl", "manifest.rank1.jsonl"]
    assert {k: v["status"] for k, v in outputs.load_manifest(tmp_path).items()} == {"a": "ok", "b": "ok"}
    outputs.clear(tmp_path)
    assert not outputs.parts(tmp_path) and not (tmp_path / outputs.MANIFEST).exists()


def test_written_keeps_the_last_line_of_each_output() -> None:
    entries = [{"source": "a", "output": "a.png", "status": "ok", "linf_255": 3},
               {"source": "a", "output": "a.png", "status": "resumed", "linf_255": 4},
               {"source": "b", "output": None, "status": "failed"}, {"source": "c", "output": "c.png", "status": "failed"}]
    assert outputs.written(entries) == {"a.png": entries[1]}


def test_labels_csv_round_trip(tmp_path: Path) -> None:
    outputs.write_labels(tmp_path, ["path", "shape", "size"], [["x/a.png", "c", "l"], ["b, c.png", "a", "s"]])
    assert outputs.read_labels_csv(tmp_path) == (["shape", "size"], [["x/a.png", "c", "l"], ["b, c.png", "a", "s"]])
    assert [p.name for p in tmp_path.iterdir()] == [outputs.LABELS]  # no temporary left


def _run(tmp_path: Path, **data: object) -> dict:
    return outputs.run_record(
        generator={"spec": "gen", "source": "local", "image_size": 32}, epsilon=8 / 255, tasks={"shape": ["a", "b"]},
        data=DataConfig(root=tmp_path / "photos", **data), layout="csv", labels_file=tmp_path / "labels.csv",
        labels_sha256="0" * 64, config={"holdout": 0.25}, held_out=["h.png"], holdout=0.25, seed=3,
        summary={"written": 5, "unlabelled": ["u.png"]}, device="cpu", processes=1, torch_version="2")


def test_run_json_written_and_read_back(tmp_path: Path) -> None:
    outputs.write_run(tmp_path, _run(tmp_path, tasks=("shape",), path_column="file", partition=tmp_path / "p.txt",
                                     split="valid"))
    run = outputs.read_run(tmp_path)
    assert run.exists and run.working_size == 32  # the generator's image_size: the one record of the working size
    assert (run.input_root, run.labels_file, run.layout) == (tmp_path / "photos", tmp_path / "labels.csv", "csv")
    assert (run.holdout, run.seed, run.held_out, run.tasks) == (0.25, 3, ["h.png"], ("shape",))
    assert run.summary["unlabelled"] == ["u.png"] and run.raw["epsilon_255"] == pytest.approx(8.0)
    assert run.originals() == DataConfig(root=tmp_path / "photos", labels=tmp_path / "labels.csv", layout="csv",
                                         path_column="file", tasks=("shape",), partition=tmp_path / "p.txt", split="valid")
    assert run.originals(labels=tmp_path / "other.csv", tasks=None).labels == tmp_path / "other.csv"  # given ones win


@pytest.mark.parametrize("text", [None, "not json", "[1, 2]"])
def test_a_missing_or_unreadable_run_json_is_an_empty_record(tmp_path: Path, text: str | None) -> None:
    if text is not None:
        (tmp_path / outputs.RUN).write_text(text)
    run = outputs.read_run(tmp_path)
    assert not run.exists and run.working_size is None and run.input_root is None and run.held_out == []
    assert run.holdout is None and run.seed is None and run.tasks is None


def test_verify_json_older_than_run_json_is_stale(tmp_path: Path) -> None:
    assert outputs.read_verify(tmp_path) == (None, False)
    outputs.write_run(tmp_path, _run(tmp_path))
    outputs.write_verify(tmp_path, {"effective": True})
    assert outputs.read_verify(tmp_path) == ({"effective": True}, False)
    os.utime(tmp_path / outputs.VERIFY, (1, 1))
    assert outputs.read_verify(tmp_path) == ({"effective": True}, True)


def test_check_out_refuses_the_input_and_a_used_folder(tmp_path: Path) -> None:
    root, out = tmp_path / "photos", tmp_path / "out"
    root.mkdir()
    for bad in (root, root / "sub"):
        with pytest.raises(ConfigError, match="inside the input folder"):
            outputs.check_out(root, bad, ProtectConfig())
    (out / outputs.GENERATOR_DIR).mkdir(parents=True)
    outputs.check_out(root, out, ProtectConfig())  # only the generator protect fitted for it: fine
    (out / "x.png").write_bytes(b"")
    with pytest.raises(ConfigError, match="not empty"):
        outputs.check_out(root, out, ProtectConfig())
    outputs.check_out(root, out, ProtectConfig(resume=True))


def test_atomic_write_leaves_the_old_file_and_no_temporary_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "file.json"
    target.write_text(json.dumps({"old": True}))

    def fail(tmp: Path) -> None:
        tmp.write_text('{"half')
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(target, fail)
    assert json.loads(target.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["file.json"]
    atomic_write(target, lambda tmp: tmp.write_text("{}"))
    assert target.read_text() == "{}" and [p.name for p in tmp_path.iterdir()] == ["file.json"]
