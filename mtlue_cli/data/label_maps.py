"""Label-map files: reading one map, by its task's kind, into the in-memory conventions of data.kinds (at the
file's own size), checking it against its image, and the class names of an `id2label.json`.

How owners keep them (ecosystem §2.13): segmentation as an index or palette PNG (pixel value = class index, read
with `np.array(Image.open(p))` and NEVER `.convert()`, which would map indices to colours; VOC's void is 255) or
an integer/float `.npy` (mtan's NYUv2: -1 = void); depth as a 16-bit PNG holding depth x scale (NYU mm: 1000,
KITTI: 256) or a float `.npy`, 0 or NaN = invalid; normals as an RGB PNG (rgb / 127.5 - 1) or a float `.npy`,
the zero vector = invalid. `.npy` files are loaded with allow_pickle=False: never unpickle a data file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from mtlue_cli.errors import DatasetError, FileProblem

MAP_SUFFIXES = (".png", ".npy", ".tif", ".tiff", ".bmp")  # what a label map may be stored as
ID2LABEL = "id2label.json"
INDEX_MODES = ("P", "L", "1", "I", "I;16", "I;16B", "I;16L")  # modes whose pixel values are indices
DEPTH_MODES = ("I", "I;16", "I;16B", "I;16L", "F", "L")


@dataclass(frozen=True)
class MapReading:
    """How to read the files (DataConfig's `ignore_index` and `depth_scale`)."""

    ignore_index: int = 255  # the files' void value (segmentation); .npy also marks void with any negative value
    depth_scale: float = 1.0  # stored value / depth_scale = depth, for every depth file


def _load(path: Path, name: str, row: int | None) -> np.ndarray | Image.Image:
    """The raw array of a .npy, or the loaded (unconverted) image of any other map file."""
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False)
        with open(path, "rb") as fh:
            image = Image.open(fh)
            image.load()
            return image
    except FileNotFoundError:
        raise FileProblem(name, "label map not found; every image needs one", row) from None
    except PermissionError:
        raise FileProblem(name, "permission denied; make the label map readable", row) from None
    except UnidentifiedImageError:
        raise FileProblem(name, "not an image Pillow can read (corrupt or wrong extension)", row) from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise FileProblem(name, f"cannot read the label map ({exc})", row) from None


def _plane(arr: np.ndarray, name: str, row: int | None, what: str) -> np.ndarray:
    """(H, W), (H, W, 1) or (1, H, W) -> (H, W)."""
    if arr.ndim == 3 and 1 in (arr.shape[0], arr.shape[-1]):
        arr = arr[..., 0] if arr.shape[-1] == 1 else arr[0]
    if arr.ndim != 2:
        raise FileProblem(name, f"a {what} map must be one value per pixel (H, W); got an array of shape {arr.shape}",
                          row)
    return arr


def _segmentation(raw: np.ndarray | Image.Image, name: str, row: int | None, reading: MapReading,
                  classes: int | None) -> np.ndarray:
    if isinstance(raw, Image.Image):
        if raw.mode not in INDEX_MODES:
            raise FileProblem(name, f"a {raw.mode} colour mask without a palette: class indices cannot be read from "
                              "colours; save it as a palette (P) or greyscale (L) PNG whose pixel values are the "
                              "class indices", row)
        arr = np.array(raw).astype(np.int64)  # P: the palette indices themselves
        void = arr == reading.ignore_index
    else:
        arr = _plane(raw, name, row, "segmentation")
        if arr.dtype.kind == "f":
            finite = np.isfinite(arr)
            if (finite & (arr != np.round(arr))).any():
                raise FileProblem(name, "a segmentation map must hold whole class indices; found fractions", row)
            void = ~finite
            arr = np.where(finite, arr, -1).astype(np.int64)
        elif arr.dtype.kind in "iub":
            arr = arr.astype(np.int64)
            void = np.zeros(arr.shape, dtype=bool)
        else:
            raise FileProblem(name, f"a segmentation map must hold numbers, not {arr.dtype}", row)
        void |= (arr < 0) | (arr == reading.ignore_index)
    arr[void] = -1
    if classes is not None and (arr >= classes).any():
        top = int(arr.max())
        raise FileProblem(name, f"class index {top} is outside the task's {classes} classes (0..{classes - 1}); "
                          "if it marks void pixels set --ignore-index, else list it in id2label.json", row)
    return arr  # (H, W) int64, -1 void


