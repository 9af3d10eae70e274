"""Aspect-ratio buckets: the bucket list for a resolution, bucket choice, cover-crop geometry and batching."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import torch

from ..errors import DatasetError

Bucket = tuple[int, int]  # (width, height) in pixels

BUCKET_STEP = 64  # bucket sides are multiples of this (the VAE downsamples by 8, the UNet by 8 more)
MIN_RESOLUTION = 64
MAX_RESOLUTION = 4096
MAX_ASPECT = 4.0  # from 1:4 to 4:1


class Bucketed(Protocol):
    """Anything batches_by_bucket can group: a bucket and how often it is seen per epoch."""

    @property
    def bucket(self) -> Bucket: ...

    @property
    def repeats(self) -> int: ...


def validate_resolution(resolution: object) -> int:
    """Return `resolution` if it is a usable training resolution, else raise DatasetError."""
    ok = (isinstance(resolution, int) and not isinstance(resolution, bool)
          and MIN_RESOLUTION <= resolution <= MAX_RESOLUTION and resolution % BUCKET_STEP == 0)
    if not ok:
        raise DatasetError(
            f"resolution = {resolution!r} is not allowed; expected a multiple of {BUCKET_STEP} between "
            f"{MIN_RESOLUTION} and {MAX_RESOLUTION} (e.g. 512 for SD1.5, 1024 for SDXL).")
    return resolution  # type: ignore[return-value]


def make_buckets(resolution: int) -> tuple[Bucket, ...]:
    """All (w, h) with sides multiples of 64, w*h <= resolution², aspect 1:4..4:1, each side as large as fits.

    Sorted from the tallest to the widest; always contains (resolution, resolution).
    """
    validate_resolution(resolution)
    max_area = resolution * resolution
    found: set[Bucket] = set()
    width = BUCKET_STEP
    while width * BUCKET_STEP <= max_area:
        # For each width, the tallest height that keeps the area budget (kohya's make_bucket_resolutions).
        height = (max_area // width) // BUCKET_STEP * BUCKET_STEP
        if max(width / height, height / width) <= MAX_ASPECT:
            found.add((width, height))
            found.add((height, width))
        width += BUCKET_STEP
    return tuple(sorted(found, key=lambda b: (b[0] / b[1], b[0])))


def nearest_bucket(width: int, height: int, buckets: Sequence[Bucket]) -> Bucket:
    """The bucket whose aspect ratio is closest to width:height (in log space; ties -> larger area)."""
    if width <= 0 or height <= 0:
        raise DatasetError(f"image size {width}x{height} is empty; expected positive width and height.")
    if not buckets:
        raise DatasetError("no buckets to choose from; expected the list from make_buckets(resolution).")
    target = math.log(width / height)
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - target), -b[0] * b[1]))


def cover_size(width: int, height: int, bucket: Bucket) -> tuple[int, int]:
    """Size to resize a width x height image to so it covers `bucket` with its aspect ratio kept."""
    bucket_w, bucket_h = bucket
    scale = max(bucket_w / width, bucket_h / height)
    # max() guards against round() landing one pixel short of the bucket.
    return max(bucket_w, round(width * scale)), max(bucket_h, round(height * scale))


def centre_crop_box(width: int, height: int, bucket: Bucket) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the bucket-sized centre of a width x height image."""
    bucket_w, bucket_h = bucket
    if width < bucket_w or height < bucket_h:
        raise ValueError(f"{width}x{height} does not cover bucket {bucket_w}x{bucket_h}; resize it first.")
    left = (width - bucket_w) // 2
    top = (height - bucket_h) // 2
    return left, top, left + bucket_w, top + bucket_h


def batches_by_bucket(items: Sequence[Bucketed], batch_size: int,
                      generator: torch.Generator) -> list[list[int]]:
    """One epoch as batches of indices into `items`; each batch holds one bucket and one frame count only (an
    item without a `frame_count`, e.g. any image, has one frame: video latents of other lengths do not stack).

    Each item appears `item.repeats` times. Order is shuffled within each bucket and then across
    batches with `generator`, so the result depends only on its state. The last batch of a bucket may
    be smaller than batch_size (nothing is dropped).
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise DatasetError(f"batch_size = {batch_size!r} is not allowed; expected an integer of at least 1.")
    by_bucket: dict[tuple[Bucket, int], list[int]] = {}
    for index, item in enumerate(items):
        key = (tuple(item.bucket), getattr(item, "frame_count", 1))
        by_bucket.setdefault(key, []).extend([index] * item.repeats)  # type: ignore[arg-type]
    batches: list[list[int]] = []
    for bucket in sorted(by_bucket):  # sorted: dict order must not leak into the random stream
        indices = by_bucket[bucket]
        order = torch.randperm(len(indices), generator=generator).tolist()
        shuffled = [indices[i] for i in order]
        batches.extend(shuffled[i:i + batch_size] for i in range(0, len(shuffled), batch_size))
    if not batches:
        return []
    order = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in order]
