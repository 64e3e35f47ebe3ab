"""protect under torchrun: the share each rank takes, one merged manifest, the same bytes as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mtlue_cli.config import DataConfig, ProtectConfig
from mtlue_cli.models.generator import PerturbationGenerator
from mtlue_cli.models.persistence import load_generator, save_generator
from mtlue_cli.protect import outputs, shard
from mtlue_cli.protect.protect import protect_dataset
from mtlue_cli.protect.threads import available_cores, resolve_workers

TASKS = {"shape": ["a", "b", "c"], "size": ["s", "l"]}
N, BATCH = 14, 2  # --holdout 0.25 (seed 0) keeps 11; 2 ranks take batches [0,1] [4,5] [8,9] and [2,3] [6,7] [10]


def test_share_deals_whole_batches_round_robin() -> None:
    assert shard.share(7, 2, 0, 2) == [0, 1, 4, 5]
    assert shard.share(7, 2, 1, 2) == [2, 3, 6]
    assert shard.share(7, 2, 0, 1) == list(range(7))
    shares = [shard.share(10, 3, r, 3) for r in range(3)]
    assert sorted(sum(shares, [])) == list(range(10))  # a partition: each file exactly once


def test_resume_reads_the_parts_and_folds_them_after_a_cut_line(tmp_path: Path) -> None:
    (tmp_path / "manifest.jsonl").write_text('{"source": "a", "status": "failed"}\n{"source": "b", "sta')
    (tmp_path / "manifest.rank1.jsonl").write_text('{"source": "c", "status": "ok"}\n')
    (tmp_path / "manifest.rank0.jsonl").write_text('{"source": "a", "status": "ok"}\n{"source": "d"')
    assert [p.name for p in outputs.parts(tmp_path)] == ["manifest.rank0.jsonl", "manifest.rank1.jsonl"]
    assert {k: v["status"] for k, v in outputs.load_manifest(tmp_path).items()} == {"a": "ok", "c": "ok"}
    shard.fold_parts(tmp_path)
    assert not outputs.parts(tmp_path)
    assert [e["source"] for e in outputs.read_entries(tmp_path / "manifest.jsonl")] == ["a", "a", "c"]
    assert outputs.load_manifest(tmp_path)["a"]["status"] == "ok"


def test_workers_default_is_the_cores_shared_by_the_node_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert resolve_workers(ProtectConfig(workers=3)) == 3
    assert resolve_workers(ProtectConfig(workers=0)) == available_cores()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(2 * available_cores()))
    assert resolve_workers(ProtectConfig(workers=0)) == 1


def _noise(path: Path, seed: int, size: tuple[int, int]) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB").save(path)


def _dataset(tmp_path: Path) -> tuple[Path, Path, Path]:
    root = tmp_path / "data"
    root.mkdir()
    lines = ["path,shape,size"]
    for i in range(N):
        _noise(root / f"img{i:02d}.png", i, (16 + i % 3, 16))
        lines.append(f"img{i:02d}.png,{'abc'[i % 3]},{'sl'[i % 2]}")
    labels = tmp_path / "labels.csv"
    labels.write_text("\n".join(lines) + "\n")
    torch.manual_seed(0)
    gen = tmp_path / "gen"
    save_generator(PerturbationGenerator(tasks=TASKS, image_size=16, width=16), gen, method="tap")
    return root, labels, gen


def _torchrun(root: Path, labels: Path, gen: Path, out: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "mtlue_cli",
           "protect", str(root), "--labels", str(labels), "--generator", str(gen), "--out", str(out), "--device", "cpu",
           "--batch-size", str(BATCH), "--workers", "1", "--holdout", "0.25", "-q"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _one_process(root: Path, labels: Path, gen: Path, out: Path, resume: bool = False):
    cfg = ProtectConfig(device="cpu", batch_size=BATCH, workers=1, holdout=0.25, resume=resume)
    return protect_dataset(load_generator(str(gen)), DataConfig(root=root, labels=labels), out, cfg)


def _entries(out: Path) -> dict[str, dict]:
    return {e["source"]: e for e in outputs.read_entries(out / "manifest.jsonl")}


def _files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*.png")}


def test_two_gloo_processes_write_what_one_writes_and_resume_on_one_finishes(tmp_path: Path) -> None:
    """issue 17: 2 CPU processes give the same bytes, labels and manifest entries as 1; after a crash of one
    rank, --resume in a single process reads the ranks' parts and finishes the same set."""
    root, labels, gen = _dataset(tmp_path)
    ref = tmp_path / "one"
    report = _one_process(root, labels, gen, ref)
    held = set(json.loads((ref / "run.json").read_text())["held_out"])
    kept = [f"img{i:02d}.png" for i in range(N) if f"img{i:02d}.png" not in held]
    assert report.written == len(kept) == 11

    two = tmp_path / "two"
    proc = _torchrun(root, labels, gen, two)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _files(two) == _files(ref) and len(_files(ref)) == 11
    assert (two / "labels.csv").read_bytes() == (ref / "labels.csv").read_bytes()
    assert _entries(two) == _entries(ref)
    assert len(outputs.read_entries(two / "manifest.jsonl")) == 11 and not outputs.parts(two)
    run = json.loads((two / "run.json").read_text())
    assert run["processes"] == 2 and set(run["held_out"]) == held and run["summary"]["written"] == 11

    # A corrupt file in rank 1's third batch ([10]) stops that rank (no --skip-bad) once it has recorded its
    # first batch ([2, 3]); torchrun then stops rank 0. The user repairs the file and resumes with one process.
    bad = root / kept[10]
    good = bad.read_bytes()
    bad.write_bytes(b"not an image")
    crashed = tmp_path / "crashed"
    proc = _torchrun(root, labels, gen, crashed)
    assert proc.returncode != 0
    assert outputs.parts(crashed) and not (crashed / "manifest.jsonl").exists() and not (crashed / "run.json").exists()
    assert {e["source"] for p in outputs.parts(crashed) for e in outputs.read_entries(p)} >= {kept[2], kept[3]}
    bad.write_bytes(good)
    report = _one_process(root, labels, gen, crashed, resume=True)
    assert report.resumed >= 2 and report.written + report.resumed == 11 and not report.failed
    assert not outputs.parts(crashed)
    assert _files(crashed) == _files(ref)
    assert (crashed / "labels.csv").read_bytes() == (ref / "labels.csv").read_bytes()
    assert _entries(crashed) == _entries(ref)
