"""The scanned dataset as values: DatasetItem per image or video, DatasetSpec for the folder."""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass

from ..training.config import DataOptions
from .video_sampling import VideoSampling


@dataclass(frozen=True)
class DatasetItem:
    """One distinct image (or video) of the dataset, with its final caption and bucket.

    `size` is (width, height) after EXIF orientation (a video's frame size); `bucket` is the (width, height) it is
    trained at. `group` is the sub-folder it came from (the dataset folder's own name for images at the top).
    `video` says which frames of a video are trained; None for an image.
    """

    path: str
    relative_path: str  # posix, relative to the dataset folder: used in messages and summaries
    caption: str  # as trained: the trigger word first when one is set
    caption_path: str | None  # None when the image has no caption file
    caption_missing: bool  # no caption file (or an empty one): caption is the trigger word alone
    group: str
    repeats: int
    size: tuple[int, int]
    bucket: tuple[int, int]
    mask_path: str | None = None  # with masked_loss: its file in masks/ (masks.py)
    alpha_mask: bool = False  # with masked_loss and no mask file: its alpha channel is the mask
    video: VideoSampling | None = None

    @property
    def frame_count(self) -> int:
        """The frames it is trained with: 1 for an image. Batches hold one bucket and one frame count."""
        return 1 if self.video is None else self.video.frames


@dataclass(frozen=True)
class DatasetSpec:
    """A scanned dataset folder: training items, held-out validation items and the settings used.

    Flip is not applied here: the trainer mirrors images per step with its own generator.
    """

    folder: str
    trigger_word: str
    resolution: int
    flip: bool
    validation_share: float
    seed: int
    buckets: tuple[tuple[int, int], ...]  # every bucket available at this resolution
    items: tuple[DatasetItem, ...]  # trained on
    validation_items: tuple[DatasetItem, ...]  # held out, never trained on
    warnings: tuple[str, ...] = ()
    options: DataOptions = DataOptions()  # caption transforms, masked loss, regularisation
    class_items: tuple[DatasetItem, ...] = ()  # regularisation images, repeats balanced against the items
    class_folder: str = ""  # where they were found (absolute), "" without
    video: VideoSampling = VideoSampling()  # the frames each video of the folder (and class folder) trains

    @property
    def masked_count(self) -> int:
        """Training and class images that have a mask (a file or an alpha channel)."""
        return sum(item.mask_path is not None or item.alpha_mask for item in self.items + self.class_items)

    @property
    def all_items(self) -> tuple[DatasetItem, ...]:
        """Training and validation items together, in folder order."""
        return tuple(sorted(self.items + self.validation_items, key=lambda item: item.relative_path))

    @property
    def samples_per_epoch(self) -> int:
        """Training images and videos counted with their repeats."""
        return sum(item.repeats for item in self.items)

    def bucket_counts(self) -> dict[tuple[int, int], int]:
        """Bucket -> number of distinct images in it (all items), most used first."""
        counts = Counter(item.bucket for item in self.all_items)
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def summary(self) -> str:
        """One line for the node, e.g. "12 images (3 repeats x 4 in 3_cat, 8 plain) → 20 samples/epoch, …"."""
        everything = self.all_items
        groups: dict[str, tuple[int, int]] = {}
        plain = 0
        for item in everything:
            if item.repeats == 1:
                plain += 1
            else:
                repeats, count = groups.get(item.group, (item.repeats, 0))
                groups[item.group] = (repeats, count + 1)
        parts = [f"{repeats} repeats x {count} in {group}" for group, (repeats, count) in sorted(groups.items())]
        if plain and parts:
            parts.append(f"{plain} plain")
        videos = [item for item in everything if item.video is not None]
        images = len(everything) - len(videos)
        head = f"{images} image{'s' if images != 1 else ''}" if images or not videos else ""
        if videos:
            stride = f" at stride {self.video.stride}" if self.video.stride > 1 else ""
            head += (", " if head else "") + (f"{len(videos)} video{'s' if len(videos) != 1 else ''} of "
                                              f"{self.video.frames} frames{stride}")
        if parts:
            head += f" ({', '.join(parts)})"
        text = f"{head} → {self.samples_per_epoch} samples/epoch"
        if self.validation_items:
            text += f", {len(self.validation_items)} held out for validation"
        text += ", buckets " + ", ".join(f"{w}x{h} ×{n}" for (w, h), n in self.bucket_counts().items())
        if self.trigger_word:
            text += f", trigger '{self.trigger_word}'"
        missing = sum(item.caption_missing for item in everything)
        if missing:
            text += f", {missing} missing caption{'s' if missing != 1 else ''}"
        if self.class_items:
            text += (f", {len(self.class_items)} class images → {sum(i.repeats for i in self.class_items)} "
                     f"samples/epoch (prior loss weight {self.options.prior_loss_weight:g})")
        if self.options.masked_loss:
            text += f", {self.masked_count} masked"
        return text

    def tag_frequency(self) -> dict[str, dict[str, int]]:
        """kohya's ss_tag_frequency: {folder name: {tag: images with it}} over the training items.

        Tags are the comma-separated parts of each caption, stripped and lower-cased.
        """
        out: dict[str, dict[str, int]] = {}
        for item in self.items:
            tags = out.setdefault(item.group, {})
            for tag in dict.fromkeys(t.strip().lower() for t in item.caption.split(",")):  # caption order, once each
                if tag:
                    tags[tag] = tags.get(tag, 0) + 1
        return out

    def kohya_metadata(self) -> dict[str, str]:
        """sd-scripts' metadata of the class images and the data options (ss_num_reg_images, ss_reg_dataset_dirs,
        ss_prior_loss_weight, caption and mask settings)."""
        options = self.options
        reg_dirs: dict[str, dict[str, int]] = {}
        for item in self.class_items:
            entry = reg_dirs.setdefault(f"{os.path.basename(self.class_folder)}/{item.group}",
                                        {"n_repeats": 0, "img_count": 0})
            entry["n_repeats"] = max(entry["n_repeats"], item.repeats)
            entry["img_count"] += 1
        return {"ss_num_reg_images": str(len(self.class_items)), "ss_reg_dataset_dirs": json.dumps(reg_dirs),
                "ss_prior_loss_weight": str(options.prior_loss_weight),
                "ss_caption_dropout_rate": str(options.caption_dropout_rate),
                "ss_caption_tag_dropout_rate": str(options.caption_tag_dropout_rate),
                "ss_shuffle_caption": str(options.shuffle_caption), "ss_keep_tokens": str(options.keep_tokens),
                "ss_keep_tokens_separator": options.keep_tokens_separator,
                "ss_masked_loss": str(options.masked_loss)}
