"""One protected file: δ upsampled onto the upright original, rounded, encoded, written atomically, read back
and measured (ecosystem §1.3-1.5, §3.4); and the preview a person looks at. `protect_dataset` runs
`write_protected` in its worker threads. Every step works in bands of rows (images.BAND_PIXELS), so what a
file costs beyond its own pixels is bounded whatever its size.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mtlue_cli.config import ProtectConfig
from mtlue_cli.data.images import (
    PROTECTED_PNG,
    Decoded,
    band_rows,
    metadata_kwargs,
    open_image,
    protect_image,
    rows_of,
    save_image,
    upsample,
)
from mtlue_cli.data.labels import Record
from mtlue_cli.errors import FileProblem
from mtlue_cli.files import atomic_write, file_sha256
from mtlue_cli.metrics import linf, psnr_of, squared_error, ssim, ssim_sum, ssim_window
from mtlue_cli.protect.outputs import FileResult

PREVIEW_CROP = 256  # px of the native-resolution files shown per tile (the centre of each image)
PREVIEW_TILE = 128  # smaller crops are enlarged, pixel-exact, to at least this
PREVIEW_FONT = 12  # px: the column names and row captions of the preview


def measure(written: Image.Image, original: Image.Image, rows: int | None = None) -> tuple[int, float, float]:
    """L-inf (1/255 units), PSNR and SSIM of `written` against `original` (same size and mode), in bands."""
    width, height = original.size
    step = band_rows(width, rows)
    worst, sse = 0, 0.0
    for start in range(0, height, step):
        a, b = rows_of(written, start, min(height, start + step)), rows_of(original, start, min(height, start + step))
        worst, sse = max(worst, linf(a, b)), sse + squared_error(a, b)
    mse = sse / (width * height * len(original.getbands()))
    window = ssim_window(height, width)
    if window < 3:
        return worst, psnr_of(mse), 1.0 if worst == 0 else float("nan")
    total, count = 0.0, 0
    for start in range(0, height - window + 1, step):
        stop = min(height, start + step + window - 1)  # the rows a band of SSIM map rows reads
        s, n = ssim_sum(rows_of(written, start, stop), rows_of(original, start, stop), window)
        total, count = total + s, count + n
    return worst, psnr_of(mse), total / count


def _read_back(path: Path, mode: str) -> tuple[Image.Image, Image.Image | None]:
    """The written file's pixels in the original's mode, and its alpha channel if it has one."""
    with open(path, "rb") as fh:  # opened here, so the loaded pixels outlive the file (see images.open_image)
        written = Image.open(fh)
        written.load()
    alpha = written.getchannel("A") if "A" in written.getbands() else None
    return (written if written.mode == mode else written.convert(mode)), alpha


def write_protected(record: Record, decoded: Decoded, delta: Any, root: Path, out: Path, dst: str, epsilon: float,
                    cfg: ProtectConfig) -> FileResult:
    """Compose, write atomically, re-read the written file and measure what is really there."""
    width, height = decoded.image.size
    result = FileResult(record.path, dst, "failed", width=width, height=height, mode=decoded.source_mode,
                        exif_rotated=decoded.exif_rotated)
    try:
        result.sha256_in = file_sha256(root / record.path)
        target = out / dst
        target.parent.mkdir(parents=True, exist_ok=True)
        meta = metadata_kwargs(decoded, cfg.metadata, cfg.tag_no_ai, cfg.format)
        if cfg.format == "png":
            meta.update(PROTECTED_PNG)
        save_image(protect_image(decoded.image, delta, epsilon), decoded.alpha, target, cfg.format, cfg.quality, meta)
        back, back_alpha = _read_back(target, decoded.image.mode)
        result.linf_255, result.psnr, result.ssim = measure(back, decoded.image)
        if decoded.alpha is not None:
            result.alpha_kept = back_alpha is not None and np.array_equal(np.asarray(back_alpha), np.asarray(decoded.alpha))
        result.sha256_out = file_sha256(target)
        result.status = "ok"
    except FileProblem as problem:
        result.reason = problem.reason
    return result


def write_array(record: Record, delta: Any, root: Path, out: Path, dst: str, epsilon: float) -> FileResult:
    """A .npy image (NYUv2 as mtan keeps it) written back as .npy of its own dtype and shape: δ upsampled onto the
    array as stored (float in [0, 1], or uint8 rounded as an image is), clipped to [0, 1]; measured on the file
    written (L-inf rounded up to whole 1/255, beyond float32 rounding)."""
    result = FileResult(record.path, dst, "failed", mode="npy")
    try:
        result.sha256_in = file_sha256(root / record.path)
        raw = np.load(root / record.path, allow_pickle=False)  # (H, W, 3); decode checked its shape and range
        result.height, result.width = raw.shape[:2]
        scale = 255.0 if raw.dtype == np.uint8 else 1.0
        base = raw.astype(np.float64) / scale
        d = upsample(delta, *raw.shape[:2], epsilon).astype(np.float64) / 255  # (C, H, W)
        d = (np.repeat(d, 3, axis=0) if d.shape[0] == 1 else d).transpose(1, 2, 0)
        protected = np.clip(base + d, 0.0, 1.0)
        arr = np.rint(protected * 255).astype(np.uint8) if scale == 255 else protected.astype(raw.dtype)
        target = out / dst
        target.parent.mkdir(parents=True, exist_ok=True)

        def save(tmp: Path) -> None:
            with tmp.open("wb") as fh:  # a file object: np.save would append .npy to the temporary's name
                np.save(fh, arr, allow_pickle=False)

        atomic_write(target, save)
        back = np.load(target, allow_pickle=False).astype(np.float64) / scale * 255  # in 1/255 units
        ref = base * 255
        worst = float(np.abs(back - ref).max(initial=0))
        result.linf_255 = math.ceil(worst - 1e-3)
        result.psnr = psnr_of(float(np.mean((back - ref) ** 2)))
        result.ssim = ssim(back, ref)
        result.sha256_out = file_sha256(target)
        result.status = "ok"
    except OSError as exc:
        result.reason = f"cannot write ({exc.strerror or exc}); check free space and permissions"
    except ValueError as exc:
        result.reason = f"cannot read the array again ({exc})"
    return result


def _centre(image: Image.Image, side: int) -> Image.Image:
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side))


def _tiles(original: Path, protected: Path, epsilon: float) -> list[Image.Image]:
    """Original | protected | δ amplified to the full range: the same native-resolution centre crop of each."""
    source = open_image(original).image.convert("RGB")
    with Image.open(protected) as written:
        written = written.convert("RGB")
    side = min(PREVIEW_CROP, *source.size)
    a, b = _centre(source, side), _centre(written, side)
    d = np.asarray(b, np.float32) - np.asarray(a, np.float32)  # (side, side, 3) in 1/255 units
    amplified = Image.fromarray(np.clip(np.rint((d / (2 * epsilon * 255) + 0.5) * 255), 0, 255).astype(np.uint8))
    scale = math.ceil(PREVIEW_TILE / side)  # pixel-exact (nearest) enlargement of a small crop
    return [t.resize((side * scale, side * scale), Image.Resampling.NEAREST) for t in (a, b, amplified)]


def _drawable(text: str, font: Any) -> str:
    """`text` with '?' for the characters Pillow's default font has no glyph for (it would draw a box)."""
    missing = font.getmask("\uffff")
    blank = (missing.size, bytes(np.asarray(missing, np.uint8)))

    def known(c: str) -> bool:
        if c.isascii():
            return True
        mask = font.getmask(c)
        return (mask.size, bytes(np.asarray(mask, np.uint8))) != blank

    return "".join(c if known(c) else "?" for c in text)


