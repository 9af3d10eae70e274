"""The scanned dataset as values: DatasetItem per image, DatasetSpec for the folder."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetItem:
    """One distinct image of the dataset, with its final caption and bucket.

    `size` is (width, height) after EXIF orientation; `bucket` is the (width, height) it is trained at.
    `group` is the sub-folder it came from (the dataset folder's own name for images at the top).
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

    @property
    def all_items(self) -> tuple[DatasetItem, ...]:
        """Training and validation items together, in folder order."""
        return tuple(sorted(self.items + self.validation_items, key=lambda item: item.relative_path))

    @property
    def samples_per_epoch(self) -> int:
        """Training images counted with their repeats."""
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
        head = f"{len(everything)} image{'s' if len(everything) != 1 else ''}"
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
