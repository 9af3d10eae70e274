"""The dataset side of training in one import: scan a folder, bucket its images, load pixels, batch them.

    spec = scan_dataset(folder, trigger_word="ohwx", resolution=512, flip=True, validation_share=0.1)
    pixels = load_pixels(spec.items[0])  # [H, W, 3] float32 in [0, 1], H x W = the item's bucket
    for batch in batches_by_bucket(spec.items, batch_size, generator): ...

Flip is left to the trainer (random per step with its generator); `spec.flip` says whether to.
"""

from __future__ import annotations

from .buckets import Bucket, batches_by_bucket, make_buckets, nearest_bucket, validate_resolution
from .dataset_images import IMAGE_EXTENSIONS, load_image_pixels, load_pixels, probe_image, to_rgb
from .dataset_scan import fingerprint, read_caption, scan_dataset, split_validation, with_trigger
from .dataset_spec import DatasetError, DatasetItem, DatasetSpec

__all__ = [
    "IMAGE_EXTENSIONS", "Bucket", "DatasetError", "DatasetItem", "DatasetSpec", "batches_by_bucket",
    "fingerprint", "load_image_pixels", "load_pixels", "make_buckets", "nearest_bucket", "probe_image",
    "read_caption", "scan_dataset", "split_validation", "to_rgb", "validate_resolution", "with_trigger",
]
