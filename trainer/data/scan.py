"""Dataset folder to DatasetSpec: find images and captions (kohya repeat folders), bucket them, split off validation.

Layout: images directly in the folder are seen once per epoch; a sub-folder named `N_name` (kohya)
repeats its images N times; other sub-folders are seen once. Videos (videos.py) are found, captioned and
repeated as images are, each trained as the frames its VideoSampling takes. Deeper folders and hidden entries are
ignored, and so are `masks` folders (masks.py: with masked_loss they hold the images' masks). Each image
`x.png` takes its caption from `x.txt` next to it (UTF-8, a BOM allowed; lines joined with a space). An
image without a caption (no file, or an empty one) is trained with the trigger word alone and listed in
`spec.warnings`; without a trigger word that is an error.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
import re
from collections.abc import Iterator
from dataclasses import replace

from ..errors import DatasetError
from ..training.config import DataOptions
from .buckets import Bucket, make_buckets, nearest_bucket, validate_resolution
from .images import IMAGE_EXTENSIONS, has_alpha, probe_image
from .masks import MASK_FOLDER, check_mask_file, find_mask_file
from .spec import DatasetItem, DatasetSpec
from .video_sampling import VideoSampling
from .videos import VIDEO_EXTENSIONS, probe_video

logger = logging.getLogger(__name__)

CAPTION_EXTENSION = ".txt"
MAX_VALIDATION_SHARE = 0.5
_REPEAT_FOLDER = re.compile(r"^(\d+)_(.+)$")
_HOW_TO = ("put .png/.jpg/.webp images with same-name .txt captions in it "
           "(a sub-folder named like '10_name' repeats its images 10 times); for video models, "
           f"{'/'.join(VIDEO_EXTENSIONS)} videos with captions train too")


def _walk(root: str) -> Iterator[tuple[str, str | None, list[str]]]:
    """(directory, sub-folder name or None for the root, sorted file names) for the root and each sub-folder."""
    def listing(directory: str) -> tuple[list[str], list[str]]:
        files, dirs = [], []
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as e:
            raise DatasetError(f"cannot list dataset folder '{directory}' ({e}); check that it is readable.") from e
        for entry in entries:
            if entry.name.startswith("."):
                continue  # .ipynb_checkpoints, .DS_Store, editor swap files
            (dirs if entry.is_dir() else files).append(entry.name)
        return files, dirs

    files, dirs = listing(root)
    yield root, None, files
    for name in dirs:
        sub = os.path.join(root, name)
        sub_files, nested = listing(sub)
        for deeper in nested:
            logger.info("dataset: ignoring '%s/%s/': only one level of sub-folders is scanned", name, deeper)
        yield sub, name, sub_files


def repeat_folder_name(folder_name: str) -> str | None:
    """The name part of a kohya `N_name` folder (its class name), None for another folder."""
    match = _REPEAT_FOLDER.match(folder_name)
    return match.group(2) if match is not None else None


def _repeats_of(folder_name: str | None) -> int:
    match = _REPEAT_FOLDER.match(folder_name or "")
    if match is None:
        return 1
    repeats = int(match.group(1))
    if repeats < 1:
        raise DatasetError(f"sub-folder '{folder_name}' asks for {repeats} repeats; rename it to start with "
                           f"1 or more (e.g. '1_{match.group(2)}'), or move it out of the dataset folder.")
    return repeats


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _is_video(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS


def _is_media(name: str) -> bool:
    return _is_image(name) or _is_video(name)


def _caption_name(image_name: str, file_names: list[str]) -> str | None:
    """`stem.txt` next to the image; an exact match first, then one differing only in case."""
    wanted = os.path.splitext(image_name)[0] + CAPTION_EXTENSION
    if wanted in file_names:
        return wanted
    lowered = wanted.lower()
    return next((name for name in file_names if name.lower() == lowered), None)


def read_caption(path: str, name: str) -> str:
    """The caption in `path` (UTF-8, BOM tolerated), stripped, its lines joined with one space."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DatasetError(f"caption '{name}' is not UTF-8 text ({e}); re-save it as UTF-8.") from e
    except OSError as e:
        raise DatasetError(f"caption '{name}' cannot be read ({e}); check that the file is readable.") from e
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def with_trigger(caption: str, trigger_word: str) -> str:
    """Put the trigger word first ("trigger, caption") unless the caption already contains it (any case)."""
    if not trigger_word or trigger_word.lower() in caption.lower():
        return caption
    return f"{trigger_word}, {caption}" if caption else trigger_word


