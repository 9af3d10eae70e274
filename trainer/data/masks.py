"""Loss masks: the weight of each pixel of an image, fitted into its bucket like the image, at the latent's size.

A mask is a same-name image in a `masks` folder beside the images (sd-scripts' mask images, its
conditioning_data_dir: white = train, black = ignore, grey = a weight between; the red channel is read), else
the image's own alpha channel (sd-scripts' alpha_mask). Both must have the image's size.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DatasetError
from .buckets import Bucket
from .images import IMAGE_EXTENSIONS, decode_upright, fit_to_bucket, probe_image, to_rgb
from .spec import DatasetItem

MASK_FOLDER = "masks"


def find_mask_file(directory: str, image_name: str) -> str | None:
    """`directory/masks/<stem>.<png|jpg|jpeg|webp>` for the image `image_name`, an exact name first, then one
    differing only in case; None when there is none."""
    folder = os.path.join(directory, MASK_FOLDER)
    if not os.path.isdir(folder):
        return None
    stem = os.path.splitext(image_name)[0]
    names = sorted(n for n in os.listdir(folder) if os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS)
    exact = [n for n in names if os.path.splitext(n)[0] == stem]
    loose = [n for n in names if os.path.splitext(n)[0].lower() == stem.lower()]
    found = (exact or loose or [None])[0]
    return os.path.join(folder, found) if found is not None else None


def check_mask_file(path: str, name: str, image_size: tuple[int, int], image_name: str) -> None:
    """Raise DatasetError naming the mask file if it does not decode or has another size than its image."""
    size = probe_image(path, name)
    if size != image_size:
        raise DatasetError(f"mask '{name}' is {size[0]}x{size[1]} px but its image '{image_name}' is "
                           f"{image_size[0]}x{image_size[1]} px; a mask must have its image's size (re-export it "
                           f"at {image_size[0]}x{image_size[1]}, or remove it to train on the whole image).")


def load_mask(item: DatasetItem, bucket: Bucket | None = None) -> torch.Tensor | None:
    """The item's mask in its bucket (or `bucket`): [H, W] float32 in [0, 1]; None when it has none."""
    bucket = bucket or item.bucket
    if item.mask_path is not None:
        name = f"{MASK_FOLDER}/{os.path.basename(item.mask_path)} (for '{item.relative_path}')"
        channel = to_rgb(decode_upright(item.mask_path, bucket, name)).getchannel("R")
    elif item.alpha_mask:
        channel = decode_upright(item.path, bucket, item.relative_path).convert("RGBA").getchannel("A")
    else:
        return None
    return torch.from_numpy(np.array(fit_to_bucket(channel, bucket), dtype=np.float32) / 255.0)


def latent_mask(mask: torch.Tensor, latent_hw: tuple[int, int], latent_ndim: int = 3) -> torch.Tensor:
    """A pixel mask [H, W] reduced to the latent's (h, w) by area averaging (sd-scripts' interpolate 'area'),
    shaped to broadcast over a latent of `latent_ndim` dimensions: [1, h, w] for an image model's [C, h, w],
    [1, 1, h, w] for a video model's [C, frames, h, w]."""
    reduced = F.interpolate(mask[None, None].float(), size=latent_hw, mode="area")[0, 0]
    return reduced.reshape((1,) * (latent_ndim - 2) + tuple(reduced.shape))
