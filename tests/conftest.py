"""Small, general fixtures shared by the test files (style rule 10: tiny, offline, CPU).

make_image
    A factory: ``make_image(path, size=(16, 16), mode="RGB", color=None, **save_kwargs) -> Path``.
    Writes one image, creating parent folders; the format comes from the suffix (.png, .jpg, ...).
    ``color=None`` gives a deterministic noise pattern seeded by the file name, so two files with
    different names hold different pixels; a colour (tuple or int, as Pillow takes it) gives a
    solid image. Extra keyword arguments go to ``Image.save`` (``quality=``, ``exif=``...).
    Mode "I;16" (16-bit grey) is supported; pass ``color`` as an int in 0..65535.

tiny_csv_dataset
    A 12-image labelled dataset under ``tmp_path / "tiny"`` with ``labels.csv`` in its root, so
    ``DataConfig(root=ds.root)`` auto-detects it. Images are 16x16 noise, PNG and JPEG alternating;
    the last four sit in a ``more/`` subfolder. Three tasks, chosen to exercise class ordering:

    ==========  ==========================  =====================================
    task        classes (vocabulary order)  image i gets
    ==========  ==========================  =====================================
    gender      female, male                ("female", "male")[i % 2]    -> 6 / 6
    age         2, 9, 10 (numeric order)    ("2", "9", "10")[i % 3]      -> 4 / 4 / 4
    glasses     no, yes                     "yes" if i < 3 else "no"     -> 9 / 3
    ==========  ==========================  =====================================

    Returns a ``TinyDataset`` with ``root``, ``labels``, ``tasks``, ``classes`` (task -> vocabulary)
    and ``rows`` (one ``{"path", "gender", "age", "glasses"}`` dict per image, in file order; the
    labels-file row number of ``rows[i]`` is ``i + 2``).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from PIL import Image

MakeImage = Callable[..., Path]


def _pattern(path: Path, size: tuple[int, int], mode: str) -> Image.Image:
    w, h = size
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    rgb = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
    return rgb if mode == "RGB" else rgb.convert(mode)


def _make_image(path: Path | str, size: tuple[int, int] = (16, 16), mode: str = "RGB",
                color: Any = None, **save_kwargs: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = _pattern(path, size, mode) if color is None else Image.new(mode, size, color)
    image.save(path, **save_kwargs)
    return path


@pytest.fixture
def make_image() -> MakeImage:
    """Factory that writes one small image; see the module docstring."""
    return _make_image


@dataclass(frozen=True)
class TinyDataset:
    root: Path
    labels: Path
    tasks: tuple[str, ...]
    classes: dict[str, tuple[str, ...]]
    rows: list[dict[str, str]]

    @property
    def paths(self) -> list[str]:
        return [r["path"] for r in self.rows]


@pytest.fixture
def tiny_csv_dataset(tmp_path: Path) -> TinyDataset:
    """12 labelled 16x16 images (PNG/JPEG) in 3 tasks with labels.csv; see the module docstring."""
    root = tmp_path / "tiny"
    rows = []
    for i in range(12):
        name = f"img_{i:02d}.{'png' if i % 2 == 0 else 'jpg'}"
        rel = name if i < 8 else f"more/{name}"
        _make_image(root / rel)
        rows.append({"path": rel, "gender": ("female", "male")[i % 2], "age": ("2", "9", "10")[i % 3],
                     "glasses": "yes" if i < 3 else "no"})
    tasks = ("gender", "age", "glasses")
    labels = root / "labels.csv"
    labels.write_text("path," + ",".join(tasks) + "\n"
                      + "".join(",".join(r[k] for k in ("path", *tasks)) + "\n" for r in rows))
    classes = {"gender": ("female", "male"), "age": ("2", "9", "10"), "glasses": ("no", "yes")}
    return TinyDataset(root, labels, tasks, classes, rows)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """verify caches clean baselines under MTLUE_CACHE_DIR: keep tests out of the user's cache."""
    monkeypatch.setenv("MTLUE_CACHE_DIR", str(tmp_path / "mtlue-cache"))


@pytest.fixture()
def one_thread():
    """Torch on one thread: tiny tensors gain nothing from threads, and on a busy 2-core machine spinning
    threads cost seconds."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
