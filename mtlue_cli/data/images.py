"""Image files: which files under a root are images, decoding them upright, and writing protected copies.

δ is computed at the generator's working size, upsampled bilinearly (a convex combination, so it cannot
overshoot ±ε), clipped to ±ε again, added to the full-resolution original and ROUNDED to uint8 (ecosystem
§1.3-1.5, §3.4; the official export floors, method-spec §13.3). That happens in bands of rows, so a
24-megapixel photo costs a few megabytes of float buffers on top of its pixels, whatever its size.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from mtlue_cli.errors import FileProblem
from mtlue_cli.files import atomic_write

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".heic", ".heif", ".avif"}
)
EXTENSIONS = {"png": ".png", "webp": ".webp", "jpeg": ".jpg"}  # output formats
XMP_NO_AI = (
    '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    '<rdf:Description rdf:about="" xmlns:plus="http://ns.useplus.org/ldf/xmp/1.0/">'
    "<plus:DataMining>http://ns.useplus.org/ldf/vocab/DMI-PROHIBITED-AIMLTRAINING</plus:DataMining>"
    '</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
)
SAFE_EXIF_TAGS = (0x013B, 0x8298)  # Artist, Copyright: kept by --metadata keep-safe
BAND_PIXELS = 1 << 18  # pixels per band of rows: ~3 MB per float32 RGB buffer
# Protected PNGs use zlib's run-length strategy: δ leaves few long repeats for the default LZ77 search to find, which
# spent 4-6x the time on photos for files 1-2% larger (UTKFace, 200-1000 px; benchmarks/RESULTS.md). The cost: text
# and line art, whose repeats survive δ, come out up to ~30% larger.
PROTECTED_PNG = {"compress_type": zlib.Z_RLE}


# ----------------------------------------------------------------------------- files under a root


def is_image_file(path: Path | str) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def safe_path(root: Path, rel: str, row: int | None = None) -> Path:
    """Resolve `rel` under `root`, refusing absolute paths, `..` and symlinks that leave the root."""
    text = rel.strip().replace("\\", "/")
    if not text:
        raise FileProblem("(empty)", "empty path", row)
    pure = PurePosixPath(text)
    if pure.is_absolute() or PureWindowsPath(rel).drive:
        raise FileProblem(rel, "absolute paths are not allowed; write it relative to the image root", row)
    if ".." in pure.parts:
        raise FileProblem(rel, "path escapes the image root ('..'); move the file under the root", row)
    full = root / pure
    try:
        real = full.resolve(strict=False)
    except (OSError, RuntimeError):
        raise FileProblem(rel, "symlink loop; remove or fix the link", row) from None
    if not real.is_relative_to(root.resolve()):
        raise FileProblem(rel, "symlink points outside the image root; copy the file in instead", row)
    return full


def scan_images(root: Path) -> list[str]:
    """All image files under `root` (relative POSIX paths, sorted), following no links out."""
    found: list[str] = []
    # Symlinked directories are not followed; symlinked files are listed and checked by safe_path.
    # Hidden entries (.DS_Store, .thumbnails, temp files of an interrupted write) are not images.
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(
            (Path(dirpath) / name).relative_to(root).as_posix()
            for name in sorted(filenames)
            if is_image_file(name) and not name.startswith(".")
        )
    return found


def median_short_side(root: Path, paths: list[str], sample: int = 64) -> int | None:
    """Median shorter side of up to `sample` of the images (headers only): the images' own resolution."""
    sides = []
    for rel in paths[:: max(1, len(paths) // sample)][:sample]:
        try:
            with Image.open(root / rel) as img:
                sides.append(min(img.size))
        except (OSError, Image.DecompressionBombError):  # a file the decode will report; no size from it
            continue
    return sorted(sides)[len(sides) // 2] if sides else None


# ----------------------------------------------------------------------------- decoding


@dataclass
class Decoded:
    """An upright image split into what gets perturbed (RGB or L) and what is re-attached (alpha)."""

    image: Image.Image  # RGB, or L for grayscale inputs (perturbed as grey: see `protect_image`)
    alpha: Image.Image | None
    source_mode: str
    exif_rotated: bool
    info: dict[str, Any]  # icc_profile, exif bytes, format
    array: np.ndarray | None = None  # the float original (H, W, 3) of a .npy image (NYUv2), which protect writes back


def open_array(path: Path) -> Decoded:
    """A `.npy` image as mtan/LibMTL keep NYUv2: (H, W, 3) float in [0, 1] (or uint8). `image` holds it rounded to
    8 bits, `array` the original (float32). Loaded with allow_pickle=False: never unpickle a data file."""
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise FileProblem(str(path), "file disappeared while reading") from None
    except (OSError, ValueError) as exc:
        raise FileProblem(str(path), f"not a NumPy array file, or a pickled one ({exc})") from None
    if arr.ndim != 3 or arr.shape[-1] != 3 or arr.dtype.kind not in "uf":
        raise FileProblem(str(path), f"a .npy image must be (H, W, 3) float in [0, 1] or uint8; got {arr.dtype} "
                          f"{arr.shape}")
    if arr.dtype == np.uint8:
        pixels, original = arr, arr.astype(np.float32) / 255
    else:
        original = arr.astype(np.float32)
        if not np.isfinite(original).all() or original.min(initial=0) < -1e-3 or original.max(initial=0) > 1 + 1e-3:
            raise FileProblem(str(path), "a float .npy image must hold values in [0, 1] (mtan's NYUv2 images); "
                              f"found {np.nanmin(original):g}..{np.nanmax(original):g}")
        pixels = np.clip(np.rint(original * 255), 0, 255).astype(np.uint8)
    return Decoded(Image.fromarray(np.ascontiguousarray(pixels), "RGB"), None, "npy", False, {"format": "NPY"},
                   original)


def open_image(path: Path) -> Decoded:
    """Decode fully (so truncation surfaces here), apply EXIF orientation, normalise the mode."""
    if path.suffix.lower() == ".npy":
        return open_array(path)
    try:
        # The file is opened here, not by Pillow: closing it after load() keeps the pixels, where closing a
        # Pillow-opened image frees them (and a copy would double a large photo's memory).
        with open(path, "rb") as fh:
            im = Image.open(fh)
            im.load()
            orientation = im.getexif().get(0x0112, 1) if hasattr(im, "getexif") else 1
            upright = ImageOps.exif_transpose(im) if orientation not in (None, 1) else im
            # EXIF from the transposed image: exif_transpose resets its Orientation tag to 1.
            info = {"format": im.format, "icc_profile": im.info.get("icc_profile"), "exif": upright.info.get("exif")}
    except FileNotFoundError:
        raise FileProblem(str(path), "file disappeared while reading") from None
    except PermissionError:
        raise FileProblem(str(path), "permission denied; make the file readable") from None
    except Image.DecompressionBombError as exc:
        raise FileProblem(str(path), f"too many pixels for a safe decode ({exc})") from None
    except UnidentifiedImageError:
        raise FileProblem(str(path), "not an image Pillow can read (corrupt or wrong extension)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise FileProblem(str(path), f"corrupt or truncated image ({exc})") from None
    source_mode = upright.mode
    alpha = None
    if upright.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: scale to 8 bits (Pillow's convert('L') would clip above 255).
        arr = np.asarray(upright, dtype=np.float64)
        top = 65535.0  # by the bit depth, not the content: a dark 16-bit frame stays dark
        upright = Image.fromarray(np.clip(np.rint(arr * 255.0 / top), 0, 255).astype(np.uint8), "L")
    elif upright.mode == "P":
        upright = upright.convert("RGBA") if "transparency" in upright.info else upright.convert("RGB")
    if upright.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        alpha = upright.getchannel("A")
        upright = upright.convert("RGB") if upright.mode in ("RGBA", "RGBa", "PA") else upright.convert("L")
    elif upright.mode == "1":
        upright = upright.convert("L")
    elif upright.mode not in ("RGB", "L"):
        upright = upright.convert("RGB")  # CMYK, YCbCr, LAB, F...
    return Decoded(upright, alpha, source_mode, orientation not in (None, 1), info)


def decode(root: Path, path: str, row: int | None = None) -> Decoded:
    """`open_image(root / path)`, its problem named by the labelled path and labels row, not the full path."""
    try:
        return open_image(root / path)
    except FileProblem as problem:
        raise FileProblem(path, problem.reason, row) from None


def to_working(image: Image.Image, size: int) -> Image.Image:
    """Square RGB at the working size. The whole frame is resized (no crop) so δ maps back 1:1."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    return rgb.resize((size, size), Image.Resampling.BILINEAR)


# ----------------------------------------------------------------------------- δ onto the original


def band_rows(width: int, rows: int | None = None) -> int:
    """Rows per band: `rows`, or as many as make BAND_PIXELS."""
    return max(1, rows if rows is not None else BAND_PIXELS // max(width, 1))


def _linear(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear taps and weights along one axis, align_corners=False (as torch's F.interpolate)."""
    src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = np.clip(src - i0, 0.0, 1.0).astype(np.float32)
    return i0, i1, np.float32(1) - w1, w1


class Upsampler:
    """δ (C,S,S) at the working size -> rows of its (C,H,W) bilinear upsample, clipped to ±ε, in 1/255 units.

    The weights of a row do not depend on which rows are asked for, so a band is bit-identical to the same
    rows of the whole image."""

    def __init__(self, delta: Any, height: int, width: int, epsilon: float) -> None:
        d = np.asarray(delta, dtype=np.float32)  # (C,S,S)
        c0, c1, u0, u1 = _linear(width, d.shape[-1])
        self.wide = d[..., c0] * u0 + d[..., c1] * u1  # (C,S,W): the horizontal pass, once per image
        self.r0, self.r1, self.v0, self.v1 = _linear(height, d.shape[-2])
        self.epsilon = np.float32(epsilon)

    def rows(self, start: int, stop: int) -> np.ndarray:
        v0, v1 = self.v0[start:stop, None], self.v1[start:stop, None]
        up = self.wide[:, self.r0[start:stop]] * v0 + self.wide[:, self.r1[start:stop]] * v1  # (C,rows,W)
        return np.clip(up, -self.epsilon, self.epsilon) * np.float32(255)


def upsample(delta: Any, height: int, width: int, epsilon: float) -> np.ndarray:
    """δ (C,S,S) at the working size -> (C,H,W) in 1/255 units, bilinear, clipped to ±ε (the whole image)."""
    return Upsampler(delta, height, width, epsilon).rows(0, height)


def add_delta(original: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """Add δ (C,h,w) in 1/255 units to original pixels (h,w[,3]) uint8; round, clip to uint8.

    Grayscale images stay single-channel: their δ is the luma combination of the RGB δ (weights sum
    to 1, so it stays within ±ε)."""
    if original.ndim == 2:
        d = delta[0] if delta.shape[0] == 1 else 0.299 * delta[0] + 0.587 * delta[1] + 0.114 * delta[2]
    else:
        d = np.repeat(delta, 3, axis=0) if delta.shape[0] == 1 else delta
        d = d.transpose(1, 2, 0)
    return np.clip(np.rint(original.astype(np.float32) + d), 0, 255).astype(np.uint8)


def compose(decoded: Decoded, delta: np.ndarray) -> np.ndarray:
    """The whole upright original plus an upsampled δ (C,H,W) in 1/255 units, as uint8 pixels."""
    return add_delta(np.asarray(decoded.image), delta)


def rows_of(image: Image.Image, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of `image` as an array, without converting the rest of it."""
    return np.asarray(image.crop((0, start, image.width, stop)))


def protect_image(image: Image.Image, delta: Any, epsilon: float, rows: int | None = None) -> Image.Image:
    """`image` (RGB or L) + δ (C,S,S) upsampled to its size, clipped to ±ε, rounded: a new image of the same
    mode, made in bands of `rows` rows (default: BAND_PIXELS a band). Equal to `compose(upsample(...))`."""
    width, height = image.size
    up = Upsampler(delta, height, width, epsilon)
    out = Image.new(image.mode, image.size)
    step = band_rows(width, rows)
    for start in range(0, height, step):
        stop = min(height, start + step)
        out.paste(Image.fromarray(add_delta(rows_of(image, start, stop), up.rows(start, stop)), image.mode), (0, start))
    return out


# ----------------------------------------------------------------------------- encoding


def metadata_kwargs(decoded: Decoded, metadata: str, tag_no_ai: bool, fmt: str) -> dict[str, Any]:
    """Pillow save arguments for --metadata strip|keep-safe|keep-all and --tag-no-ai."""
    kwargs: dict[str, Any] = {}
    if metadata in ("keep-safe", "keep-all"):
        if decoded.info.get("icc_profile"):
            kwargs["icc_profile"] = decoded.info["icc_profile"]
        if decoded.info.get("exif"):
            source = Image.Exif()
            source.load(decoded.info["exif"])
            exif = Image.Exif()
            if metadata == "keep-all":
                for tag, value in source.items():
                    exif[tag] = value
                # GPS and other IFDs travel with keep-all only.
                for ifd in (0x8825, 0x8769):
                    if ifd in source:
                        exif[ifd] = source[ifd]
            else:
                for tag in SAFE_EXIF_TAGS:
                    if tag in source:
                        exif[tag] = source[tag]
            exif[0x0112] = 1  # pixels are written upright
            kwargs["exif"] = exif.tobytes()
    if tag_no_ai:
        if fmt == "png":
            kwargs["pnginfo"] = no_ai_pnginfo()
        else:
            kwargs["xmp"] = XMP_NO_AI.encode()
    return kwargs


def no_ai_pnginfo() -> PngImagePlugin.PngInfo:
    """The IPTC/PLUS 'prohibited for AI/ML training' XMP field, as a PNG text chunk."""
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", XMP_NO_AI)
    return info


def save_image(image: Image.Image, alpha: Image.Image | None, path: Path, fmt: str, quality: int,
               meta: dict[str, Any]) -> None:
    """Write `image` (+ alpha) losslessly as png/webp, or as jpeg at `quality`; atomically."""
    if alpha is not None:
        if fmt == "jpeg":
            raise FileProblem(str(path), "has transparency, which JPEG cannot store; use --format png or webp")
        image.putalpha(alpha)
    if fmt == "png":
        write = lambda tmp: image.save(tmp, "PNG", **meta)  # noqa: E731
    elif fmt == "webp":
        write = lambda tmp: image.save(tmp, "WEBP", lossless=True, quality=100, method=4, exact=True, **meta)  # noqa: E731
    else:
        write = lambda tmp: image.save(tmp, "JPEG", quality=quality, subsampling=0, **meta)  # noqa: E731
    try:
        atomic_write(path, write)
    except OSError as exc:
        raise FileProblem(str(path), f"cannot write ({exc.strerror or exc}); check free space and permissions") from None
