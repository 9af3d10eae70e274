"""Training batches from a dataset encoded once: latents (and flipped latents) plus the text condition per image.

The text condition is the caption's context from a frozen text encoder, encoded once; when the text
encoder itself trains, it is the captions (a tuple of str), which the denoiser encodes at every step.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .buckets import batches_by_bucket
from .spec import DatasetItem

# Epoch orders come from (seed, epoch) alone, so a resumed run sees the batches an uninterrupted one would.
EPOCH_SEED_STRIDE = 1_000_003


@dataclass(frozen=True)
class EncodedImage:
    """One image as the denoiser sees it: latent [C, h, w], optional mirrored latent, its caption, the
    caption's context [tokens, width] (None when the text encoder trains and contexts change every step)
    and its pooled embedding [width] where the model uses one (SDXL)."""
    latent: torch.Tensor
    flipped: torch.Tensor | None
    caption: str
    context: torch.Tensor | None
    pooled: torch.Tensor | None = None


def stack_contexts(contexts: list[torch.Tensor]) -> torch.Tensor:
    """[tokens, width] contexts -> [B, tokens, width]; long captions give 77-token multiples, a batch keeps
    the shortest common length."""
    tokens = min(c.shape[0] for c in contexts)
    return torch.stack([c[:tokens] for c in contexts])


# Stacked contexts; or {"context": ..., "pooled": ...} where every image has a pooled embedding; or captions.
Condition = torch.Tensor | dict[str, torch.Tensor] | tuple[str, ...]


def _condition(images: list[EncodedImage]) -> Condition:
    if any(image.context is None for image in images):
        return tuple(image.caption for image in images)
    context = stack_contexts([image.context for image in images])
    if any(image.pooled is None for image in images):
        return context
    return {"context": context, "pooled": torch.stack([image.pooled for image in images])}


class LatentBatches:
    """`batch(micro_index, generator)` for the training loop; `fixed(indices)` for evaluation."""

    def __init__(self, items: tuple[DatasetItem, ...], encoded: list[EncodedImage], batch_size: int, seed: int) -> None:
        if not items:
            raise ValueError("no images to train on")
        self.items = items
        self.encoded = encoded
        self.batch_size = batch_size
        self.seed = seed
        self._epochs: dict[int, list[list[int]]] = {}

    def _epoch(self, epoch: int) -> list[list[int]]:
        if epoch not in self._epochs:
            generator = torch.Generator().manual_seed(self.seed * EPOCH_SEED_STRIDE + epoch)
            self._epochs = {epoch: batches_by_bucket(list(self.items), self.batch_size, generator)}
        return self._epochs[epoch]

    def batches_per_epoch(self) -> int:
        return len(self._epoch(0))

    def batch(self, micro_index: int, generator: torch.Generator) -> tuple[torch.Tensor, Condition]:
        epoch, position = divmod(micro_index, self.batches_per_epoch())
        indices = self._epoch(epoch)[position]
        latents = []
        for i in indices:
            image = self.encoded[i]
            mirror = bool(torch.rand((), generator=generator) < 0.5)  # drawn always: same stream flip or not
            latents.append(image.flipped if (mirror and image.flipped is not None) else image.latent)
        return torch.stack(latents), _condition([self.encoded[i] for i in indices])

    def fixed(self, limit: int = 4):
        """A batch function over the first `limit` images one at a time, unflipped (for evaluation)."""
        count = min(limit, len(self.encoded))

        def batch(index: int, generator: torch.Generator) -> tuple[torch.Tensor, Condition]:
            image = self.encoded[index % count]
            return image.latent[None], _condition([image])
        return batch, count