def _depth(raw: np.ndarray | Image.Image, name: str, row: int | None, reading: MapReading) -> np.ndarray:
    if isinstance(raw, Image.Image):
        if raw.mode not in DEPTH_MODES:
            raise FileProblem(name, f"a {raw.mode} depth map: depth must be one channel (a 16-bit PNG, with "
                              "--depth-scale, or a float .npy)", row)
        arr = np.array(raw)
    else:
        arr = _plane(raw, name, row, "depth")
        if arr.dtype.kind not in "iuf":
            raise FileProblem(name, f"a depth map must hold numbers, not {arr.dtype}", row)
    d = arr.astype(np.float64) / reading.depth_scale
    d = np.where(np.isfinite(d) & (d > 0), d, 0.0)  # NaN, inf and non-positive depths are invalid: 0
    return d.astype(np.float32)[None]  # (1, H, W)


def _normals(raw: np.ndarray | Image.Image, name: str, row: int | None) -> np.ndarray:
    if isinstance(raw, Image.Image):
        if raw.mode not in ("RGB", "RGBA"):
            raise FileProblem(name, f"a {raw.mode} normals map: normals need an RGB image (rgb / 127.5 - 1) or a "
                              "float .npy (H, W, 3)", row)
        rgba = np.array(raw)
        n = rgba[..., :3].astype(np.float64) / 127.5 - 1
        # Black is how PNG normal maps mark "no normal" (the vector (-1,-1,-1)/sqrt 3 would be a real but unlikely
        # one), so are mid-grey (a near-zero vector) and transparent pixels.
        invalid = (rgba[..., :3] == 0).all(-1) | (np.linalg.norm(n, axis=-1) < 0.5)
        if raw.mode == "RGBA":
            invalid |= rgba[..., 3] == 0
        n = n.transpose(2, 0, 1)
    else:
        if raw.ndim != 3 or 3 not in (raw.shape[0], raw.shape[-1]) or raw.dtype.kind not in "iuf":
            raise FileProblem(name, f"a normals .npy must be numbers of shape (H, W, 3) or (3, H, W); got "
                              f"{raw.dtype} {raw.shape}", row)
        n = (raw.transpose(2, 0, 1) if raw.shape[-1] == 3 else raw).astype(np.float64)  # channels last first
        invalid = ~np.isfinite(n).all(0)
        n = np.where(invalid, 0.0, n)
    norm = np.linalg.norm(n, axis=0)
    invalid = invalid | (norm == 0)
    out = np.divide(n, norm, out=np.zeros_like(n), where=~invalid)
    return out.astype(np.float32)  # (3, H, W), unit or zero


def read_map(root: Path, name: str, kind: str, reading: MapReading = MapReading(), classes: int | None = None,
             row: int | None = None) -> np.ndarray:
    """The map `root / name` of a `kind` task at its own size, in data.kinds' conventions: segmentation (H, W)
    int64 with void = -1, its indices checked against `classes` when given; depth (1, H, W) float32, invalid 0;
    normals (3, H, W) float32, unit or zero. Problems are FileProblems that name `name` (and the labels `row`)."""
    raw = _load(root / name, name, row)
    if kind == "segmentation":
        return _segmentation(raw, name, row, reading, classes)
    if kind == "depth":
        return _depth(raw, name, row, reading)
    if kind == "normals":
        return _normals(raw, name, row)
    raise ValueError(f"{kind!r} is not a label-map kind")


def check_size(arr: np.ndarray, image_size: tuple[int, int], name: str, image: str, row: int | None = None) -> None:
    """A map must cover its image pixel for pixel: `image_size` is the upright image's (width, height)."""
    h, w = arr.shape[-2:]
    if (w, h) != tuple(image_size):
        iw, ih = image_size
        raise FileProblem(name, f"label map is {w}x{h} but its image {image} is {iw}x{ih}; a label map must match "
                          "its image pixel for pixel", row)


def read_id2label(path: Path) -> tuple[str, ...]:
    """Class names from a Hugging Face style `id2label.json` ({"0": "background", ...}); ids missing between 0 and
    the largest are named by their number."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read it as JSON ({exc}); it should map class ids to names") from None
    try:
        names = {int(k): str(v) for k, v in data.items()}
    except (AttributeError, ValueError):
        raise DatasetError(f"{path}: expected {{\"0\": \"name\", ...}} with whole-number ids") from None
    if not names or min(names) < 0:
        raise DatasetError(f"{path}: expected class ids 0, 1, ...; found {sorted(names)[:5]}")
    return tuple(names.get(i, str(i)) for i in range(max(names) + 1))
