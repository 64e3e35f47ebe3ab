"""Helpers shared by the tests of labels, images, the dataset and inspect (not a test module)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtlue_cli.data.labels import LabelTable


def write_text(path: Path, text: str, encoding: str = "utf-8") -> Path:
    """Write exactly `text` (no newline translation, so CRLF tests mean CRLF)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def labelled(table: LabelTable) -> dict[str, tuple[str, ...]]:
    """path -> class names, read back through the spec: what a reader claims each image is."""
    return {r.path: tuple(table.spec.classes[k][c] for k, c in enumerate(r.labels)) for r in table.records}


def problem_set(problems) -> set[tuple[str, int | None, str]]:
    return {(p.path, p.row, p.reason) for p in problems}


def one_problem(table: LabelTable, path: str):
    found = [p for p in table.problems if p.path == path]
    assert len(found) == 1, f"expected one problem for {path!r}, got {table.problems}"
    return found[0]


def append_rows(labels: Path, *lines: str) -> None:
    with labels.open("a") as fh:
        fh.writelines(line + "\n" for line in lines)


def jpeg_bytes(size: tuple[int, int] = (32, 32)) -> bytes:
    """A valid noisy JPEG, big enough that its first half ends inside the entropy-coded scan."""
    import io

    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture
def with_bad_images(tiny_csv_dataset):
    """The tiny dataset plus a random-bytes .jpg (row 14) and a half JPEG (row 15)."""
    ds = tiny_csv_dataset
    rng = np.random.default_rng(0)
    (ds.root / "random.jpg").write_bytes(rng.bytes(700))
    full = jpeg_bytes()
    assert full.find(b"\xff\xda") < len(full) // 2  # the cut falls inside the scan data
    (ds.root / "more" / "half.jpg").write_bytes(full[: len(full) // 2])
    return ds
