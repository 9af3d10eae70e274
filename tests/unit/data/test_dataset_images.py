"""Image files to pixels: every mode comes out RGB in [0, 1], orientation applied, aspect kept, bad files named."""

from __future__ import annotations

import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from trainer.data.images import MAX_PIXELS, load_image_pixels, probe_image
from trainer.errors import DatasetError


def _save(image: Image.Image, path: Path, **kwargs: object) -> str:
    image.save(path, **kwargs)
    return str(path)


def test_pixels_are_hwc_float32_in_unit_range(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (96, 80), (255, 0, 128)), tmp_path / "a.png")
    pixels = load_image_pixels(path, (64, 64))
    assert pixels.shape == (64, 64, 3) and pixels.dtype == torch.float32
    assert torch.allclose(pixels[0, 0], torch.tensor([1.0, 0.0, 128 / 255]))


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    ImageDraw.Draw(image).rectangle((0, 0, 31, 63), fill=(255, 0, 0, 255))
    pixels = load_image_pixels(_save(image, tmp_path / "a.png"), (64, 64))
    assert pixels.shape == (64, 64, 3)
    assert torch.allclose(pixels[10, 10], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(pixels[10, 50], torch.ones(3))  # transparent -> white, not black


@pytest.mark.parametrize("mode", ["L", "LA", "P", "1", "I;16"])
def test_grey_palette_and_16_bit_come_out_as_rgb(tmp_path: Path, mode: str) -> None:
    grey = Image.linear_gradient("L").resize((64, 64))
    if mode == "I;16":
        image = Image.fromarray(np.asarray(grey).astype("<u2") * 257)
        assert image.mode == "I;16"
    elif mode == "P":
        image = grey.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    else:
        image = grey.convert(mode)
    pixels = load_image_pixels(_save(image, tmp_path / "a.png"), (64, 64))
    assert pixels.shape == (64, 64, 3)
    assert 0.0 <= float(pixels.min()) and float(pixels.max()) <= 1.0
    if mode in ("L", "LA", "I;16"):
        # Channels equal, and 16-bit is rescaled rather than clipped to white.
        assert torch.equal(pixels[..., 0], pixels[..., 2])
        assert torch.allclose(pixels[..., 0], torch.from_numpy(np.asarray(grey, dtype=np.float32) / 255), atol=1e-6)


def test_palette_transparency_is_composited_on_white(tmp_path: Path) -> None:
    image = Image.new("P", (64, 64), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    ImageDraw.Draw(image).rectangle((0, 0, 31, 63), fill=1)
    pixels = load_image_pixels(_save(image, tmp_path / "a.png", transparency=0), (64, 64))
    assert torch.allclose(pixels[10, 10], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(pixels[10, 50], torch.ones(3))  # transparent palette entry -> white


def test_cmyk_jpeg_comes_out_as_rgb(tmp_path: Path) -> None:
    path = _save(Image.new("CMYK", (64, 64), (0, 255, 255, 0)), tmp_path / "a.jpg")
    pixels = load_image_pixels(path, (64, 64))
    assert pixels.shape == (64, 64, 3)
    assert float(pixels[..., 0].mean()) > 0.8 and float(pixels[..., 1].mean()) < 0.2  # red


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    stored = Image.new("RGB", (128, 64), (0, 0, 255))
    ImageDraw.Draw(stored).rectangle((0, 0, 63, 63), fill=(255, 0, 0))  # red on the stored left
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90° clockwise: 64 wide, 128 tall, red on top
    path = _save(stored, tmp_path / "a.jpg", exif=exif, quality=95)
    assert probe_image(path, "a.jpg") == (64, 128)
    pixels = load_image_pixels(path, (64, 128))
    assert pixels.shape == (128, 64, 3)
    assert float(pixels[:50, :, 0].mean()) > 0.9 and float(pixels[80:, :, 2].mean()) > 0.9


def test_content_is_cropped_never_stretched(tmp_path: Path) -> None:
    # A 40x40 black square in a 250x100 image, loaded into a 3:1 bucket: cover-resize then crop.
    image = Image.new("RGB", (250, 100), "white")
    ImageDraw.Draw(image).rectangle((105, 30, 144, 69), fill="black")
    pixels = load_image_pixels(_save(image, tmp_path / "a.png"), (192, 64))
    dark = (pixels.mean(dim=2) < 0.5).nonzero()
    height = int(dark[:, 0].max() - dark[:, 0].min()) + 1
    width = int(dark[:, 1].max() - dark[:, 1].min()) + 1
    assert abs(width - height) <= 1 and abs(width - 40 * 192 / 250) <= 1.5


def test_huge_jpeg_loads_quickly_into_its_bucket(tmp_path: Path) -> None:
    image = Image.new("RGB", (6000, 4000), "white")
    ImageDraw.Draw(image).ellipse((1000, 0, 5000, 3999), fill=(200, 30, 30))
    path = _save(image, tmp_path / "huge.jpg", quality=70)
    del image
    start = time.perf_counter()
    assert probe_image(path, "huge.jpg") == (6000, 4000)
    pixels = load_image_pixels(path, (64, 64))
    assert time.perf_counter() - start < 2.0  # decoded at 1/8 scale, never at full size
    assert pixels.shape == (64, 64, 3)
    assert float(pixels[32, 32, 0]) > 0.6 and float(pixels[32, 32, 1]) < 0.3  # the ellipse's centre


def test_corrupt_and_truncated_images_are_named(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image" * 10)
    with pytest.raises(DatasetError, match="'garbage.png' is not a readable image.*remove it .* or re-save it"):
        probe_image(str(garbage), "garbage.png")
    for suffix in ("png", "jpg", "webp"):
        good = tmp_path / f"good.{suffix}"
        Image.effect_noise((64, 64), 50).convert("RGB").save(good)
        cut = tmp_path / f"cut.{suffix}"
        cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
        with pytest.raises(DatasetError, match=f"'cut.{suffix}' is not a readable image"):
            probe_image(str(cut), f"cut.{suffix}")


def test_tiny_image_is_rejected_with_its_size(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (1, 1)), tmp_path / "dot.png")
    with pytest.raises(DatasetError, match=r"'dot.png' is 1x1 px, too small to train on"):
        probe_image(path, "dot.png")
    assert probe_image(_save(Image.new("RGB", (8, 8)), tmp_path / "ok.png"), "ok.png") == (8, 8)


def _png_header_only(path: Path, width: int, height: int) -> str:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return str(path)


def test_decompression_bombs_are_refused_before_decoding(tmp_path: Path) -> None:
    assert MAX_PIXELS >= 100_000_000  # any real photo passes
    with pytest.raises(DatasetError, match=r"'big.png' is 13000x13000 px \(169 MP\), more than the 150 MP"):
        probe_image(_png_header_only(tmp_path / "big.png", 13_000, 13_000), "big.png")
    with pytest.raises(DatasetError, match="'bomb.png' is too large to open safely"):
        probe_image(_png_header_only(tmp_path / "bomb.png", 50_000, 50_000), "bomb.png")
