"""One denoising pass as training and evaluation run it: noisy inputs for clean latents, and the model's prediction.

Knows nothing about the model: the caller's `Denoiser` computes the prediction.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from .noise import NoiseOptions, input_perturbation, noise_offsets, pyramid_noise, sample_noise
from .objective import NoiseSchedule, TimestepSampling, sample_timesteps

# denoiser(x_t, timesteps [B] int64, cond) -> prediction shaped like x_t (epsilon / v / flow per schedule).
Denoiser = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


class Batch(NamedTuple):
    """One micro-batch: clean latents [B, C, H, W], the condition, and optionally the loss weight of each latent
    element (`mask`, broadcastable to the latents, e.g. [B, 1, H, W]) and of each item (`weight` [B])."""

    latents: torch.Tensor
    cond: Any
    mask: torch.Tensor | None = None
    weight: torch.Tensor | None = None


# batches(micro_batch_index, generator) -> a Batch, or a plain (latents, cond) pair. Draw any randomness (data
# order, flips, caption transforms) from `generator` only: then a resumed run sees exactly the batches an
# uninterrupted one would.
BatchFn = Callable[[int, torch.Generator], Batch | tuple[torch.Tensor, Any]]


def as_batch(value: Batch | tuple[torch.Tensor, Any]) -> Batch:
    """A BatchFn's result as a Batch: a plain (latents, cond) pair weights every element and item alike."""
    return value if isinstance(value, Batch) else Batch(*value)


def map_tensors(fn: Callable[[torch.Tensor], torch.Tensor], value: Any) -> Any:
    """`value` with fn applied to every tensor inside nested dicts, lists and tuples (named tuples kept)."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, dict):
        return {k: map_tensors(fn, v) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(map_tensors(fn, v) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(map_tensors(fn, v) for v in value)
    return value


def _autocast(device: torch.device, mixed_precision: str) -> contextlib.AbstractContextManager[Any]:
    # Autocast only on CUDA: CPU half-precision autocast is slow and the tests need exact fp32.
    if device.type != "cuda" or mixed_precision == "no":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.float16 if mixed_precision == "fp16" else torch.bfloat16)


def noisy_inputs(latents: torch.Tensor, schedule: NoiseSchedule, generator: torch.Generator, device: torch.device,
                  noise_options: NoiseOptions | None, sampling: TimestepSampling | None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t, training target, timesteps) for a batch of clean latents; noise_options None: plain Gaussian noise."""
    options = noise_options or NoiseOptions()
    latents = latents.to(device=device, dtype=torch.float32)
    if latents.is_inference():
        latents = latents.clone()
    # Noise and timesteps come from the CPU generator (small tensors) so its state alone fixes them.
    shape = tuple(latents.shape)
    noise = sample_noise(shape, generator, noise_offsets(shape[0], generator, options))
    if options.multires_iterations > 0:
        noise = pyramid_noise(noise, generator, options.multires_iterations, options.multires_discount)
    noise = noise.to(device)
    timesteps = sample_timesteps(latents.shape[0], schedule, generator, sampling,
                                 latent_hw=(int(latents.shape[-2]), int(latents.shape[-1])))
    input_noise = noise
    if options.ip_gamma > 0:  # x_t gets the perturbed noise; the target keeps the plain one
        input_noise = input_perturbation(noise, generator, options.ip_gamma, options.ip_gamma_random_strength)
    return (schedule.add_noise(latents, input_noise, timesteps), schedule.training_target(latents, noise, timesteps),
            timesteps)


def predict(denoiser: Denoiser, x_t: torch.Tensor, timesteps: torch.Tensor, cond: Any, device: torch.device,
             mixed_precision: str) -> torch.Tensor:
    with _autocast(device, mixed_precision):
        return denoiser(x_t, timesteps.to(device), map_tensors(lambda t: t.to(device), cond))
