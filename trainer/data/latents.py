"""Training batches from a dataset encoded once: latents (and flipped latents), loss masks and the text condition
per image, with the class images of prior preservation and the caption transforms of each step.

The text condition is the caption's context from a frozen text encoder, encoded once; a caption transformed at
a step (captions.py) is encoded by the caller's `text_encoder` (the host caches it per text). When the text
encoder itself trains, it is the captions (a tuple of str), which the denoiser encodes at every step.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..training.denoising import Batch
from .buckets import batches_by_bucket
from .captions import CaptionTransform
from .spec import DatasetItem

# Epoch orders come from (seed, epoch) alone, so a resumed run sees the batches an uninterrupted one would.
EPOCH_SEED_STRIDE = 1_000_003
# caption -> (context [tokens, width], pooled [width] or None), through the frozen text encoder.
TextEncoder = Callable[[str], tuple[torch.Tensor, torch.Tensor | None]]


@dataclass(frozen=True)
class EncodedImage:
    """One image as the denoiser sees it: latent [C, h, w] (a video model's [C, frames, h, w]), optional mirrored
    latent, its caption, the caption's context [tokens, width] (None when the text encoder trains and contexts
    change every step), its pooled embedding [width] where the model uses one (SDXL), and its loss mask
    [1, h, w] ([1, 1, h, w] for a video model; None: every element weighs 1; mirrored with the latent)."""
    latent: torch.Tensor
    flipped: torch.Tensor | None
    caption: str
    context: torch.Tensor | None
    pooled: torch.Tensor | None = None
    mask: torch.Tensor | None = None


@dataclass(frozen=True)
class ClassImages:
    """The regularisation images trained beside the dataset's, their loss weighted by `loss_weight`."""
    items: tuple[DatasetItem, ...]
    encoded: list[EncodedImage]
    captions: CaptionTransform
    loss_weight: float


def stack_contexts(contexts: list[torch.Tensor]) -> torch.Tensor:
    """[tokens, width] contexts -> [B, tokens, width]; long captions give 77-token multiples, a batch keeps
    the shortest common length."""
    tokens = min(c.shape[0] for c in contexts)
    return torch.stack([c[:tokens] for c in contexts])


# Stacked contexts; or {"context": ..., "pooled": ...} where every image has a pooled embedding; or captions.
Condition = torch.Tensor | dict[str, torch.Tensor] | tuple[str, ...]


def _condition(images: list[EncodedImage], texts: list[str] | None = None,
               text_encoder: TextEncoder | None = None) -> Condition:
    """The batch's condition; `texts` are the step's captions (None: the images' own)."""
    texts = texts if texts is not None else [image.caption for image in images]
    if any(image.context is None for image in images):
        return tuple(texts)
    encoded: list[tuple[torch.Tensor | None, torch.Tensor | None]] = []
    for image, text in zip(images, texts, strict=True):
        if text == image.caption:
            encoded.append((image.context, image.pooled))
        elif text_encoder is None:
            raise ValueError("the captions change from step to step: pass a text_encoder to LatentBatches")
        else:
            encoded.append(text_encoder(text))
    context = stack_contexts([c for c, _ in encoded])  # type: ignore[misc]
    if any(pooled is None for _, pooled in encoded):
        return context
    return {"context": context, "pooled": torch.stack([p for _, p in encoded])}  # type: ignore[misc]


def _stack_masks(masks: list[torch.Tensor | None]) -> torch.Tensor | None:
    """[B, 1, h, w] loss weights, ones for an image without a mask; None when no image has one."""
    present = [mask for mask in masks if mask is not None]
    if not present:
        return None
    return torch.stack([mask if mask is not None else torch.ones_like(present[0]) for mask in masks])


class LatentBatches:
    """`batch(micro_index, generator)` for the training loop; `fixed(indices)` for evaluation.

    With `captions` each training caption is transformed at every step (drawing from the loop's generator);
    with `class_images` their items join each epoch's order and every batch carries its items' loss weights.
    """

    def __init__(self, items: tuple[DatasetItem, ...], encoded: list[EncodedImage], batch_size: int, seed: int, *,
                 captions: CaptionTransform | None = None, text_encoder: TextEncoder | None = None,
                 class_images: ClassImages | None = None) -> None:
        if not items:
            raise ValueError("no images to train on")
        self.items = items
        self.encoded = encoded
        self.batch_size = batch_size
        self.seed = seed
        self.text_encoder = text_encoder
        captions = captions or CaptionTransform()
        extra = class_images or ClassImages((), [], captions, 1.0)
        self._items = items + extra.items
        self._encoded = encoded + extra.encoded
        self._captions = [captions] * len(items) + [extra.captions] * len(extra.items)
        self._weights = (None if class_images is None
                         else torch.tensor([1.0] * len(items) + [extra.loss_weight] * len(extra.items)))
        self._epochs: dict[int, list[list[int]]] = {}

    def _epoch(self, epoch: int) -> list[list[int]]:
        if epoch not in self._epochs:
            generator = torch.Generator().manual_seed(self.seed * EPOCH_SEED_STRIDE + epoch)
            self._epochs = {epoch: batches_by_bucket(list(self._items), self.batch_size, generator)}
        return self._epochs[epoch]

    def batches_per_epoch(self) -> int:
        return len(self._epoch(0))

    def batch(self, micro_index: int, generator: torch.Generator) -> Batch:
        epoch, position = divmod(micro_index, self.batches_per_epoch())
        indices = self._epoch(epoch)[position]
        latents, masks, texts = [], [], []
        for i in indices:
            image = self._encoded[i]
            mirror = bool(torch.rand((), generator=generator) < 0.5)  # drawn always: same stream flip or not
            mirrored = mirror and image.flipped is not None
            latents.append(image.flipped if mirrored else image.latent)
            masks.append(image.mask.flip(-1) if mirrored and image.mask is not None else image.mask)
            texts.append(self._captions[i].apply(image.caption, generator))
        images = [self._encoded[i] for i in indices]
        weights = self._weights[indices] if self._weights is not None else None
        return Batch(torch.stack(latents), _condition(images, texts, self.text_encoder), _stack_masks(masks), weights)

    def fixed(self, limit: int = 4):
        """A BatchFn over the first `limit` training images one at a time, unflipped, with their own captions and
        no mask or weight (the loss at fixed noise is plain MSE)."""
        count = min(limit, len(self.encoded))

        def batch(index: int, generator: torch.Generator) -> tuple[torch.Tensor, Condition]:
            image = self.encoded[index % count]
            return image.latent[None], _condition([image])
        return batch, count
