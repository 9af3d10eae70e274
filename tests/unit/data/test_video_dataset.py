"""Video dataset folders: frames sampled at a stride, a fixed number of them, buckets by frame size, batches of one
frame count, and bad videos (corrupt, too short, no caption) refused by name."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.support.videos import FRAME_LEVEL_STEP, write_video
from trainer.data.buckets import batches_by_bucket
from trainer.data.masks import latent_mask
from trainer.data.scan import fingerprint, scan_dataset
from trainer.data.video_sampling import VideoSampling
from trainer.data.videos import item_pixels
from trainer.errors import DatasetError


def _dataset(root: Path) -> Path:
    write_video(root / "wide.mp4", 12, size=(96, 48), caption="a wide clip")
    write_video(root / "2_square" / "square.webm", 10, size=(64, 64), codec="libvpx-vp9", caption="a square clip")
    Image.new("RGB", (64, 64), (90, 140, 200)).save(root / "still.png")
    (root / "still.txt").write_text("a still", encoding="utf-8")
    return root


def test_videos_are_found_with_their_captions_frames_and_frame_size_buckets(tmp_path: Path) -> None:
    spec = scan_dataset(_dataset(tmp_path), resolution=128, video=VideoSampling(frames=5, stride=2))
    items = {item.relative_path: item for item in spec.items}
    assert set(items) == {"wide.mp4", "2_square/square.webm", "still.png"}
    wide, square, still = items["wide.mp4"], items["2_square/square.webm"], items["still.png"]
    assert (wide.caption, wide.size, wide.bucket, wide.frame_count) == ("a wide clip", (96, 48), (192, 64), 5)
    assert (square.repeats, square.bucket, square.frame_count) == (2, (128, 128), 5)
    assert still.video is None and still.frame_count == 1 and still.bucket == (128, 128)
    assert wide.video == square.video == spec.video == VideoSampling(5, 2)
    assert spec.summary() == ("1 image, 2 videos of 5 frames at stride 2 (2 repeats x 1 in 2_square, 2 plain) → 4 "
                              "samples/epoch, buckets 128x128 ×2, 192x64 ×1")


def test_the_sampled_frames_are_every_stride_th_from_the_first_fitted_into_the_bucket(tmp_path: Path) -> None:
    spec = scan_dataset(_dataset(tmp_path), resolution=128, video=VideoSampling(frames=5, stride=2))
    wide = next(item for item in spec.items if item.relative_path == "wide.mp4")
    pixels = item_pixels(wide)
    assert pixels.shape == (5, 64, 192, 3) and pixels.dtype == torch.float32
    levels = pixels.mean(dim=(1, 2, 3)) * 255
    expected = torch.tensor([FRAME_LEVEL_STEP * i for i in (0, 2, 4, 6, 8)], dtype=torch.float32)
    assert (levels - expected).abs().max() < 3, levels
    still = next(item for item in spec.items if item.video is None)
    assert item_pixels(still).shape == (1, 128, 128, 3)  # an image is a one-frame batch for the VAE


def test_batches_never_mix_frame_counts_within_a_bucket(tmp_path: Path) -> None:
    spec = scan_dataset(_dataset(tmp_path), resolution=128, video=VideoSampling(frames=5))
    batches = batches_by_bucket(spec.items, 4, torch.Generator().manual_seed(0))
    for batch in batches:
        assert len({(spec.items[i].bucket, spec.items[i].frame_count) for i in batch}) == 1
    square_and_still = {spec.items[i].relative_path for batch in batches for i in batch
                        if spec.items[i].bucket == (128, 128)}
    assert square_and_still == {"2_square/square.webm", "still.png"}  # same bucket, separate batches


def test_a_video_shorter_than_the_frames_taken_is_refused_in_the_users_terms(tmp_path: Path) -> None:
    write_video(tmp_path / "short.mp4", 8)
    scan_dataset(tmp_path, video=VideoSampling(frames=5, stride=1))  # 5 of 8 frames: fine
    with pytest.raises(DatasetError, match=r"'short.mp4' has 8 frames, fewer than the 9 that video_frames 5 at "
                                           r"frame_stride 2 needs; lower video_frames or frame_stride"):
        scan_dataset(tmp_path, video=VideoSampling(frames=5, stride=2))
    with pytest.raises(DatasetError, match=r"'short.mp4' has 8 frames, fewer than the 9 that video_frames 9 needs"):
        scan_dataset(tmp_path, video=VideoSampling(frames=9))


@pytest.mark.parametrize("content", [b"not a video at all", b""])
def test_a_corrupt_video_is_refused_by_name(tmp_path: Path, content: bytes) -> None:
    write_video(tmp_path / "good.mp4", 6)
    (tmp_path / "broken.mp4").write_bytes(content)
    (tmp_path / "broken.txt").write_text("x", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"'broken.mp4' is not a readable video .*; remove it from the dataset "
                                           r"folder or re-encode it"):
        scan_dataset(tmp_path, video=VideoSampling(frames=5))


def test_a_video_without_a_caption_needs_the_trigger_word(tmp_path: Path) -> None:
    write_video(tmp_path / "silent.mp4", 6, caption=None)
    with pytest.raises(DatasetError, match=r"'silent.mp4' has no caption .* set a trigger word"):
        scan_dataset(tmp_path, video=VideoSampling(frames=5))
    spec = scan_dataset(tmp_path, trigger_word="sks", video=VideoSampling(frames=5))
    assert spec.items[0].caption == "sks"
    assert spec.warnings == ("'silent.mp4' has no caption; it is trained with the trigger word 'sks' alone.",)


@pytest.mark.parametrize(("frames", "stride", "field"), [(0, 1, "video_frames"), (258, 1, "video_frames"),
                                                         (True, 1, "video_frames"), (5, 0, "frame_stride"),
                                                         (5, 1.5, "frame_stride")])
def test_bad_video_sampling_names_the_field(frames: object, stride: object, field: str) -> None:
    with pytest.raises(DatasetError, match=rf"{field} = .* is not allowed; expected a whole number"):
        VideoSampling(frames, stride)  # type: ignore[arg-type]


def test_the_fingerprint_follows_the_videos(tmp_path: Path) -> None:
    video = write_video(tmp_path / "clip.mp4", 6)
    before = fingerprint(tmp_path)
    stat = video.stat()
    os.utime(video, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert fingerprint(tmp_path) != before


def test_a_latent_mask_broadcasts_over_a_video_models_frames() -> None:
    mask = torch.zeros(16, 16)
    mask[:, :8] = 1.0
    image_model, video_model = latent_mask(mask, (2, 2)), latent_mask(mask, (2, 2), latent_ndim=4)
    assert image_model.shape == (1, 2, 2) and video_model.shape == (1, 1, 2, 2)
    assert torch.equal(video_model[0], image_model)
    batch = torch.stack([video_model, video_model])  # as LatentBatches stacks masks: [B, 1, 1, h, w]
    weights = torch.ones(2, 16, 5, 2, 2) * batch  # every channel and frame of [B, C, frames, h, w] weighted alike
    assert torch.equal(weights[..., 0], torch.ones(2, 16, 5, 2)) and not weights[..., 1].any()
