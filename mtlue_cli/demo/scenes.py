"""A synthetic dense multi-task set (issue 28): rooms with a few objects standing on the floor, labelled per
pixel with the object's class (set by its shape), the depth and the surface normal, plus a per-image class
(how many objects). No download, no data of the user's own.

The scene is a pinhole view (focal length = the image side) of a frontal wall and a floor seen at a random
pitch (the horizon's row): depth comes from the geometry (floor rows nearer the bottom are nearer, each object
stands on the floor where its foot is drawn, so lower objects are nearer and larger), occlusion follows the
depth order, and a trivial per-pixel median depth is informative but blurred by the random horizon and wall.
An object's class is its shape (sphere, cube, pyramid); colours are random, shading follows the normals under
a random light, and an illumination ramp and sensor noise sit on top, so neither colour nor position gives
the class away. Design choices measured in benchmarks/dense.py (benchmarks/RESULTS.md, "Dense tasks").

Layouts:
- "voc": `images/NNNN.png` (RGB), `segmentation/NNNN.png` (palette PNG, pixel = class index, 255 = void on
  object borders) with `id2label.json` beside them, `depth/NNNN.png` (16-bit, millimetres, 0 = invalid), `normals/NNNN.png`
  (RGB = (n + 1) * 127.5, the zero vector where invalid), and `labels.csv` (path, count), written last.
- "nyuv2": mtan / LibMTL's per-sample `.npy`: `image/N.npy` float32 (H, W, 3) in [0, 1], `label/N.npy` int64
  (H, W) with -1 ignored, `depth/N.npy` float32 (H, W, 1) metres with 0 invalid, `normal/N.npy` float32
  (H, W, 3) with the zero vector invalid. No classification column.
Normals are camera coordinates: x right, y up, z towards the camera.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mtlue_cli.files import atomic_write, write_text

CLASSES = ("background", "sphere", "cube", "pyramid")  # segmentation class index = position
COUNTS = ("1", "2", "3")  # the classification column: objects in the scene
VOID = 255  # VOC's "void" label on object borders
LAYOUTS = ("voc", "nyuv2")


@dataclass(frozen=True)
class SceneDesign:
    """What the scenes vary; the defaults are the design benchmarks/dense.py measured as fair (RESULTS.md)."""

    radius: tuple[float, float] = (0.35, 0.6)  # object half-size, metres
    # A fixed camera height and wall distance make depth readable from the image (the wall-floor edge gives the
    # horizon); a random height or wall leaves it ambiguous, and the victim could not halve the trivial error.
    camera_height: tuple[float, float] = (1.2, 1.2)  # metres
    horizon: tuple[float, float] = (-0.25, 0.5)  # row of the horizon (the camera's pitch), fraction of the side
    wall: tuple[float, float] = (6.0, 6.0)  # wall distance, metres
    far: float = 5.0  # objects stand at most this far (and 0.4 m before the wall), metres
    ramp: tuple[float, float] = (20.0, 60.0)  # illumination ramp end to end, levels
    noise: float = 4.0  # sensor noise sigma, levels
    posters: int = 2  # at most this many flat rectangles on the wall (background, not objects)
    missing: float = 0.5  # share of scenes with a patch of missing depth
    min_visible: float = 0.5  # an occluded object keeps at least this share of its pixels


def _palette() -> list[int]:
    # VOC's colour map (bit interleaving of the class index), the one its SegmentationClass PNGs carry.
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _object(shape: str, u: np.ndarray, v: np.ndarray, cx: float, cy: float, r: float, z: float, radius: float):
    """Mask, depth (metres) and normals of one object whose image centre is (cx, cy) and pixel half-size r."""
    dx, dy = (u - cx) / r, (v - cy) / r
    normal = np.zeros(u.shape + (3,))
    if shape == "sphere":
        rho2 = dx**2 + dy**2
        mask = rho2 < 1
        front = np.sqrt(np.clip(1 - rho2, 0, 1))
        normal[...] = np.stack([dx, -dy, front], axis=-1)
        depth = z - radius * front
    elif shape == "cube":
        # The front face, and above it the top face seen from the camera above (a band a third as high).
        front = (np.abs(dx) < 1) & (dy > -1) & (dy < 1)
        top = (np.abs(dx) < 1) & (dy <= -1) & (dy > -1.35)
        mask = front | top
        normal[front] = (0, 0, 1)
        normal[top] = (0, 1, 0)
        depth = np.where(top, z - radius * (1 + 2 * (dy + 1) / 0.35), z - radius)
    else:  # pyramid: two faces meeting at a ridge towards the camera
        mask = (dy < 1) & (np.abs(dx) < (dy + 1) / 2)
        normal[...] = _unit(np.stack([np.sign(dx) * 0.6, np.full_like(dx, 0.35), np.full_like(dx, 0.72)], axis=-1))
        depth = z - radius * (1 - np.minimum(1, np.abs(dx)))
    return mask, depth, normal


def render_scene(rng: np.random.Generator, size: int, design: SceneDesign = SceneDesign()) -> dict[str, np.ndarray]:
    """One scene: image uint8 (S, S, 3), label uint8 (S, S) with VOID on borders, depth float (S, S) metres with
    0 invalid, normal float (S, S, 3) with the zero vector invalid, count (objects in the scene)."""
    v, u = np.mgrid[0:size, 0:size] + 0.5  # pixel centres, v down
    f = float(size)
    while True:
        hc = rng.uniform(*design.camera_height)
        horizon = rng.uniform(*design.horizon) * size
        wall = rng.uniform(*design.wall)
        junction = horizon + hc * f / wall
        if junction < 0.7 * size:
            break
    floor = v > junction
    depth = np.where(floor, hc * f / np.maximum(v - horizon, 1e-6), wall)
    normal = np.zeros((size, size, 3))
    normal[floor] = (0, 1, 0)
    normal[~floor] = (0, 0, 1)
    albedo = np.where(floor[..., None], rng.uniform(40, 220, 3), rng.uniform(40, 220, 3))
    # Floor boards: stripes at fixed depth steps (a perspective cue); posters: flat rectangles on the wall.
    period = rng.uniform(0.4, 0.8)
    albedo = albedo * np.where(floor, 1 + 0.08 * np.sign(np.sin(2 * np.pi * depth / period)), 1)[..., None]
    for _ in range(rng.integers(0, design.posters + 1)):
        w, h = rng.uniform(0.1, 0.3, 2) * size
        x0, y0 = rng.uniform(0, size - w), rng.uniform(0, max(junction - h, 1))
        poster = (u > x0) & (u < x0 + w) & (v > y0) & (v < y0 + h) & ~floor
        albedo[poster] = rng.uniform(40, 220, 3)
    label = np.zeros((size, size), np.int64)

    count = int(rng.integers(1, len(COUNTS) + 1))
    near = hc * f / (size - horizon)  # depth of the bottom row
    for _ in range(100):  # place `count` objects, each keeping min_visible of itself
        objects = []
        for _ in range(count):
            shape = int(rng.integers(1, len(CLASSES)))
            radius = rng.uniform(*design.radius)
            z = rng.uniform(near + 0.2, max(near + 0.3, min(design.far, wall - 0.4)))
            r = radius * f / z
            foot = horizon + hc * f / z
            cx = rng.uniform(r, size - r)
            objects.append((z, shape, radius, r, cx, foot - r))
        objects.sort(reverse=True)  # far first: nearer objects are painted over them
        masks, owner = [], np.full((size, size), -1)
        for i, (z, shape, radius, r, cx, cy) in enumerate(objects):
            m, _, _ = _object(CLASSES[shape], u, v, cx, cy, r, z, radius)
            masks.append(m)
            owner[m] = i
        if all(m.sum() > 0 and (owner[m] == i).mean() >= design.min_visible for i, m in enumerate(masks)):
            break
    for i, (z, shape, radius, r, cx, cy) in enumerate(objects):
        m, d, n = _object(CLASSES[shape], u, v, cx, cy, r, z, radius)
        label[m], depth[m], normal[m] = shape, d[m], n[m]
        albedo[m] = rng.uniform(40, 220, 3)

    light = _unit(np.array([rng.uniform(-0.6, 0.6), rng.uniform(0.2, 0.8), rng.uniform(0.5, 1.0)]))
    shade = 0.45 + 0.55 * np.clip(normal @ light, 0, None)
    theta, amplitude = rng.uniform(0, 2 * np.pi), rng.uniform(*design.ramp)
    ramp = amplitude * ((u / size - 0.5) * np.cos(theta) + (v / size - 0.5) * np.sin(theta))
    pixels = albedo * shade[..., None] + ramp[..., None] + rng.normal(0, design.noise, (size, size, 3))
    image = np.clip(np.round(pixels), 0, 255).astype(np.uint8)

    # VOC-style void: object pixels next to a pixel of another label.
    padded = np.pad(label, 1, mode="edge")
    border = np.zeros_like(floor)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        border |= padded[dy : dy + size, dx : dx + size] != label
    label = np.where(border & (label > 0), VOID, label).astype(np.uint8)
    if rng.random() < design.missing:  # a patch the sensor did not return
        h, w = (rng.uniform(0.08, 0.2, 2) * size).astype(int) + 1
        y0, x0 = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
        depth[y0 : y0 + h, x0 : x0 + w] = 0
        normal[y0 : y0 + h, x0 : x0 + w] = 0
    return {"image": image, "label": label, "depth": depth.astype(np.float32), "normal": normal.astype(np.float32),
            "count": count}


def _png(path: Path, image: Image.Image) -> None:
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def _npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("wb") as fh:  # a file object: np.save would append ".npy" to the temporary's name
            np.save(fh, array)

    atomic_write(path, write)


def make_scenes(out: Path, n: int = 300, size: int = 64, seed: int = 0, layout: str = "voc", normals: bool = True,
                design: SceneDesign = SceneDesign()) -> Path:
    """Write `n` scenes of `size` px under `out` in `layout` ("voc" or "nyuv2", module docstring); returns `out`.

    Scene i depends only on (seed, i), so a larger `n` extends a smaller set. Every file is written atomically;
    in the VOC layout labels.csv comes last, so its presence means the set is complete."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}: use one of {', '.join(LAYOUTS)}")
    if size < 8:
        raise ValueError(f"size must be at least 8 px, got {size}")
    out = Path(out)
    folders = {"voc": ("images", "segmentation", "depth", "normals"), "nyuv2": ("image", "label", "depth", "normal")}
    for folder in folders[layout][: 4 if normals else 3]:
        (out / folder).mkdir(parents=True, exist_ok=True)
    palette = _palette()
    rows = []
    for i in range(n):
        scene = render_scene(np.random.default_rng([seed, i]), size, design)
        if layout == "nyuv2":
            name = f"{i}.npy"
            _npy(out / "image" / name, scene["image"].astype(np.float32) / 255)
            label = scene["label"].astype(np.int64)
            _npy(out / "label" / name, np.where(label == VOID, -1, label))
            _npy(out / "depth" / name, scene["depth"][..., None])
            if normals:
                _npy(out / "normal" / name, scene["normal"])
            continue
        name = f"{i:04d}.png"
        _png(out / "images" / name, Image.fromarray(scene["image"]))
        seg = Image.fromarray(scene["label"])
        seg.putpalette(palette)  # "L" -> "P": pixel values stay the class indices
        _png(out / "segmentation" / name, seg)
        _png(out / "depth" / name, Image.fromarray(np.round(scene["depth"] * 1000).astype(np.uint16)))
        if normals:
            rgb = np.round((scene["normal"] + 1) * 127.5).clip(0, 255).astype(np.uint8)
            _png(out / "normals" / name, Image.fromarray(rgb))
        rows.append((name, COUNTS[scene["count"] - 1]))
    if layout == "nyuv2":
        return out
    # Beside the maps, where `--map seg=segmentation:DIR` looks for class names (data.dense_labels).
    write_text(out / "segmentation" / "id2label.json",
               json.dumps({str(i): c for i, c in enumerate(CLASSES)}, indent=2) + "\n")

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", "count"])
            writer.writerows(rows)

    atomic_write(out / "labels.csv", write)
    return out
