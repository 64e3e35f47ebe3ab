"""mtlue_cli.data.images: decoding upright, modes, 16-bit; δ onto the original in bands of rows."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mtlue_cli.data.images import BAND_PIXELS, Decoded, band_rows, compose, open_image, protect_image, upsample


def test_open_image_exif_rotation(tmp_path) -> None:
    # Stored 16 wide x 8 high: left half red, right half blue. Orientation 6 = turn 90 degrees
    # clockwise to view, so the upright image is 8 wide x 16 high, red on top, blue below.
    stored = Image.new("RGB", (16, 8), (255, 0, 0))
    stored.paste((0, 0, 255), (8, 0, 16, 8))
    exif = stored.getexif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    stored.save(path, exif=exif, quality=95)
    decoded = open_image(path)
    assert decoded.exif_rotated is True
    assert decoded.image.size == (8, 16) and decoded.image.mode == "RGB"
    top, bottom = decoded.image.getpixel((4, 3)), decoded.image.getpixel((4, 12))
    assert top[0] > 200 and top[2] < 60, top
    assert bottom[2] > 200 and bottom[0] < 60, bottom

    plain = tmp_path / "plain.jpg"
    stored.save(plain, quality=95)
    assert open_image(plain).exif_rotated is False and open_image(plain).image.size == (16, 8)


def test_open_image_exif_info_matches_upright_pixels(tmp_path) -> None:
    stored = Image.new("RGB", (16, 8), (255, 0, 0))
    exif = stored.getexif()
    exif[0x0112] = 6
    stored.save(tmp_path / "rotated.jpg", exif=exif)
    decoded = open_image(tmp_path / "rotated.jpg")
    kept = Image.Exif()
    kept.load(decoded.info["exif"])
    assert kept.get(0x0112, 1) == 1


def test_open_image_modes(tmp_path, make_image) -> None:
    rgba = Image.new("RGBA", (16, 16), (10, 20, 30, 128))
    rgba.save(tmp_path / "rgba.png")
    decoded = open_image(tmp_path / "rgba.png")
    assert (decoded.image.mode, decoded.source_mode) == ("RGB", "RGBA")
    assert decoded.alpha is not None and decoded.alpha.mode == "L" and decoded.alpha.getpixel((3, 3)) == 128
    assert decoded.image.getpixel((3, 3)) == (10, 20, 30)

    decoded = open_image(make_image(tmp_path / "grey.png", mode="L", color=90))
    assert (decoded.image.mode, decoded.source_mode, decoded.alpha) == ("L", "L", None)
    assert decoded.image.getpixel((0, 0)) == 90

    decoded = open_image(make_image(tmp_path / "cmyk.jpg", mode="CMYK", color=(0, 255, 0, 0), quality=95))
    assert (decoded.image.mode, decoded.source_mode, decoded.alpha) == ("RGB", "CMYK", None)
    r, g, b = decoded.image.getpixel((8, 8))
    assert r > 230 and g < 25 and b > 230  # magenta

    palette = Image.new("P", (16, 16), 1)
    palette.putpalette([0, 0, 0, 0, 128, 0])
    palette.save(tmp_path / "palette.png")
    decoded = open_image(tmp_path / "palette.png")
    assert (decoded.image.mode, decoded.source_mode, decoded.alpha) == ("RGB", "P", None)
    assert decoded.image.getpixel((5, 5)) == (0, 128, 0)

    transparent = Image.new("P", (16, 16), 1)
    transparent.putpalette([0, 0, 0, 255, 0, 0])
    transparent.save(tmp_path / "palette_t.png", transparency=0)
    decoded = open_image(tmp_path / "palette_t.png")
    assert decoded.image.mode == "RGB" and decoded.alpha is not None
    assert decoded.image.getpixel((0, 0)) == (255, 0, 0) and decoded.alpha.getpixel((0, 0)) == 255

    decoded = open_image(make_image(tmp_path / "la.png", mode="LA", color=(60, 70)))
    assert (decoded.image.mode, decoded.source_mode) == ("L", "LA") and decoded.alpha.getpixel((1, 1)) == 70


def test_open_image_16_bit_scaled(tmp_path) -> None:
    arr = np.array([[0, 257, 32768, 65535]] * 4, dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    decoded = open_image(tmp_path / "deep.png")
    assert (decoded.image.mode, decoded.source_mode) == ("L", "I;16")
    assert np.asarray(decoded.image)[0].tolist() == [0, 1, 128, 255]


def test_open_image_dark_16_bit_is_scaled_by_bit_depth(tmp_path) -> None:
    Image.fromarray(np.array([[0, 255], [128, 255]], dtype=np.uint16)).save(tmp_path / "dark.png")
    assert np.asarray(open_image(tmp_path / "dark.png").image).tolist() == [[0, 1], [0, 1]]


# ----------------------------------------------------------------------------- δ onto the original, in bands


def _delta(channels: int = 3, size: int = 5, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.uniform(-1, 1, (channels, size, size)) * 10 / 255).astype(np.float32)  # some beyond ±8/255


def test_tiled_compose_equals_untiled_compose_bit_for_bit() -> None:
    rng = np.random.default_rng(1)
    for mode, shape in (("RGB", (13, 11, 3)), ("L", (13, 11))):
        image = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)
        delta = _delta()
        whole = compose(Decoded(image, None, mode, False, {}), upsample(delta, 13, 11, 8 / 255))  # one pass, all rows
        for rows in (1, 2, 3, 13, 100):  # tiny bands, a band that does not divide 13, one band
            tiled = np.asarray(protect_image(image, delta, 8 / 255, rows=rows))
            assert tiled.dtype == np.uint8 and tiled.shape == shape
            assert np.array_equal(tiled, whole), (mode, rows)
        moved = np.abs(whole.astype(int) - np.asarray(image).astype(int)).max()
        assert moved == 8 if mode == "RGB" else 0 < moved <= 8  # clipped to ±ε (grey: a luma mix of it), not vacuous


def test_upsample_is_torchs_bilinear_and_stays_within_epsilon() -> None:
    import torch
    import torch.nn.functional as F

    delta = _delta(size=7)
    for height, width in ((23, 17), (7, 7), (40, 3)):
        ours = upsample(delta, height, width, 1.0) / 255
        theirs = F.interpolate(torch.from_numpy(delta)[None], size=(height, width), mode="bilinear",
                               align_corners=False)[0].numpy()
        assert np.allclose(ours, theirs, atol=1e-6)
    assert np.abs(upsample(delta, 23, 17, 4 / 255)).max() <= 4 + 1e-4


def test_band_rows_are_bounded_whatever_the_width() -> None:
    assert band_rows(6000) * 6000 <= BAND_PIXELS and band_rows(6000) >= 1
    assert band_rows(10 * BAND_PIXELS) == 1 and band_rows(16, rows=3) == 3


def test_measure_in_bands_matches_the_whole_image_measures() -> None:
    from mtlue_cli.metrics import linf, psnr, ssim
    from mtlue_cli.protect.encode import measure

    rng = np.random.default_rng(2)
    original = rng.integers(0, 256, (37, 29, 3), dtype=np.uint8)
    written = np.clip(original.astype(int) + rng.integers(-3, 4, original.shape), 0, 255).astype(np.uint8)
    a, b = Image.fromarray(written), Image.fromarray(original)
    whole = (linf(written, original), psnr(written, original), ssim(written, original, band=1000))
    for rows in (1, 4, 37):
        got = measure(a, b, rows=rows)
        assert got[0] == whole[0] == 3
        assert got[1] == pytest.approx(whole[1]) and got[2] == pytest.approx(whole[2], abs=1e-6)
    assert ssim(written, original, band=5) == pytest.approx(whole[2], abs=1e-6)
    assert measure(b, b) == (0, float("inf"), pytest.approx(1.0))


def test_ssim_of_flat_images_is_the_hand_computed_luminance_term() -> None:
    from mtlue_cli.metrics import ssim

    # No variance anywhere: SSIM = (2*200*90 + C1) / (200^2 + 90^2 + C1), C1 = (0.01*255)^2 = 6.5025
    # (float32 moments about 0 instead of about the mean were 1.4e-4 off here).
    a, b = np.full((12, 14, 3), 200, np.uint8), np.full((12, 14, 3), 90, np.uint8)
    assert ssim(a, b) == pytest.approx((36000 + 6.5025) / (48100 + 6.5025), abs=1e-6)


def test_separable_ssim_equals_the_two_dimensional_gaussian_window() -> None:
    from mtlue_cli.metrics import SSIM_SIGMA, ssim

    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (17, 15), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-8, 9, a.shape), 0, 255).astype(np.uint8)
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * SSIM_SIGMA**2))
    w = np.outer(g, g) / g.sum() ** 2  # the 11x11 window, in float64, each position summed directly
    x, y = a.astype(np.float64), b.astype(np.float64)
    c1, c2, total = (0.01 * 255) ** 2, (0.03 * 255) ** 2, []
    for i in range(17 - 10):
        for j in range(15 - 10):
            px, py = x[i : i + 11, j : j + 11], y[i : i + 11, j : j + 11]
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy, cxy = (w * px * px).sum() - mx**2, (w * py * py).sum() - my**2, (w * px * py).sum() - mx * my
            total.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    assert ssim(a, b) == pytest.approx(np.mean(total), abs=1e-6)


def test_protected_png_is_lossless_and_measured_as_written(tmp_path) -> None:
    import hashlib

    from mtlue_cli.config import ProtectConfig
    from mtlue_cli.data.labels import Record
    from mtlue_cli.protect.encode import write_protected

    rng = np.random.default_rng(4)
    for mode, shape in (("RGB", (21, 30, 3)), ("L", (21, 30))):
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(tmp_path / f"{mode}.png")
        decoded = open_image(tmp_path / f"{mode}.png")
        delta = _delta()
        result = write_protected(Record(f"{mode}.png", (0,)), decoded, delta, tmp_path, tmp_path / "out", f"{mode}.png",
                                 8 / 255, ProtectConfig(format="png"))
        written = tmp_path / "out" / f"{mode}.png"
        with Image.open(written) as im:
            back = np.asarray(im)
        assert np.array_equal(back, np.asarray(protect_image(decoded.image, delta, 8 / 255)))  # lossless
        moved = int(np.abs(back.astype(int) - np.asarray(decoded.image).astype(int)).max())
        assert result.status == "ok" and result.linf_255 == moved and 0 < moved <= 8
        assert result.sha256_out == hashlib.sha256(written.read_bytes()).hexdigest()
