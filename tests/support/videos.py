"""Small real video files for the dataset tests, written with PyAV: frame i is grey level FRAME_LEVEL_STEP * i, so a
test can tell which frames were sampled."""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np

FRAME_LEVEL_STEP = 12  # grey level per frame index (frame 20 is 240)


def write_video(path: Path, frames: int, size: tuple[int, int] = (64, 48), caption: str | None = "a clip",
                codec: str = "libx264", fps: int = 8) -> Path:
    """`frames` frames of (width, height) = `size`, frame i a flat grey of level FRAME_LEVEL_STEP * i, near-lossless;
    with `caption`, a same-stem .txt beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps, options={"crf": "0"} if codec == "libx264" else {})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(frames):
            grey = np.full((height, width, 3), FRAME_LEVEL_STEP * index, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(grey, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption, encoding="utf-8")
    return path
