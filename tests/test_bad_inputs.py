"""Reliability matrix: one bad input case x every command that reads images (style rule 10: tiny, CPU).

Every cell runs the real CLI in-process (CliRunner) on a 10-image 16x16 CSV dataset with ONE case
injected, and asserts: no traceback, the expected exit code, the bad file NAMED in the output when it is
skipped, inputs byte-identical after `protect`, and no temp file left under --out.

Exit codes: 0 ok, 1 error, 3 protect had failed files, 4 verify not effective, 5 no verdict (0, 4 or 5 are all verdicts).

==============================  =======  ====  ===========  =======  ===========  ======
case                            inspect  fit   fit          protect  protect      verify
                                               --skip-bad            --skip-bad
==============================  =======  ====  ===========  =======  ===========  ======
valid but unusual:
alpha_png, palette_png,          0       0     -            0        -            0 / 4
png16, cmyk_jpeg, grayscale,
exif_orientations (1..8),
tiny_1x1, thin_1x200,
unicode_space_name,
csv_bom, csv_crlf,
csv_quoted_comma
broken:
truncated_jpeg, zero_byte,       1       1     0 + named    1        3 + named    1
text_as_jpg, decompression_bomb,
symlink_loop, symlink_outside,
csv_missing_column,
csv_extra_column, csv_duplicate_row,
csv_dotdot_path, csv_absolute_path,
unreadable_chmod000 (skipped as root)
==============================  =======  ====  ===========  =======  ===========  ======

Also: a full disk (3rd `Image.save` raises ENOSPC) -> protect exit 3, reason mentions "space", no
half-written file under its final name; SIGINT / SIGKILL of a real `mtlue protect` subprocess, then
`--resume` -> outputs byte-identical to a one-shot run and "already done" > 0 (marked slow).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import torch
from conftest import _make_image
from PIL import Image
from typer.testing import CliRunner

from mtlue_cli.cli import app
from mtlue_cli.models.generator import PerturbationGenerator
from mtlue_cli.models.persistence import save_generator

runner = CliRunner()
ENV = {"COLUMNS": "1000"}
TASKS = {"shape": ["a", "b", "c"], "size": ["l", "s"]}
N_GOOD = 10
FIT_TINY = ["--size", "16", "--epochs", "1", "--surrogate-epochs", "1", "--batch-size", "8", "--device", "cpu",
            "-q", "--method", "tap", "--workers", "1"]
VERIFY_TINY = ["--test-split", "0.3", "--epochs", "1", "--res", "16", "--batch-size", "8", "--device", "cpu",
               "-q", "--workers", "1", "--seed", "0", "--defense", "none", "--time-budget", "none"]
PROTECT_OPTS = ["--device", "cpu", "-q", "--workers", "1", "--batch-size", "4"]


# ----------------------------------------------------------------------------- the base dataset


def _good_rows(root: Path) -> list[str]:
    rows = []
    for i in range(N_GOOD):
        rel = f"good_{i:02d}.{'png' if i % 2 == 0 else 'jpg'}"
        _make_image(root / rel)
        rows.append(f"{rel},{'abc'[i % 3]},{'ls'[i % 2]}")
    return rows


def _write_labels(path: Path, rows: list[str], bom: bool = False, eol: str = "\n") -> None:
    text = eol.join(["path,shape,size", *rows]) + eol
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))


@pytest.fixture(scope="module")
def generator_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("gen") / "tiny-gen"
    save_generator(PerturbationGenerator(tasks=TASKS, image_size=16), folder, method="tap")
    return folder


@pytest.fixture(scope="module")
def protected_dir(tmp_path_factory: pytest.TempPathFactory, generator_dir: Path) -> Path:
    """Protected copies of the GOOD images only, holding out the split verify --test-split 0.3 uses."""
    base = tmp_path_factory.mktemp("base")
    root = base / "data"
    labels = base / "labels.csv"
    _write_labels(labels, _good_rows(root))
    out = base / "protected"
    result = runner.invoke(app, ["protect", str(root), "--labels", str(labels), "--generator", str(generator_dir),
                                 "--out", str(out), "--holdout", "0.3", "--seed", "0", *PROTECT_OPTS], env=ENV)
    assert result.exit_code == 0, result.output
    return out


# ----------------------------------------------------------------------------- the cases
# Each case gets (root, tmp, rows, monkeypatch), edits files/rows in place and returns
# (name that must appear in the output when skipped, labels-file options).


def _add(rows: list[str], rel: str) -> None:
    rows.append(f"{rel},a,s")


def c_truncated_jpeg(root, tmp, rows, mp):
    path = _make_image(root / "trunc.jpg", size=(64, 64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _add(rows, "trunc.jpg")
    return "trunc.jpg", {}


def c_zero_byte(root, tmp, rows, mp):
    (root / "empty.png").write_bytes(b"")
    _add(rows, "empty.png")
    return "empty.png", {}


def c_text_as_jpg(root, tmp, rows, mp):
    (root / "notes.jpg").write_text("this is not an image\n")
    _add(rows, "notes.jpg")
    return "notes.jpg", {}


def c_decompression_bomb(root, tmp, rows, mp):
    _make_image(root / "bomb.png", size=(64, 64))  # 4096 px > 2 * 1000: DecompressionBombError
    mp.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the 16x16 good images (256 px) stay under it
    _add(rows, "bomb.png")
    return "bomb.png", {}


def c_symlink_loop(root, tmp, rows, mp):
    os.symlink("loop.png", root / "loop.png")
    _add(rows, "loop.png")
    return "loop.png", {}


def c_symlink_outside(root, tmp, rows, mp):
    secret = _make_image(tmp / "outside" / "secret.png")
    os.symlink(secret, root / "link.png")
    _add(rows, "link.png")
    return "link.png", {}


def c_unreadable_chmod000(root, tmp, rows, mp):
    if os.geteuid() == 0:
        pytest.skip("running as root: root can read a chmod 000 file")
    path = _make_image(root / "locked.png")
    path.chmod(0)
    _add(rows, "locked.png")
    return "locked.png", {}


def c_csv_missing_column(root, tmp, rows, mp):
    _make_image(root / "short.png")
    rows.append("short.png,a")
    return "short.png", {}


def c_csv_extra_column(root, tmp, rows, mp):
    _make_image(root / "long.png")
    rows.append("long.png,a,s,surplus")
    return "long.png", {}


def c_csv_duplicate_row(root, tmp, rows, mp):
    rows.append(rows[0])
    return rows[0].split(",")[0], {}


def c_csv_dotdot_path(root, tmp, rows, mp):
    _make_image(tmp / "escape.png")
    _add(rows, "../escape.png")
    return "../escape.png", {}


def c_csv_absolute_path(root, tmp, rows, mp):
    path = _make_image(tmp / "abs" / "absolute.png")
    _add(rows, str(path))
    return "absolute.png", {}


def c_alpha_png(root, tmp, rows, mp):
    _make_image(root / "alpha.png", mode="RGBA")
    _add(rows, "alpha.png")
    return None, {}


def c_palette_png(root, tmp, rows, mp):
    _make_image(root / "palette.png", mode="P")
    _add(rows, "palette.png")
    return None, {}


def c_png16(root, tmp, rows, mp):
    _make_image(root / "deep.png", mode="I;16")
    _add(rows, "deep.png")
    return None, {}


def c_cmyk_jpeg(root, tmp, rows, mp):
    _make_image(root / "cmyk.jpg", mode="CMYK")
    _add(rows, "cmyk.jpg")
    return None, {}


def c_grayscale(root, tmp, rows, mp):
    _make_image(root / "grey.png", mode="L")
    _add(rows, "grey.png")
    return None, {}


def c_exif_orientations(root, tmp, rows, mp):
    for o in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = o
        _make_image(root / f"exif_{o}.jpg", size=(16, 12), exif=exif.tobytes())
        _add(rows, f"exif_{o}.jpg")
    return None, {}


def c_tiny_1x1(root, tmp, rows, mp):
    _make_image(root / "dot.png", size=(1, 1))
    _add(rows, "dot.png")
    return None, {}


def c_thin_1x200(root, tmp, rows, mp):
    _make_image(root / "thin.png", size=(1, 200))
    _add(rows, "thin.png")
    return None, {}


def c_unicode_space_name(root, tmp, rows, mp):
    _make_image(root / "façade photo ü.png")
    _add(rows, "façade photo ü.png")
    return None, {}


def c_csv_bom(root, tmp, rows, mp):
    return None, {"bom": True}


def c_csv_crlf(root, tmp, rows, mp):
    return None, {"eol": "\r\n"}


def c_csv_quoted_comma(root, tmp, rows, mp):
    _make_image(root / "a,b.png")
    rows.append('"a,b.png",a,s')
    return None, {}


VALID = [c_alpha_png, c_palette_png, c_png16, c_cmyk_jpeg, c_grayscale, c_exif_orientations, c_tiny_1x1,
         c_thin_1x200, c_unicode_space_name, c_csv_bom, c_csv_crlf, c_csv_quoted_comma]
BROKEN = [c_truncated_jpeg, c_zero_byte, c_text_as_jpg, c_decompression_bomb, c_symlink_loop, c_symlink_outside,
          c_csv_missing_column, c_csv_extra_column, c_csv_duplicate_row, c_csv_dotdot_path, c_csv_absolute_path,
          c_unreadable_chmod000]
CASES = {f.__name__[2:]: f for f in VALID + BROKEN}
VALID_COMMANDS = ("inspect", "fit", "protect", "verify")
BROKEN_COMMANDS = ("inspect", "fit", "fit-skip-bad", "protect", "protect-skip-bad", "verify")

# A valid-case verify trains two real victims (~13 s); one runs by default, the rest with -m slow.
FAST_VERIFY = {"alpha_png"}
# Known bugs: (case, command) -> reason. Each is a strict xfail so a fix shows up as XPASS.
KNOWN_BUGS: dict[tuple[str, str], str] = {}


def _params() -> list:
    params = []
    for names, commands in ((VALID, VALID_COMMANDS), (BROKEN, BROKEN_COMMANDS)):
        for f in names:
            case = f.__name__[2:]
            for command in commands:
                marks = ([pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[(case, command)])]
                         if (case, command) in KNOWN_BUGS else [])
                if command == "verify" and f in VALID and case not in FAST_VERIFY:
                    marks.append(pytest.mark.slow)  # trains two victims: ~13 s a cell on 2 shared cores
                params.append(pytest.param(case, command, marks=marks, id=f"{case}-{command}"))
    return params


# ----------------------------------------------------------------------------- helpers


def _snapshot(top: Path, skip: Path | None = None) -> dict[str, str]:
    """sha256 of every file under `top` (links recorded by target, never followed)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        if skip is not None:
            dirnames[:] = [d for d in dirnames if Path(dirpath, d) != skip]
        for name in filenames:
            path = Path(dirpath, name)
            if path.is_symlink():
                found[str(path)] = "link:" + os.readlink(path)
            else:
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def _temp_files(out: Path) -> list[str]:
    if not out.exists():
        return []
    return [str(Path(d, n)) for d, _, names in os.walk(out) for n in names if "mtlue-tmp" in n or n.endswith(".tmp")]


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _no_traceback(result) -> None:
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "internal error" not in result.output, result.output


