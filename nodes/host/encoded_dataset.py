"""The dataset through the host's VAE (and CLIP), cached by what the data is: files, captions, buckets, models."""
from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ...trainer.data.captions import CaptionTransform
from ...trainer.data.latents import ClassImages, EncodedImage, LatentBatches
from ...trainer.data.masks import latent_mask, load_mask
from ...trainer.data.spec import DatasetItem, DatasetSpec
from ...trainer.data.videos import item_pixels
from . import model as host_model

# CPU memory for the contexts of transformed captions: one is 0.2 MB (SD1.5) to 8 MB (Flux's T5 at 512 tokens).
CAPTION_CACHE_BYTES = 256 * 2**20


def _file_identity(path: str) -> tuple[str, int, int]:
    stat = os.stat(path)
    return os.path.realpath(path), stat.st_size, stat.st_mtime_ns


def data_key(items: tuple[DatasetItem, ...], spec: DatasetSpec, contexts: bool) -> tuple:
    """What the encoded latents depend on besides the models: every image or video file (absolute path, size,
    mtime), its caption, its bucket, its mask (file, or alpha), a video's sampled frames, the flip setting, and
    whether captions are encoded too.
    Caption transforms are not in it: they apply at every step, after the cache."""
    return (os.path.realpath(spec.folder), spec.flip, contexts,
            tuple((_file_identity(i.path), i.caption, i.bucket,
                   _file_identity(i.mask_path) if i.mask_path else None, i.alpha_mask, i.video) for i in items))


@dataclass
class _Entry:
    key: tuple
    models: tuple[weakref.ref, ...]  # the VAE, CLIP and diffusion model objects, compared by identity
    encoded: list[EncodedImage]

    def matches(self, key: tuple, models: tuple[object, ...]) -> bool:
        return self.key == key and all(ref() is model for ref, model in zip(self.models, models, strict=True))


class EncodedDatasetCache:
    """The last encoded dataset. A hit needs the same data key and the very same VAE, CLIP and model objects
    (held weakly: an id() could be reused by a model loaded after this one was freed)."""

    def __init__(self) -> None:
        self._entry: _Entry | None = None
        self._lock = threading.Lock()

    def get(self, key: tuple, models: tuple[object, ...]) -> list[EncodedImage] | None:
        with self._lock:
            return self._entry.encoded if self._entry is not None and self._entry.matches(key, models) else None

    def put(self, key: tuple, models: tuple[object, ...], encoded: list[EncodedImage]) -> None:
        with self._lock:  # one dataset at a time: latents are small, but models come and go
            self._entry = _Entry(key, tuple(weakref.ref(m) for m in models), encoded)


encoded_datasets = EncodedDatasetCache()


def encode_dataset(items: tuple[DatasetItem, ...], spec: DatasetSpec, model, clip, vae, contexts: bool,
                   before_each: Callable[[int, int], None]) -> list[EncodedImage]:
    """Every image (and video) through the host's VAE and, with `contexts`, every caption through its CLIP, once
    (cached). Without contexts (the text encoder trains), captions are encoded at every step instead. A video
    model's VAE encodes an image as a one-frame video: its latents are [C, 1, h, w], a video's [C, frames, h, w].

    before_each(index, count) runs before each image: it reports progress and raises to stop the run.
    """
    key, models = data_key(items, spec, contexts), (vae, clip, model.model)
    cached = encoded_datasets.get(key, models)
    if cached is not None:
        return cached
    host_model.check_dataset_fits(vae, model, items)
    captions: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
    encoded = []
    for index, item in enumerate(items):
        before_each(index, len(items))
        pixels = item_pixels(item)
        latent = host_model.encode_pixels(vae, model, pixels)[0]
        flipped = host_model.encode_pixels(vae, model, pixels.flip(2))[0] if spec.flip else None
        if contexts and item.caption not in captions:
            context, pooled = host_model.encode_caption(clip, item.caption)
            captions[item.caption] = (context[0], None if pooled is None else pooled[0])
        context, pooled = captions.get(item.caption, (None, None))
        mask = load_mask(item)
        encoded.append(EncodedImage(latent, flipped, item.caption, context, pooled,
                                    None if mask is None else latent_mask(mask, tuple(latent.shape[-2:]),
                                                                          latent.ndim)))
    encoded_datasets.put(key, models, encoded)
    return encoded


class CaptionContexts:
    """caption -> (context [tokens, width], pooled [width] or None) through the host's CLIP without autograd, for
    the captions a step transforms; distinct captions are kept up to `capacity_bytes`, the least recently used
    dropped first (always keeping the newest)."""

    def __init__(self, clip, capacity_bytes: int = CAPTION_CACHE_BYTES) -> None:
        self._clip, self._capacity, self._bytes = clip, capacity_bytes, 0
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor | None]] = OrderedDict()

    def __call__(self, caption: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        if caption in self._cache:
            self._cache.move_to_end(caption)
            return self._cache[caption]
        context, pooled = host_model.encode_caption(self._clip, caption)
        encoded = (context[0], None if pooled is None else pooled[0])
        self._cache[caption] = encoded
        self._bytes += _size(encoded)
        while self._bytes > self._capacity and len(self._cache) > 1:
            self._bytes -= _size(self._cache.popitem(last=False)[1])
        return encoded


def _size(encoded: tuple[torch.Tensor, torch.Tensor | None]) -> int:
    return sum(t.numel() * t.element_size() for t in encoded if t is not None)


def training_batches(spec: DatasetSpec, encoded: list[EncodedImage], class_encoded: list[EncodedImage],
                     batch_size: int, seed: int, frozen_clip) -> LatentBatches:
    """The loop's batches of the training images (and class images) with the dataset's caption transforms; a
    transformed caption is encoded by `frozen_clip` (cached per text), or by the denoiser when the CLIP trains
    (frozen_clip None)."""
    options = spec.options
    class_images = (ClassImages(spec.class_items, class_encoded, CaptionTransform(options, affixes=False),
                                options.prior_loss_weight) if spec.class_items else None)
    return LatentBatches(spec.items, encoded, batch_size, seed, captions=CaptionTransform(options, spec.trigger_word),
                         text_encoder=CaptionContexts(frozen_clip) if frozen_clip is not None else None,
                         class_images=class_images)
