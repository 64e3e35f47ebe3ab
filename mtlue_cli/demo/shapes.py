"""The demo's synthetic multi-task image set: a faint figure on a coloured background with three tasks: shape (round/wide/tall), size (small/large)
and position (top/bottom). No download, no data of the user's own.
"""

from __future__ import annotations

import csv
import math
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mtlue_cli.files import atomic_write

# Coarse shapes (the aspect of an ellipse): at 32 px the victim's ImageNet stem keeps an 8x8 map after its
# first layers, where a circle, a square and a triangle of 5 px hardly differ (clean victims learnt them only
# 7-14 points above the majority class); round/wide/tall they learn 30+ points above it.
SHAPES = {"round": (1.0, 1.0), "wide": (1.3, 0.6), "tall": (0.6, 1.3)}  # (x, y) radius factors
SIZES = {"small": (0.14, 0.18), "large": (0.27, 0.30)}  # radius as a fraction of the side
POSITIONS = ("top", "bottom")  # vertical: victims flip horizontally (method-spec §6.3)


def make_shapes(out: Path, n: int = 800, size: int = 32, seed: int = 0, contrast: tuple[int, int] = (24, 34),
                ramp: tuple[int, int] = (30, 60), noise: float = 3.0) -> Path:
    """Write `n` PNGs and labels.csv (path, shape, size, position) under `out`; returns `out`.

    Colours are random, so no task can be read off a colour: every task needs a look at the figure,
    which is what an 8/255 shortcut has to beat. `contrast`: how much lighter (levels, per channel) the
    figure is than its background; at 24-34 clean-trained victims learn every task 20+ points above the
    majority class, while a figure 35-50 levels off its background is a cue the 8/255 generators we fitted
    did not displace. `ramp` (levels, end to end, random direction) and `noise` (sigma, levels) light the
    scene like a photo: on a flat background a 2-bit depth reduction erases an 8/255 perturbation
    in most images and leaves the figure, so the fitted perturbations did not survive that squeeze
    (benchmarks/RESULTS.md)."""
    rng = random.Random(seed)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
    rows = []
    for i in range(n):
        shape, scale, position = rng.choice(list(SHAPES)), rng.choice(list(SIZES)), rng.choice(POSITIONS)
        base = tuple(rng.randint(40, 215) for _ in range(3))
        img = Image.new("RGB", (size, size), base)
        draw = ImageDraw.Draw(img)
        # one faint blob of clutter, so the figure is not the only thing on the background
        x, y, r = rng.randint(0, size), rng.randint(0, size), rng.randint(1, size // 12)
        tone = tuple(min(255, max(0, c + rng.randint(-25, 25))) for c in base)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tone)
        r = size * rng.uniform(*SIZES[scale])
        rx, ry = r * SHAPES[shape][0], r * SHAPES[shape][1]
        half = size / 2
        cy = rng.uniform(ry, half - 0.25 * ry) if position == "top" else rng.uniform(half + 0.25 * ry, size - ry)
        cx = rng.uniform(rx, size - rx)
        fill = tuple(min(255, c + rng.randint(*contrast)) for c in base)
        draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=fill)
        theta, amplitude = rng.uniform(0, 2 * math.pi), rng.uniform(*ramp)
        light = amplitude * (xx * math.cos(theta) + yy * math.sin(theta))
        light = light + np.random.default_rng(rng.randrange(2**32)).normal(0, noise, (size, size))
        pixels = np.asarray(img, dtype=np.float64) + light[..., None]
        name = f"{i:04d}.png"
        Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8)).save(images / name)
        rows.append((name, shape, scale, position))

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", "shape", "size", "position"])
            writer.writerows(rows)

    atomic_write(out / "labels.csv", write)  # written last, and whole: its presence means the set is complete
    return out
