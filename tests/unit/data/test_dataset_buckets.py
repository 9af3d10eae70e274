"""Aspect-ratio buckets: the bucket list's invariants, bucket choice, no-stretch geometry, batching."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from trainer.data.buckets import (
    batches_by_bucket,
    centre_crop_box,
    cover_size,
    make_buckets,
    nearest_bucket,
    validate_resolution,
)
from trainer.errors import DatasetError


@pytest.mark.parametrize("resolution", [64, 128, 512, 768, 1024])
def test_buckets_fit_the_area_budget_and_the_grid(resolution: int) -> None:
    buckets = make_buckets(resolution)
    assert (resolution, resolution) in buckets
    for w, h in buckets:
        assert w * h <= resolution * resolution
        assert w % 64 == 0 and h % 64 == 0 and w >= 64 and h >= 64
        assert 1 / 4 <= w / h <= 4
    assert len(set(buckets)) == len(buckets)
    assert set(buckets) == {(h, w) for w, h in buckets}  # portrait and landscape alike


def test_resolution_64_has_only_the_square_bucket() -> None:
    assert make_buckets(64) == ((64, 64),)


@pytest.mark.parametrize("bad", [0, 32, 500, 100, 8192, 512.0, True, "512", None])
def test_bad_resolution_is_rejected_with_what_is_allowed(bad: object) -> None:
    with pytest.raises(DatasetError, match=r"resolution = .* expected a multiple of 64 between 64 and 4096"):
        validate_resolution(bad)


def test_portrait_landscape_and_square_go_to_matching_buckets() -> None:
    buckets = make_buckets(512)
    assert nearest_bucket(1000, 1000, buckets) == (512, 512)
    assert nearest_bucket(1000, 1333, buckets) == (448, 576)  # 3:4 portrait
    assert nearest_bucket(1333, 1000, buckets) == (576, 448)  # 4:3 landscape
    assert nearest_bucket(100, 10_000, buckets) == (256, 1024)  # beyond 1:4 -> the tallest bucket
    w, h = nearest_bucket(1920, 1080, buckets)
    assert w > h and abs(math.log(w / h) - math.log(16 / 9)) < 0.15


@pytest.mark.parametrize("size", [(6000, 4000), (4000, 6000), (333, 777), (64, 64), (8, 9), (10_000, 99)])
@pytest.mark.parametrize("resolution", [64, 512])
def test_cover_then_crop_never_stretches(size: tuple[int, int], resolution: int) -> None:
    width, height = size
    bucket = nearest_bucket(width, height, make_buckets(resolution))
    cover_w, cover_h = cover_size(width, height, bucket)
    assert cover_w >= bucket[0] and cover_h >= bucket[1]
    assert cover_w == bucket[0] or cover_h == bucket[1]  # tight on one side
    # Aspect kept up to one pixel of rounding on the shorter resized side.
    assert abs(cover_w / cover_h - width / height) <= (width / height) / min(cover_w, cover_h) + 1e-9
    left, top, right, bottom = centre_crop_box(cover_w, cover_h, bucket)
    assert (right - left, bottom - top) == bucket
    assert abs(left - (cover_w - right)) <= 1 and abs(top - (cover_h - bottom)) <= 1


@dataclass(frozen=True)
class _Item:
    bucket: tuple[int, int]
    repeats: int = 1


def test_batches_never_mix_buckets_and_count_repeats() -> None:
    items = [_Item((64, 64)), _Item((64, 128), 3), _Item((64, 64), 2), _Item((128, 64)), _Item((64, 128))]
    batches = batches_by_bucket(items, 2, torch.Generator().manual_seed(0))
    for batch in batches:
        assert len({items[i].bucket for i in batch}) == 1
        assert 1 <= len(batch) <= 2
    seen = sorted(i for batch in batches for i in batch)
    assert seen == sorted(i for i, item in enumerate(items) for _ in range(item.repeats))


def test_batches_depend_only_on_the_generator_state() -> None:
    items = [_Item((64 * (1 + i % 3), 64), 1 + i % 2) for i in range(20)]
    first = batches_by_bucket(items, 3, torch.Generator().manual_seed(7))
    assert first == batches_by_bucket(items, 3, torch.Generator().manual_seed(7))
    assert first != batches_by_bucket(items, 3, torch.Generator().manual_seed(8))
    assert batches_by_bucket([], 3, torch.Generator()) == []


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_batch_size_is_rejected(bad: object) -> None:
    with pytest.raises(DatasetError, match="batch_size .* at least 1"):
        batches_by_bucket([_Item((64, 64))], bad, torch.Generator())  # type: ignore[arg-type]
