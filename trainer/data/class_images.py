"""Regularisation (class) images for prior preservation, as sd-scripts' DreamBooth dataset treats them.

A folder laid out like the dataset; an image without a caption file takes the class name of its kohya `N_class`
folder. Each epoch trains as many class samples as training samples (the training images counted with their
repeats): the class images are registered in folder order with their own repeats until that count is reached,
then one more repeat each, in order, until it is (sd-scripts' num_repeats loop). Their loss is weighted by
prior_loss_weight (latents.LatentBatches).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace

from ..errors import DatasetError
from .scan import existing_folder, find_items, repeat_folder_name
from .spec import DatasetSpec


def balanced_repeats(train_samples: int, folder_repeats: Sequence[int]) -> list[int]:
    """Each class image's repeats per epoch, so that they add up to at least `train_samples`; 0 for an image the
    count was reached before."""
    repeats = [0] * len(folder_repeats)
    total, first_pass = 0, True
    while total < train_samples and folder_repeats:
        for index, own in enumerate(folder_repeats):
            step = own if first_pass else 1
            repeats[index] += step
            total += step
            if total >= train_samples:
                break
        first_pass = False
    return repeats


def with_class_images(spec: DatasetSpec, folder: str | os.PathLike[str]) -> DatasetSpec:
    """`spec` with the class images of `folder` (spec.options.masked_loss finds their masks too), their repeats
    balanced against spec's training samples; DatasetError for a folder without images or an image that has
    neither a caption nor an `N_class` folder."""
    root = existing_folder(folder, "regularisation folder")
    found = find_items(root, spec.buckets, spec.options.masked_loss, spec.video)
    if not found:
        raise DatasetError(f"no images found in regularisation folder '{root}' or its sub-folders; put the class "
                           "images in a sub-folder named like '1_dog' (their caption is then 'dog' unless they "
                           "have a .txt caption).")
    nameless = [item.relative_path for item in found if item.caption_missing and not repeat_folder_name(item.group)]
    if nameless:
        shown = ", ".join(f"'{name}'" for name in nameless[:5]) + (f" and {len(nameless) - 5} more"
                                                                  if len(nameless) > 5 else "")
        raise DatasetError(f"class image(s) {shown} in '{root}' have no caption and no class name; add .txt "
                           "captions, or move them into a sub-folder named like '1_dog' (caption 'dog').")
    captioned = [item if not item.caption_missing else replace(item, caption=repeat_folder_name(item.group) or "")
                 for item in found]
    repeats = balanced_repeats(spec.samples_per_epoch, [item.repeats for item in captioned])
    class_items = tuple(replace(item, repeats=count) for item, count in zip(captioned, repeats, strict=True)
                        if count > 0)
    return replace(spec, class_items=class_items, class_folder=root)
