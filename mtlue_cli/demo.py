"""The built-in demo: a synthetic multi-task image set, protected and verified end to end on the CPU.

Shapes in random colours on cluttered backgrounds with three tasks: shape (circle/square/triangle),
size (small/large) and position (top/bottom). No download, no data of the user's own.
"""

from __future__ import annotations

import csv
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFilter

from mtlue_cli.config import DataConfig, ProtectConfig, VerifyConfig
from mtlue_cli.events import OnEvent, log, noop
from mtlue_cli.files import atomic_write

SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
POSITIONS = ("top", "bottom")  # vertical: victims flip horizontally (method-spec §6.3)
DEMO_ALIAS = "demo-shapes"


def make_shapes(out: Path, n: int = 800, size: int = 32, seed: int = 0, contrast: tuple[int, int] = (30, 45)) -> Path:
    """Write `n` PNGs and labels.csv (path, shape, size, position) under `out`; returns `out`.

    Colours are random, so no task can be read off a colour: like faces, every task needs a look at
    the form of the figure, which is what an 8/255 shortcut has to beat. `contrast` is how far (in
    levels, per channel) the figure stands off its background: at the default 30-45 a clean-trained
    victim learns `position` to ~94% but `shape` and `size` only 7-12 points above the majority class;
    at 80-130 every task is easy, and no 8/255 perturbation we fitted displaced them (RESULTS.md)."""
    rng = random.Random(seed)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        shape, scale, position = rng.choice(SHAPES), rng.choice(SIZES), rng.choice(POSITIONS)
        base = tuple(rng.randint(40, 215) for _ in range(3))
        img = Image.new("RGB", (size, size), base)
        draw = ImageDraw.Draw(img)
        for _ in range(4):  # clutter, so the tasks are not one-pixel easy
            x, y, r = rng.randint(0, size), rng.randint(0, size), rng.randint(1, size // 12)
            tone = tuple(min(255, max(0, c + rng.randint(-25, 25))) for c in base)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=tone)
        img = img.filter(ImageFilter.GaussianBlur(0.6))
        draw = ImageDraw.Draw(img)
        r = size * (rng.uniform(0.16, 0.2) if scale == "small" else rng.uniform(0.27, 0.32))
        half = size / 2
        cy = rng.uniform(r, half - 0.25 * r) if position == "top" else rng.uniform(half + 0.25 * r, size - r)
        cx = rng.uniform(r, size - r)
        # Low contrast, like the cues in faces: strong enough to learn, weak enough for an 8/255 shortcut
        # to compete with (a 100-level figure is a cue no imperceptible perturbation displaces).
        fill = tuple(min(255, max(0, c + rng.choice((-1, 1)) * rng.randint(*contrast))) for c in base)
        if shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif shape == "square":
            draw.rectangle((cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85), fill=fill)
        else:  # pointing up or down, so a triangle never looks like a square's corner
            a = -math.pi / 2 if rng.random() < 0.5 else math.pi / 2
            draw.polygon([(cx + r * math.cos(a + k * 2 * math.pi / 3), cy + r * math.sin(a + k * 2 * math.pi / 3))
                          for k in range(3)], fill=fill)
        name = f"{i:04d}.png"
        img.save(images / name)
        rows.append((name, shape, scale, position))

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", "shape", "size", "position"])
            writer.writerows(rows)

    atomic_write(out / "labels.csv", write)  # written last, and whole: its presence means the set is complete
    return out


@dataclass
class DemoReport:
    data: Path
    protected: Path
    protect: Any  # ProtectReport
    verify: Any  # VerifyReport
    generator: str


def run_demo(out: Path, generator: str = DEMO_ALIAS, images: int = 800, epochs: int = 12, device: str = "auto",
             seed: int = 0, on_event: OnEvent | None = None) -> DemoReport:
    """Make the synthetic set, protect it with the shipped generator (80/20 holdout), verify it."""
    from mtlue_cli.hub import load_generator
    from mtlue_cli.protect import protect_dataset
    from mtlue_cli.verify import verify

    on_event = on_event or noop
    out = Path(out)
    data_dir = out / "data"
    if not (data_dir / "labels.csv").is_file():
        log(on_event, f"writing {images} synthetic images to {data_dir / 'images'}")
        make_shapes(data_dir, n=images, seed=seed)
    data = DataConfig(root=data_dir / "images", labels=data_dir / "labels.csv")
    protected = out / "protected"
    protect_cfg = ProtectConfig(holdout=0.2, seed=seed, device=device, overwrite=True, preview=6)
    protect_report = protect_dataset(load_generator(generator), data, protected, protect_cfg, on_event)
    # A fixed epoch count, not verify's time budget: the demo's verdict must not depend on how busy the machine is.
    verify_cfg = VerifyConfig(epochs=epochs, seed=seed, device=device, batch_size=64, time_budget=None,
                              defenses=("none", "grayscale", "jpeg10", "bdr2"))
    verify_report = verify(data, protected, verify_cfg, on_event=on_event)
    return DemoReport(data_dir, protected, protect_report, verify_report, generator)
