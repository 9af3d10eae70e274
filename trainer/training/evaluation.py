"""Loss at fixed noise: the same draws at every call, so values from different steps (and runs) compare."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from .denoising import BatchFn, Denoiser, as_batch, noisy_inputs, predict
from .losses import per_sample_loss
from .objective import NoiseSchedule
from .trainable_lora import LoraAdapterSet


def evaluate(denoiser: Denoiser, adapters: LoraAdapterSet, batches: BatchFn, schedule: NoiseSchedule,
             fixed_seed: int, num_batches: int = 1, mixed_precision: str = "no", max_batch: int = 1) -> float:
    """Mean unweighted loss over `num_batches` at noise and timesteps fixed by `fixed_seed` (no dropout).

    The same seed gives the same inputs every call, so values from different steps are comparable:
    on training batches it shows memorisation, on held-out batches validation loss. Consecutive batches of
    one shape run through the denoiser together, up to `max_batch` items a pass (one pass reads the model's
    weights once, however many items it holds); the draws, and so the value, do not depend on it.
    """
    generator = torch.Generator("cpu").manual_seed(fixed_seed)
    device = adapters.device
    was_training = any(adapters[k].training for k in adapters.keys())
    adapters.train(False)
    total = 0.0
    try:
        with torch.inference_mode(False), torch.no_grad():
            draws = []
            for index in range(num_batches):  # every draw first, in the order a batch-by-batch loop makes them
                # Plain MSE: a batch's mask and item weights are training-time options, not the measure.
                latents, cond = as_batch(batches(index, generator))[:2]
                draws.append((*noisy_inputs(latents, schedule, generator, device, None, None), cond))
            for group in _passes(draws, max_batch):
                x_t, target, timesteps = (torch.cat([draw[i] for draw in group]) for i in range(3))
                cond = _concat_conditions([draw[3] for draw in group])
                per_sample = per_sample_loss(predict(denoiser, x_t, timesteps, cond, device, mixed_precision), target)
                for batch_losses in per_sample.split([draw[0].shape[0] for draw in group]):
                    total += batch_losses.mean().item()
    finally:
        adapters.train(was_training)
    return total / num_batches


def _condition_shapes(cond: Any) -> Any:
    """What must match for two conditions to be concatenated along the batch: their tensors' shapes past dim 0."""
    if isinstance(cond, torch.Tensor):
        return tuple(cond.shape[1:])
    if isinstance(cond, dict):
        return tuple(sorted((k, _condition_shapes(v)) for k, v in cond.items()))
    return type(cond).__name__  # captions (a tuple of str) always concatenate


def _concat_conditions(conds: list[Any]) -> Any:
    first = conds[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(conds)
    if isinstance(first, dict):
        return {k: None if first[k] is None else torch.cat([c[k] for c in conds]) for k in first}
    return tuple(caption for cond in conds for caption in cond)


def _passes(draws: list[tuple[Any, ...]], max_batch: int) -> Iterator[list[tuple[Any, ...]]]:
    """Consecutive draws of one latent and condition shape, grouped up to max_batch items per group."""
    group: list[tuple[Any, ...]] = []
    for draw in draws:
        if group and (sum(d[0].shape[0] for d in group) + draw[0].shape[0] > max_batch
                      or draw[0].shape[1:] != group[0][0].shape[1:]
                      or _condition_shapes(draw[3]) != _condition_shapes(group[0][3])):
            yield group
            group = []
        group.append(draw)
    if group:
        yield group
