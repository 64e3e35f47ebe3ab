"""One protected file: δ upsampled onto the upright original, rounded, encoded, written atomically, read back
and measured (ecosystem §1.3-1.5, §3.4). `protect_dataset` runs `write_protected` in its worker threads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin

from mtlue_cli.config import ProtectConfig
from mtlue_cli.data import Decoded, Record
from mtlue_cli.errors import FileProblem
from mtlue_cli.hub import file_sha256
from mtlue_cli.metrics import linf, psnr, ssim

EXTENSIONS = {"png": ".png", "webp": ".webp", "jpeg": ".jpg"}
XMP_NO_AI = (
    '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    '<rdf:Description rdf:about="" xmlns:plus="http://ns.useplus.org/ldf/xmp/1.0/">'
    "<plus:DataMining>http://ns.useplus.org/ldf/vocab/DMI-PROHIBITED-AIMLTRAINING</plus:DataMining>"
    '</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
)
SAFE_EXIF_TAGS = (0x013B, 0x8298)  # Artist, Copyright: kept by --metadata keep-safe


@dataclass
class FileResult:
    source: str
    output: str | None
    status: str  # ok | failed | resumed
    reason: str = ""
    width: int = 0
    height: int = 0
    mode: str = ""
    exif_rotated: bool = False
    linf_255: int | None = None
    psnr: float | None = None
    ssim: float | None = None
    alpha_kept: bool | None = None
    sha256_in: str = ""
    sha256_out: str = ""


def _metadata_kwargs(decoded: Decoded, cfg: ProtectConfig, fmt: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if cfg.metadata in ("keep-safe", "keep-all"):
        if decoded.info.get("icc_profile"):
            kwargs["icc_profile"] = decoded.info["icc_profile"]
        if decoded.info.get("exif"):
            source = Image.Exif()
            source.load(decoded.info["exif"])
            exif = Image.Exif()
            if cfg.metadata == "keep-all":
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
    if cfg.tag_no_ai:
        if fmt == "png":
            info = PngImagePlugin.PngInfo()
            info.add_itxt("XML:com.adobe.xmp", XMP_NO_AI)
            kwargs["pnginfo"] = info
        else:
            kwargs["xmp"] = XMP_NO_AI.encode()
    return kwargs


def compose(decoded: Decoded, delta: np.ndarray) -> np.ndarray:
    """Add an upsampled δ (3,H,W) in 1/255 units to the upright original; round, clip to uint8.

    Grayscale images stay single-channel: their δ is the luma combination of the RGB δ (weights sum
    to 1, so it stays within ±ε)."""
    original = np.asarray(decoded.image, dtype=np.float32)
    if original.ndim == 2:
        d = delta[0] if delta.shape[0] == 1 else 0.299 * delta[0] + 0.587 * delta[1] + 0.114 * delta[2]
    else:
        d = np.repeat(delta, 3, axis=0) if delta.shape[0] == 1 else delta
        d = d.transpose(1, 2, 0)
    return np.clip(np.rint(original + d), 0, 255).astype(np.uint8)


def upsample(delta: Any, height: int, width: int, epsilon: float) -> np.ndarray:
    """δ (C,S,S) at the working size -> (C,H,W) in 1/255 units, bilinear, clipped to ±ε."""
    import torch.nn.functional as F

    up = F.interpolate(delta[None].float(), size=(height, width), mode="bilinear", align_corners=False)[0]
    return (up.clamp(-epsilon, epsilon) * 255).numpy()  # (C,H,W) in 1/255 units


def _save(pixels: np.ndarray, alpha: Image.Image | None, path: Path, fmt: str, cfg: ProtectConfig,
          meta: dict[str, Any]) -> None:
    image = Image.fromarray(pixels, "L" if pixels.ndim == 2 else "RGB")
    if alpha is not None:
        if fmt == "jpeg":
            raise FileProblem(str(path), "has transparency, which JPEG cannot store; use --format png or webp")
        image.putalpha(alpha)
    tmp = path.with_name(f".{path.name}.mtlue-tmp")
    try:
        if fmt == "png":
            image.save(tmp, "PNG", **meta)
        elif fmt == "webp":
            image.save(tmp, "WEBP", lossless=True, quality=100, method=4, exact=True, **meta)
        else:
            image.save(tmp, "JPEG", quality=cfg.quality, subsampling=0, **meta)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise FileProblem(str(path), f"cannot write ({exc.strerror or exc}); check free space and permissions") from None


def write_protected(record: Record, decoded: Decoded, delta: Any, root: Path, out: Path, dst: str, epsilon: float,
                    cfg: ProtectConfig) -> FileResult:
    """Compose, write atomically, re-read the written file and measure what is really there."""
    source = root / record.path
    width, height = decoded.image.size
    result = FileResult(record.path, dst, "failed", width=width, height=height, mode=decoded.source_mode,
                        exif_rotated=decoded.exif_rotated)
    try:
        result.sha256_in = file_sha256(source)
        pixels = compose(decoded, upsample(delta, height, width, epsilon))
        target = out / dst
        target.parent.mkdir(parents=True, exist_ok=True)
        _save(pixels, decoded.alpha, target, cfg.format, cfg, _metadata_kwargs(decoded, cfg, cfg.format))
        with Image.open(target) as written:
            written.load()
            back_alpha = written.getchannel("A") if "A" in written.getbands() else None
            back = np.asarray(written.convert(decoded.image.mode))
        original = np.asarray(decoded.image)
        result.linf_255, result.psnr, result.ssim = linf(back, original), psnr(back, original), ssim(back, original)
        if decoded.alpha is not None:
            result.alpha_kept = back_alpha is not None and np.array_equal(np.asarray(back_alpha), np.asarray(decoded.alpha))
        result.sha256_out = file_sha256(target)
        result.status = "ok"
    except FileProblem as problem:
        result.reason = problem.reason
    return result
