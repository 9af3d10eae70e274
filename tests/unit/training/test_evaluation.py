"""Loss at fixed noise: batched passes give the value one-by-one passes give, with fewer passes."""
from __future__ import annotations

import pytest
import torch

from tests.support.tiny_models import (
    TinyTextEncoder,
    attach,
    batch_fn,
    caption_batches,
    dataset,
    make_model,
    text_denoiser,
)
from trainer.training.config import LoraShape
from trainer.training.evaluation import evaluate
from trainer.training.objective import NoiseSchedule

SCHEDULE = NoiseSchedule.scaled_linear()


class CountingDenoiser:
    """The denoiser, counting its passes and the items of each."""

    def __init__(self, denoiser) -> None:
        self.denoiser, self.passes = denoiser, []

    def __call__(self, x_t, timesteps, cond):
        self.passes.append(x_t.shape[0])
        return self.denoiser(x_t, timesteps, cond)


def trained_model():
    """The tiny model with a LoRA whose up matrices are not zero, so the LoRA changes every prediction."""
    model = make_model()
    adapters = attach(model, LoraShape(rank=2, targets="attention_ff_conv"))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for key in adapters.keys():
            up = adapters[key].lora_up.weight
            up.copy_(torch.randn(up.shape, generator=generator) * 0.1)
    return model, adapters


@pytest.mark.parametrize("batch_size,num_batches", [(1, 4), (2, 3)])
def test_batched_passes_equal_one_by_one_passes(batch_size: int, num_batches: int) -> None:
    model, adapters = trained_model()
    latents, cond = dataset()
    fixed = batch_fn(latents, cond, batch_size, shuffle=False)
    one_by_one, batched = CountingDenoiser(model), CountingDenoiser(model)
    single = evaluate(one_by_one, adapters, fixed, SCHEDULE, fixed_seed=5, num_batches=num_batches)
    together = evaluate(batched, adapters, fixed, SCHEDULE, fixed_seed=5, num_batches=num_batches, max_batch=4)
    assert one_by_one.passes == [batch_size] * num_batches
    assert sum(batched.passes) == batch_size * num_batches and max(batched.passes) <= 4
    assert len(batched.passes) == -(-batch_size * num_batches // 4) if batch_size == 1 else len(batched.passes) == 2
    assert together == pytest.approx(single, rel=1e-6)
    # the draws do not depend on the grouping: another seed gives another value, the same seed the same one
    assert evaluate(model, adapters, fixed, SCHEDULE, fixed_seed=6, num_batches=num_batches) != pytest.approx(single)


def test_a_change_of_shape_starts_a_new_pass() -> None:
    model, adapters = trained_model()
    latents, cond = dataset()
    channels, height, width = latents.shape[1:]
    wide = torch.randn(2, channels, height, width * 2, generator=torch.Generator().manual_seed(1))
    order = [latents[0:1], latents[1:2], wide[0:1], wide[1:2], latents[2:3]]

    def batches(index: int, generator: torch.Generator):
        return order[index], cond[index % cond.shape[0]][None]

    one_by_one, batched = CountingDenoiser(model), CountingDenoiser(model)
    single = evaluate(one_by_one, adapters, batches, SCHEDULE, fixed_seed=2, num_batches=5)
    together = evaluate(batched, adapters, batches, SCHEDULE, fixed_seed=2, num_batches=5, max_batch=8)
    assert batched.passes == [2, 2, 1]  # square, wide, square again
    assert together == pytest.approx(single, rel=1e-6)


def test_caption_conditions_are_concatenated_for_a_text_encoder_that_trains() -> None:
    torch.manual_seed(0)
    model, text_encoder = make_model(), TinyTextEncoder()
    adapters = attach(model, LoraShape(rank=2))
    batches = caption_batches(batch_size=1)
    one_by_one = CountingDenoiser(text_denoiser(model, text_encoder))
    batched = CountingDenoiser(text_denoiser(model, text_encoder))
    single = evaluate(one_by_one, adapters, batches, SCHEDULE, fixed_seed=4, num_batches=3)
    together = evaluate(batched, adapters, batches, SCHEDULE, fixed_seed=4, num_batches=3, max_batch=4)
    assert batched.passes == [3] and one_by_one.passes == [1, 1, 1]
    assert together == pytest.approx(single, rel=1e-6)
