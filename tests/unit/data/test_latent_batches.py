"""Training batches from encoded images: contexts when the text encoder is frozen, captions when it trains."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trainer.data.latents import EncodedImage, LatentBatches, stack_contexts


@dataclass(frozen=True)
class Item:
    bucket: tuple[int, int] = (64, 64)
    repeats: int = 1


def _images(contexts: bool) -> list[EncodedImage]:
    return [EncodedImage(latent=torch.full((4, 8, 8), float(i)), flipped=None, caption=f"caption {i}",
                         context=torch.full((77 * (1 + i % 2), 8), float(i)) if contexts else None)
            for i in range(4)]


def test_frozen_text_encoder_batches_carry_stacked_contexts_cut_to_the_shortest() -> None:
    batches = LatentBatches(tuple(Item() for _ in range(4)), _images(contexts=True), batch_size=2, seed=3)
    latents, condition, *_ = batches.batch(0, torch.Generator().manual_seed(0))
    assert latents.shape == (2, 4, 8, 8)
    assert isinstance(condition, torch.Tensor) and condition.shape == (2, 77, 8)
    # each row's context belongs to the latent in the same row
    assert torch.equal(condition[:, 0, 0], latents[:, 0, 0, 0])


def test_trained_text_encoder_batches_carry_the_captions_in_latent_order() -> None:
    batches = LatentBatches(tuple(Item() for _ in range(4)), _images(contexts=False), batch_size=2, seed=3)
    latents, condition, *_ = batches.batch(1, torch.Generator().manual_seed(0))
    assert condition == tuple(f"caption {int(v)}" for v in latents[:, 0, 0, 0])
    fixed, count = batches.fixed(limit=3)
    assert count == 3 and fixed(2, torch.Generator())[1] == ("caption 2",)


def test_stack_contexts_keeps_the_shortest_common_length() -> None:
    stacked = stack_contexts([torch.zeros(154, 8), torch.ones(77, 8)])
    assert stacked.shape == (2, 77, 8) and stacked[1].eq(1).all()


def test_pooled_embeddings_travel_with_their_contexts() -> None:
    images = [EncodedImage(latent=torch.full((4, 8, 8), float(i)), flipped=None, caption=f"c{i}",
                           context=torch.full((77, 8), float(i)), pooled=torch.full((5,), float(i)))
              for i in range(3)]
    batches = LatentBatches(tuple(Item() for _ in range(3)), images, batch_size=3, seed=1)
    latents, condition, *_ = batches.batch(0, torch.Generator().manual_seed(0))
    assert isinstance(condition, dict) and condition["pooled"].shape == (3, 5)
    assert torch.equal(condition["pooled"][:, 0], latents[:, 0, 0, 0])
    assert torch.equal(condition["context"][:, 0, 0], latents[:, 0, 0, 0])