def split_validation(count: int, share: float, seed: int) -> set[int]:
    """Indices of the held-out images: round(count * share), at least 1 when share > 0, always leaving one
    to train on; none when share is 0 or there are fewer than 2 images. Same seed, same choice."""
    if share <= 0 or count < 2:
        return set()
    held_out = min(count - 1, max(1, math.floor(count * share + 0.5)))
    return set(random.Random(seed).sample(range(count), held_out))


def _check_settings(trigger_word: object, flip: object, validation_share: object, seed: object) -> None:
    if not isinstance(trigger_word, str):
        raise DatasetError(f"trigger_word = {trigger_word!r} is not allowed; expected text (may be empty).")
    if not isinstance(flip, bool):
        raise DatasetError(f"flip = {flip!r} is not allowed; expected True or False.")
    share_ok = (isinstance(validation_share, (int, float)) and not isinstance(validation_share, bool)
                and math.isfinite(validation_share) and 0 <= validation_share <= MAX_VALIDATION_SHARE)
    if not share_ok:
        raise DatasetError(f"validation_share = {validation_share!r} is not allowed; expected a number "
                           f"from 0 (no validation images) to {MAX_VALIDATION_SHARE}.")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise DatasetError(f"seed = {seed!r} is not allowed; expected an integer of at least 0.")


