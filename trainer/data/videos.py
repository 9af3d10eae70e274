"""Video files to training pixels: open and check one video, then decode its sampled frames into its bucket.

Decoded with PyAV (FFmpeg), which reads no pickles; imported on first use, so the engine runs without it until a
dataset holds a video.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import numpy as np
import torch

from ..errors import DatasetError
from .buckets import Bucket
from .images import MIN_SIDE, fit_to_bucket, load_pixels
from .spec import DatasetItem
from .video_sampling import VideoSampling

VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".webm", ".mov", ".mkv", ".avi")


def _av() -> ModuleType:
    try:
        return importlib.import_module("av")
    except ImportError as e:
        raise DatasetError("the dataset holds videos, and reading them needs PyAV: install it in ComfyUI's Python "
                           "environment (pip install av), or remove the videos from the dataset folder.") from e


def _unreadable(name: str, error: Exception) -> DatasetError:
    return DatasetError(f"'{name}' is not a readable video ({error}); remove it from the dataset folder or "
                        "re-encode it (e.g. MP4 with H.264).")


@contextmanager
def _frames(path: str, name: str) -> Iterator[Iterator[Any]]:
    """The decoded frames of the file's first video stream (PyAV VideoFrames), with decoding errors in the user's
    terms."""
    av = _av()
    try:
        with av.open(path, "r") as container:
            if not container.streams.video:
                raise DatasetError(f"'{name}' holds no video stream; remove it from the dataset folder.")
            yield container.decode(container.streams.video[0])
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise _unreadable(name, e) from e


def probe_video(path: str, name: str, sampling: VideoSampling) -> tuple[int, int]:
    """Decode every frame of `path` once (a corrupt or truncated file is reported here, not half-way through
    training), check that it has the frames `sampling` takes and is big enough; return its (width, height)."""
    count, size = 0, (0, 0)
    with _frames(path, name) as frames:
        for frame in frames:
            count, size = count + 1, (frame.width, frame.height)
    if count < sampling.span:
        stride = f" at frame_stride {sampling.stride}" if sampling.stride > 1 else ""
        raise DatasetError(f"'{name}' has {count} frame{'s' if count != 1 else ''}, fewer than the {sampling.span} "
                           f"that video_frames {sampling.frames}{stride} needs; lower video_frames or frame_stride, "
                           "or remove the video from the dataset folder.")
    if min(size) < MIN_SIDE:
        raise DatasetError(f"'{name}' is {size[0]}x{size[1]} px, too small to train on (at least {MIN_SIDE}x"
                           f"{MIN_SIDE} px needed); remove it or replace it with a larger video.")
    return size


def load_video_pixels(path: str, bucket: Bucket, sampling: VideoSampling, name: str) -> torch.Tensor:
    """The sampled frames of `path`, each fitted into `bucket`: [frames, H, W, 3] float32 in [0, 1]."""
    wanted, pixels = set(sampling.indices()), []
    with _frames(path, name) as frames:
        for index, frame in enumerate(frames):
            if index in wanted:
                pixels.append(np.array(fit_to_bucket(frame.to_image(), bucket), dtype=np.float32) / 255.0)
            if len(pixels) == sampling.frames:
                break
    if len(pixels) < sampling.frames:
        raise DatasetError(f"'{name}' now has fewer frames than the {sampling.span} it had when the dataset was "
                           "scanned; run the LoRA Dataset node again.")
    return torch.from_numpy(np.stack(pixels))


def item_pixels(item: DatasetItem) -> torch.Tensor:
    """The item as the host VAE encodes it: [frames, H, W, 3] in [0, 1], one frame for an image."""
    if item.video is None:
        return load_pixels(item)[None]
    return load_video_pixels(item.path, item.bucket, item.video, item.relative_path)