def _wrap(text: str, font: Any, width: int, max_lines: int = 3) -> list[str]:
    """`text` broken at spaces into lines of at most `width` px; past `max_lines`, the last ends in '...'."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] += " ..."
    for i, line in enumerate(lines):  # a single word wider than the tiles: cut
        while font.getlength(line) > width and len(line) > 4:
            line = line[:-4] + "..."
        lines[i] = line
    return lines


def write_preview(pairs: list[tuple[Path, Path]], path: Path, epsilon: float, captions: list[str] | None = None,
                  pad: int = 4) -> Path:
    """A grid, one row per (original, protected file) pair: original | protected | amplified δ, each tile a
    crop of the files at their own resolution (enlarged to PREVIEW_TILE px where the image is smaller), under a
    header that names the columns (δ with its amplification), each row under its caption (file and labels)."""
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default(size=PREVIEW_FONT)  # Pillow's own font: no font file, no dependency
    line = PREVIEW_FONT + 3
    rows = [_tiles(original, protected, epsilon) for original, protected in pairs]
    column = max(r[0].width for r in rows)  # columns line up whatever each row's tile size
    width = 3 * column + 4 * pad
    texts = [_wrap(_drawable(c, font), font, width - 2 * pad) for c in captions] if captions else [[] for _ in rows]
    # δ is drawn at (δ / 2ε + 1/2) of the full range: amplified 1/(2ε) times, mid-grey where it is 0.
    header = [("original", ""), ("protected", f"epsilon {epsilon * 255:.3g}/255"),
              (f"delta x{1 / (2 * epsilon):.3g}", "mid-grey = 0")]
    top = pad + 2 * line + pad
    height = top + sum(len(t) * line + r[0].height + pad for t, r in zip(texts, rows))
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for k, (title, note) in enumerate(header):
        draw.text((pad + k * (column + pad), pad), title, fill=(0, 0, 0), font=font)
        draw.text((pad + k * (column + pad), pad + line), note, fill=(90, 90, 90), font=font)
    for tiles, lines in zip(rows, texts):
        for text in lines:
            draw.text((pad, top), text, fill=(0, 0, 0), font=font)
            top += line
        for k, tile in enumerate(tiles):
            canvas.paste(tile, (pad + k * (column + pad), top))
        top += tiles[0].height + pad
    atomic_write(path, lambda tmp: canvas.save(tmp, "PNG"))
    return path
