"""Image files to training pixels: open and check one image, then decode it into its bucket as RGB in [0, 1]."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from ..errors import DatasetError
from .buckets import Bucket, centre_crop_box, cover_size
from .spec import DatasetItem

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp")
MIN_SIDE = 8
# Our own decompression-bomb limit, independent of (and below) Pillow's hard 2 x MAX_IMAGE_PIXELS
# error: 150 MP admits any camera photo; beyond that a "photo" is more likely a bomb or a scan.
MAX_PIXELS = 150_000_000
_FORMATS = ("PNG", "JPEG", "WEBP")  # "JPEG" also opens the MPO (multi-picture) files many cameras write
_ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height
_WHITE = (255, 255, 255, 255)


def _unreadable(name: str, error: Exception) -> DatasetError:
    return DatasetError(f"'{name}' is not a readable image ({error}); remove it from the dataset folder "
                        f"or re-save it as PNG, JPEG or WebP.")


@contextmanager
def _open(path: str, name: str) -> Iterator[Image.Image]:
    """Open an image lazily (header only) with the format and size checks that protect the process."""
    try:
        with warnings.catch_warnings():
            # Pillow warns above ~89 MP; MAX_PIXELS below is our limit, so the warning is noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path, formats=_FORMATS)
    except Image.DecompressionBombError as e:
        raise DatasetError(f"'{name}' is too large to open safely ({e}); downscale it to at most "
                           f"{MAX_PIXELS // 1_000_000} MP (e.g. 8192 px on the long side).") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise _unreadable(name, e) from e
    with image:
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise DatasetError(f"'{name}' is {width}x{height} px ({width * height / 1e6:.0f} MP), more than the "
                               f"{MAX_PIXELS // 1_000_000} MP allowed; downscale it (e.g. 8192 px on the long side).")
        yield image


def _oriented(size: tuple[int, int], image: Image.Image) -> tuple[int, int]:
    """`size` as displayed, i.e. after the image's EXIF orientation (read from the JPEG header, or the loaded PNG)."""
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    return (size[1], size[0]) if orientation in _ROTATED else size


def probe_image(path: str, name: str) -> tuple[int, int]:
    """Check that `path` decodes and is big enough; return its (width, height) after EXIF orientation.

    Every image is decoded once (JPEG at 1/8 scale, which still reads all of its data), so a corrupt
    or truncated file is reported here and not half-way through training. `name` is how messages
    refer to the file.
    """
    with _open(path, name) as image:
        header_size = image.size
        if min(header_size) < MIN_SIDE:
            raise DatasetError(f"'{name}' is {header_size[0]}x{header_size[1]} px, too small to train on (at "
                               f"least {MIN_SIDE}x{MIN_SIDE} px needed); remove it or replace it with a larger image.")
        try:
            image.draft("RGB", (1, 1))  # JPEG: smallest DCT scale; a no-op for other formats
            image.load()
        except (OSError, SyntaxError, ValueError) as e:
            raise _unreadable(name, e) from e
        return _oriented(header_size, image)


def _has_alpha(image: Image.Image) -> bool:
    return "A" in image.mode or "a" in image.mode or "transparency" in image.info


def has_alpha(path: str, name: str) -> bool:
    """Whether the image at `path` has an alpha channel (or a transparent palette entry); reads the header only."""
    with _open(path, name) as image:
        return _has_alpha(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB: transparency composited on white; grey, palette, CMYK and 16-bit converted."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I"):
        # 16-bit greyscale: Pillow's convert() would clip at 255 (mostly white), so rescale ourselves.
        values = np.asarray(image).astype(np.float32)
        full_scale = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        grey = np.clip(np.rint(values * (255.0 / full_scale)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if _has_alpha(image):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")
    return image.convert("RGB")


def decode_upright(path: str, bucket: Bucket, name: str) -> Image.Image:
    """Decode `path` as displayed (EXIF orientation applied); JPEGs at the smallest DCT scale that still covers
    the bucket. `name` is how messages refer to the file."""
    with _open(path, name) as image:
        if image.format in ("JPEG", "MPO"):  # EXIF is in the JPEG header: no decoding needed to read it
            width, height = _oriented(image.size, image)
            need_w, need_h = cover_size(width, height, bucket)
            rotated = (width, height) != image.size
            image.draft("RGB", (need_h, need_w) if rotated else (need_w, need_h))
        try:
            image.load()
            return ImageOps.exif_transpose(image)
        except (OSError, SyntaxError, ValueError) as e:
            raise _unreadable(name, e) from e


def fit_to_bucket(image: Image.Image, bucket: Bucket) -> Image.Image:
    """Resized to cover `bucket` with its aspect ratio kept, then centre-cropped to it; never stretched."""
    size = cover_size(image.width, image.height, bucket)
    if size != image.size:
        # reducing_gap: a fast box reduce() first, then LANCZOS over the last factor of 3 or less.
        image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return image.crop(centre_crop_box(image.width, image.height, bucket))


def load_image_pixels(path: str, bucket: Bucket, name: str | None = None) -> torch.Tensor:
    """Decode `path` into `bucket`: [H, W, 3] float32 in [0, 1] (the host VAE's layout, without batch)."""
    rgb = fit_to_bucket(to_rgb(decode_upright(path, bucket, name or os.path.basename(path))), bucket)
    pixels = np.array(rgb, dtype=np.float32) / 255.0
    return torch.from_numpy(pixels)


def load_pixels(item: DatasetItem, bucket: Bucket | None = None) -> torch.Tensor:
    """The item's image in its bucket (or `bucket`): [H, W, 3] float32 in [0, 1], ready for VAE.encode."""
    return load_image_pixels(item.path, bucket or item.bucket, item.relative_path)
