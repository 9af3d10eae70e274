"""The dataset through the host's VAE (and CLIP), cached by what the data is: files, captions, buckets, models."""
from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ...trainer.data.images import load_pixels
from ...trainer.data.latents import EncodedImage
from ...trainer.data.spec import DatasetItem, DatasetSpec
from . import model as host_model


def _file_identity(path: str) -> tuple[str, int, int]:
    stat = os.stat(path)
    return os.path.realpath(path), stat.st_size, stat.st_mtime_ns


def data_key(items: tuple[DatasetItem, ...], spec: DatasetSpec, contexts: bool) -> tuple:
    """What the encoded latents depend on besides the models: every image file (absolute path, size, mtime),
    its caption, its bucket, the flip setting, and whether captions are encoded too."""
    return (os.path.realpath(spec.folder), spec.flip, contexts,
            tuple((_file_identity(i.path), i.caption, i.bucket) for i in items))


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
    """Every image through the host's VAE and, with `contexts`, every caption through its CLIP, once (cached).
    Without contexts (the text encoder trains), captions are encoded at every step instead.

    before_each(index, count) runs before each image: it reports progress and raises to stop the run.
    """
    key, models = data_key(items, spec, contexts), (vae, clip, model.model)
    cached = encoded_datasets.get(key, models)
    if cached is not None:
        return cached
    captions: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
    encoded = []
    for index, item in enumerate(items):
        before_each(index, len(items))
        pixels = load_pixels(item)[None]
        latent = host_model.encode_pixels(vae, model, pixels)[0]
        flipped = host_model.encode_pixels(vae, model, pixels.flip(2))[0] if spec.flip else None
        if contexts and item.caption not in captions:
            context, pooled = host_model.encode_caption(clip, item.caption)
            captions[item.caption] = (context[0], None if pooled is None else pooled[0])
        context, pooled = captions.get(item.caption, (None, None))
        encoded.append(EncodedImage(latent, flipped, item.caption, context, pooled))
    encoded_datasets.put(key, models, encoded)
    return encoded