@pytest.fixture
def case_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def build(case: str) -> tuple[Path, Path, str | None]:
        root = tmp_path / "data"
        rows = _good_rows(root)
        bad, opts = CASES[case](root, tmp_path, rows, monkeypatch)
        labels = tmp_path / "labels.csv"
        _write_labels(labels, rows, **opts)
        return root, labels, bad

    return build


# ----------------------------------------------------------------------------- the matrix


def _fake_fit(dataset, cfg, out, on_event=None):
    """fit_generator stand-in: the matrix tests data loading and reporting; a real 1-epoch fit takes ~20 s on
    the shared 2-core box (one real fit runs in test_real_fit_on_unusual_images, marked slow)."""
    from mtlue_cli.fit.loop import FitResult

    assert dataset.images.shape[1:] == (3, 16, 16) and len(dataset) >= N_GOOD
    k = len(dataset.spec.names)
    return FitResult(out, cfg.method, 1, 0.0, 1.0, False, [0.5] * k, [0.5] * k, 0.0)


@pytest.mark.parametrize("case,command", _params())
def test_bad_input_matrix(case: str, command: str, case_data: Callable, tmp_path: Path, generator_dir: Path,
                          protected_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mtlue_cli.fit.loop

    monkeypatch.setattr(mtlue_cli.fit.loop, "fit_generator", _fake_fit)
    root, labels, bad = case_data(case)
    broken = bad is not None
    skip_bad = command.endswith("-skip-bad")
    out = tmp_path / "out"
    before = _snapshot(tmp_path, skip=out)
    if command == "inspect":
        args = ["inspect", str(root), "--labels", str(labels), "-q", "--workers", "1"]
    elif command.startswith("fit"):
        args = ["fit", str(root), "--labels", str(labels), "--out", str(out), *FIT_TINY]
    elif command.startswith("protect"):
        args = ["protect", str(root), "--labels", str(labels), "--generator", str(generator_dir), "--out", str(out),
                *PROTECT_OPTS]
    else:
        args = ["verify", "--clean", str(root), "--protected", str(protected_dir), "--labels", str(labels),
                *VERIFY_TINY]
    if skip_bad:
        args.append("--skip-bad")
    result = runner.invoke(app, args, env=ENV)
    if os.environ.get("MTLUE_MATRIX_LOG"):  # observed exit codes, for the outcome table in reports
        with open(os.environ["MTLUE_MATRIX_LOG"], "a", encoding="utf-8") as fh:
            fh.write(f"{case}\t{command}\t{result.exit_code}\n")
    _no_traceback(result)

    if not broken:
        expected = (0, 4, 5) if command == "verify" else (0,)  # the three verdicts
    elif command == "fit-skip-bad":
        expected = (0,)
    elif command == "protect-skip-bad":
        expected = (3,)
    else:
        expected = (1,)
    assert result.exit_code in expected, f"exit {result.exit_code}, expected {expected}\n{result.output}"
    if broken:
        assert _squash(bad) in _squash(result.output), f"{bad} not named in the output\n{result.output}"

    if command.startswith("protect"):
        assert _snapshot(tmp_path, skip=out) == before, "protect modified an input file"
        assert _temp_files(out) == []
        if result.exit_code in (0, 3):
            manifest = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines() if x.strip()]
            ok = [m for m in manifest if m["status"] == "ok"]
            assert len(ok) == N_GOOD if broken else len(ok) > N_GOOD or case.startswith("csv_")
            for m in ok:
                assert (out / m["output"]).is_file()
            if broken and skip_bad:
                assert any(m["status"] == "failed" for m in manifest), "the bad file is not in the manifest"