def _missing_caption_error(names: list[str]) -> DatasetError:
    shown = ", ".join(f"'{n}'" for n in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return DatasetError(f"{shown} {'has' if len(names) == 1 else 'have'} no caption (no same-name .txt file, "
                        f"or an empty one) and no trigger word is set; add the caption file(s), or set a "
                        f"trigger word to be used as the caption.")


def existing_folder(folder: str | os.PathLike[str], what: str = "dataset folder") -> str:
    """`folder` as an absolute path; DatasetError if it is not a folder."""
    root = os.path.abspath(os.path.expanduser(os.fspath(folder)))
    if not os.path.isdir(root):
        state = "is a file, not a folder" if os.path.exists(root) else "does not exist"
        raise DatasetError(f"{what} '{root}' {state}; create the folder and {_HOW_TO}.")
    return root


def _mask_of(directory: str, sub_name: str | None, image_name: str, relative: str,
             size: tuple[int, int]) -> tuple[str | None, bool]:
    """(mask file, alpha is the mask) of one image; the mask file checked against the image's size."""
    mask_path = find_mask_file(directory, image_name)
    if mask_path is None:
        return None, has_alpha(os.path.join(directory, image_name), relative)
    mask_name = "/".join(part for part in (sub_name, MASK_FOLDER, os.path.basename(mask_path)) if part)
    check_mask_file(mask_path, mask_name, size, relative)
    return mask_path, False


def find_items(root: str, buckets: tuple[Bucket, ...], masked_loss: bool,
               video: VideoSampling | None = None) -> list[DatasetItem]:
    """Every image and video under `root` with its caption file's text ("" and caption_missing without one) and,
    with masked_loss, an image's mask; every image (and mask) opened and checked, every video decoded and
    checked to have the frames `video` (default: VideoSampling()) takes. Videos have no masks."""
    video = video or VideoSampling()
    root_name = os.path.basename(root)
    items: list[DatasetItem] = []
    for directory, sub_name, file_names in _walk(root):
        if sub_name == MASK_FOLDER:
            continue  # the root images' masks, not images to train on
        repeats = _repeats_of(sub_name)
        for image_name in filter(_is_media, file_names):
            path = os.path.join(directory, image_name)
            relative = image_name if sub_name is None else f"{sub_name}/{image_name}"
            is_video = _is_video(image_name)
            size = probe_video(path, relative, video) if is_video else probe_image(path, relative)
            caption_name = _caption_name(image_name, file_names)
            caption_path = os.path.join(directory, caption_name) if caption_name else None
            caption = ""
            if caption_name is not None:
                caption = read_caption(os.path.join(directory, caption_name),
                                       caption_name if sub_name is None else f"{sub_name}/{caption_name}")
            mask_path, alpha_mask = (_mask_of(directory, sub_name, image_name, relative, size)
                                     if masked_loss and not is_video else (None, False))
            items.append(DatasetItem(
                path=path, relative_path=relative, caption=caption, caption_path=caption_path,
                caption_missing=not caption, group=sub_name or root_name, repeats=repeats, size=size,
                bucket=nearest_bucket(size[0], size[1], buckets), mask_path=mask_path, alpha_mask=alpha_mask,
                video=video if is_video else None))
    return items


def scan_dataset(folder: str | os.PathLike[str], trigger_word: str = "", resolution: int = 512,
                 flip: bool = False, validation_share: float = 0.0, seed: int = 0,
                 options: DataOptions | None = None, video: VideoSampling | None = None) -> DatasetSpec:
    """Scan `folder` into a DatasetSpec; raise DatasetError for anything the user must fix first.

    Every image (and, with options.masked_loss, every mask) is opened and checked here (unreadable, smaller
    than 8x8 px, too large, a mask of another size), so training never stops half-way on a bad file. Class
    images (options.reg_folder) are added by class_images.with_class_images.
    """
    resolution = validate_resolution(resolution)
    _check_settings(trigger_word, flip, validation_share, seed)
    options = options or DataOptions()
    trigger_word = trigger_word.strip()
    root = existing_folder(folder)
    buckets = make_buckets(resolution)
    found = find_items(root, buckets, options.masked_loss, video)
    uncaptioned = [item.relative_path for item in found if item.caption_missing and not trigger_word]
    if uncaptioned:
        raise _missing_caption_error(uncaptioned)
    if not found:
        raise DatasetError(f"no images found in dataset folder '{root}' or its sub-folders; {_HOW_TO}.")
    warnings = [f"'{item.relative_path}' has no caption; it is trained with the trigger word '{trigger_word}' "
                "alone." for item in found if item.caption_missing]
    items = [replace(item, caption=with_trigger(item.caption, trigger_word)) for item in found]
    masks_folder = os.path.join(root, MASK_FOLDER)
    if not options.masked_loss and os.path.isdir(masks_folder):
        unused = [name for name in os.listdir(masks_folder) if _is_image(name)]
        if unused:  # a concept folder called masks would otherwise vanish without a word
            warnings.append(f"the '{MASK_FOLDER}' folder's {len(unused)} images are not trained: that folder holds "
                            "the images' masks for masked_loss; rename it to train its images.")
    if options.masked_loss and not any(item.mask_path or item.alpha_mask for item in items):
        warnings.append(f"masked_loss is on, but no image has a mask (a same-name image in a '{MASK_FOLDER}' "
                        "folder beside it, or an alpha channel): every image trains everywhere.")

    held_out = split_validation(len(items), float(validation_share), seed)
    spec = DatasetSpec(
        folder=root, trigger_word=trigger_word, resolution=resolution, flip=flip,
        validation_share=float(validation_share), seed=seed, buckets=buckets,
        items=tuple(item for i, item in enumerate(items) if i not in held_out),
        validation_items=tuple(item for i, item in enumerate(items) if i in held_out),
        warnings=tuple(warnings), options=options, video=video or VideoSampling())
    for warning in warnings:
        logger.warning("dataset: %s", warning)
    logger.info("dataset '%s': %s", root, spec.summary())
    return spec


def fingerprint(folder: str | os.PathLike[str]) -> str:
    """A cheap hash of (relative path, size, mtime_ns) of every image, video, caption and mask file scan_dataset
    reads.

    Changes when a file is added, removed, renamed or edited; no file is opened. A missing folder has a
    fingerprint too (scan_dataset then reports it), so a node can always compare.
    """
    root = os.path.abspath(os.path.expanduser(os.fspath(folder)))
    digest = hashlib.sha256()
    if not os.path.isdir(root):
        digest.update(f"missing:{root}".encode())
        return digest.hexdigest()
    for directory, sub_name, file_names in _walk(root):
        listed = [(name if sub_name is None else f"{sub_name}/{name}", os.path.join(directory, name))
                  for name in file_names]
        masks = os.path.join(directory, MASK_FOLDER)
        if sub_name not in (None, MASK_FOLDER) and os.path.isdir(masks):  # the root's masks/ is walked already
            listed += [(f"{sub_name}/{MASK_FOLDER}/{name}", os.path.join(masks, name))
                       for name in sorted(os.listdir(masks))]
        for relative, path in listed:
            if not (_is_media(relative) or relative.lower().endswith(CAPTION_EXTENSION)) or not os.path.isfile(path):
                continue
            stat = os.stat(path)
            digest.update(f"{relative}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()
