"""LoRA Dataset node: a folder of captioned images (and videos) -> a dataset value; re-runs when the folder's files
change."""
from __future__ import annotations

import dataclasses
import os

import folder_paths

from ..trainer.data.class_images import with_class_images
from ..trainer.data.scan import fingerprint, scan_dataset
from ..trainer.data.video_sampling import DEFAULT_VIDEO_FRAMES, MAX_FRAME_STRIDE, MAX_VIDEO_FRAMES, VideoSampling
from ..trainer.training.config import DataOptions
from .config_inputs import field_input

DATASET_TYPE = "LORALAB_DATASET"
# Optional inputs named as DataOptions' fields, in the order saved workflows store them: new ones go at the end.
DATA_OPTIONS = ("caption_prefix", "caption_suffix", "shuffle_caption", "keep_tokens", "keep_tokens_separator",
                "caption_dropout_rate", "caption_tag_dropout_rate", "masked_loss", "reg_folder", "prior_loss_weight")
# After them: how videos are sampled (VideoSampling), for video models such as Wan.
VIDEO_INPUTS = {
    "video_frames": ("INT", {
        "default": DEFAULT_VIDEO_FRAMES, "min": 1, "max": MAX_VIDEO_FRAMES, "step": 4,
        "tooltip": "Frames trained from each video (from its first frame). Wan's VAE takes 1 + 4k frames: "
                   "1, 5, 9, 13, 17, ..., 81. A shorter video is an error.",
    }),
    "frame_stride": ("INT", {
        "default": 1, "min": 1, "max": MAX_FRAME_STRIDE,
        "tooltip": "Take every n-th frame of a video: 1 consecutive frames, 2 every other one (30 fps video "
                   "trained at 15 fps).",
    }),
}


def dataset_folder(folder: str) -> str:
    """An absolute folder, or a folder name inside the host's input folder."""
    folder = folder.strip()
    if os.path.isabs(os.path.expanduser(folder)):
        return os.path.expanduser(folder)
    return os.path.join(folder_paths.get_input_directory(), folder)


class LoraLabDataset:
    """Images with same-name .txt captions (kohya `N_name` repeat folders too), bucketed by aspect ratio."""

    DESCRIPTION = ("A folder of .png/.jpg/.webp images with same-name .txt captions. Sub-folders named like "
                   "'10_name' repeat their images 10 times. Images are sorted into aspect-ratio buckets; "
                   "nothing is stretched. For video models (Wan), .mp4/.webm/.mov/.mkv videos with captions "
                   "train too, video_frames of each at frame_stride.")
    CATEGORY = "LoRA Lab"
    FUNCTION = "scan"
    RETURN_TYPES = (DATASET_TYPE,)
    RETURN_NAMES = ("dataset",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "folder": ("STRING", {
                "default": "lora_dataset",
                "tooltip": "An absolute path, or a folder inside ComfyUI's input folder.",
            }),
            "trigger_word": ("STRING", {
                "default": "",
                "tooltip": "Put first in every caption that lacks it; written to the LoRA's metadata.",
            }),
            "resolution": ("INT", {
                "default": 512,
                "min": 64,
                "max": 4096,
                "step": 64,
                "tooltip": "Training side length; buckets keep about this many pixels.",
            }),
            "flip": ("BOOLEAN", {
                "default": False,
                "tooltip": "Randomly mirror images left-right (not for asymmetric subjects or text).",
            }),
            "validation_share": ("FLOAT", {
                "default": 0.0,
                "min": 0.0,
                "max": 0.5,
                "step": 0.05,
                "tooltip": "Share of images held out to measure validation loss.",
            }),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1, "tooltip": "Chooses the held-out images."}),
        }, "optional": {**{name: field_input(DataOptions, name) for name in DATA_OPTIONS}, **VIDEO_INPUTS}}

    @classmethod
    def IS_CHANGED(cls, folder, reg_folder="", **settings):
        reg = fingerprint(dataset_folder(reg_folder)) if reg_folder.strip() else ""
        return fingerprint(dataset_folder(folder)), reg, reg_folder, tuple(sorted(settings.items()))

    def scan(self, folder, trigger_word, resolution, flip, validation_share, seed,
             video_frames=DEFAULT_VIDEO_FRAMES, frame_stride=1, **data_options):
        options = DataOptions(**{f.name: data_options.get(f.name, f.default) for f in dataclasses.fields(DataOptions)})
        spec = scan_dataset(dataset_folder(folder), trigger_word, resolution, flip, validation_share, seed, options,
                            VideoSampling(video_frames, frame_stride))
        if options.reg_folder.strip():
            spec = with_class_images(spec, dataset_folder(options.reg_folder))
        return {"ui": {"text": [spec.summary(), *spec.warnings]}, "result": (spec,)}