@pytest.mark.slow
def test_real_fit_on_unusual_images(case_data: Callable, tmp_path: Path) -> None:
    """The real (unstubbed) fit on EXIF-rotated non-square JPEGs: ~20-30 s on 2 shared cores."""
    root, labels, _ = case_data("exif_orientations")
    result = runner.invoke(app, ["fit", str(root), "--labels", str(labels), "--out", str(tmp_path / "gen"),
                                 *FIT_TINY], env=ENV)
    _no_traceback(result)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "gen" / "model.safetensors").is_file()


# ----------------------------------------------------------------------------- full disk


def test_full_disk_marks_that_file_failed(tmp_path: Path, generator_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data"
    labels = tmp_path / "labels.csv"
    _write_labels(labels, _good_rows(root))
    before = _snapshot(root)
    real_save = Image.Image.save
    calls = {"n": 0}

    def save(self, fp, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    out = tmp_path / "out"
    result = runner.invoke(app, ["protect", str(root), "--labels", str(labels), "--generator", str(generator_dir),
                                 "--out", str(out), *PROTECT_OPTS], env=ENV)
    _no_traceback(result)
    assert result.exit_code == 3, result.output
    assert "space" in result.output
    manifest = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines() if x.strip()]
    failed = [m for m in manifest if m["status"] == "failed"]
    assert len(failed) == 1 and "space" in failed[0]["reason"], failed
    assert failed[0]["source"] in result.output
    assert not (out / failed[0]["output"]).exists(), "half-written file under its final name"
    assert _temp_files(out) == []
    assert sum(m["status"] == "ok" for m in manifest) == N_GOOD - 1
    assert failed[0]["output"] not in (out / "labels.csv").read_text()
    assert _snapshot(root) == before


# ----------------------------------------------------------------------------- interrupted runs


def _many(tmp_path: Path, n: int = 60, size: int = 96) -> tuple[Path, Path]:
    root = tmp_path / "many"
    rows = []
    for i in range(n):
        rel = f"sub{i % 3}/img_{i:03d}.png"
        _make_image(root / rel, size=(size, size))
        rows.append(f"{rel},{'abc'[i % 3]},{'ls'[i % 2]}")
    labels = tmp_path / "many.csv"
    _write_labels(labels, rows)
    return root, labels


def _protect_cmd(root: Path, labels: Path, gen: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mtlue_cli", "protect", str(root), "--labels", str(labels), "--generator", str(gen),
            "--out", str(out), "--batch-size", "4", "--workers", "1", "--device", "cpu", "-q", *extra]


def _images(out: Path) -> dict[str, str]:
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*.png"))}


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_interrupted_protect_resumes_to_identical_output(sig: int, tmp_path: Path, generator_dir: Path) -> None:
    root, labels = _many(tmp_path)
    env = {**os.environ, "COLUMNS": "1000", "OMP_NUM_THREADS": "1"}
    reference = tmp_path / "reference"
    done = subprocess.run(_protect_cmd(root, labels, generator_dir, reference), env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    before = _snapshot(root)

    out = tmp_path / "out"
    proc = subprocess.Popen(_protect_cmd(root, labels, generator_dir, out), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    manifest = out / "manifest.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if manifest.is_file() and len(manifest.read_bytes().splitlines()) >= 5:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "protect finished before it could be interrupted"
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    if sig == signal.SIGINT:
        assert proc.returncode == 130, stderr
        assert "Traceback" not in stderr and "--resume" in stderr, stderr
    else:
        assert proc.returncode == -signal.SIGKILL
    lines = len(manifest.read_bytes().splitlines())
    assert 5 <= lines < 60, "interrupted too late to test anything"

    again = subprocess.run(_protect_cmd(root, labels, generator_dir, out, "--resume"), env=env, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    resumed = re.search(r"already done \(--resume\)\s*│?\s*(\d+)", again.stderr)
    assert resumed and int(resumed.group(1)) >= 4, again.stderr
    assert _images(out) == _images(reference)
    assert (out / "labels.csv").read_bytes() == (reference / "labels.csv").read_bytes()
    assert _temp_files(out) == []
    assert _snapshot(root) == before
