"""Which frames of a dataset video are trained: a fixed number of frames, taken at a stride from its first frame."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import DatasetError

DEFAULT_VIDEO_FRAMES = 17  # about one second of 16 fps video; 1 + 4k, as Wan's VAE takes
MAX_VIDEO_FRAMES = 257
MAX_FRAME_STRIDE = 64


def _whole_number(name: str, value: object, low: int, high: int, hint: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise DatasetError(f"{name} = {value!r} is not allowed; expected a whole number from {low} to {high} "
                           f"({hint}).")
    return value


@dataclass(frozen=True)
class VideoSampling:
    """`frames` frames of each video, every `stride`-th one from the first (stride 2 at 30 fps trains 15 fps
    motion). A video VAE compresses time too (Wan's packs each 4 frames after the first into one latent frame),
    so it takes only some frame counts; the host checks `frames` against the connected VAE."""

    frames: int = DEFAULT_VIDEO_FRAMES
    stride: int = 1

    def __post_init__(self) -> None:
        _whole_number("video_frames", self.frames, 1, MAX_VIDEO_FRAMES,
                      "the frames trained from each video; Wan takes 1 + 4k: 1, 5, 9, 13, 17, ..., 81")
        _whole_number("frame_stride", self.stride, 1, MAX_FRAME_STRIDE,
                      "1 takes consecutive frames, 2 every other frame")

    @property
    def span(self) -> int:
        """How many frames a video needs: from the first sampled frame to the last one."""
        return 1 + (self.frames - 1) * self.stride

    def indices(self) -> range:
        """The indices of the sampled frames in the video."""
        return range(0, self.span, self.stride)
