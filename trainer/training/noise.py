"""The noise a training step adds: Gaussian noise with kohya's offset, multires (pyramid) noise, input perturbation.

As sd-scripts defines them (train_util.get_noise_noisy_latents_and_timesteps, pyramid_noise_like), with every
draw taken from the run's CPU generator: a resumed run draws exactly what an uninterrupted one would. With every
option off the draws are those of plain Gaussian noise (plus the offset's), in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .config import Optimisation


@dataclass(frozen=True)
class NoiseOptions:
    """Which variants of the training noise are on (all off: plain Gaussian noise)."""

    offset: float = 0.0
    offset_random_strength: bool = False
    multires_iterations: int = 0
    multires_discount: float = 0.3
    ip_gamma: float = 0.0
    ip_gamma_random_strength: bool = False

    @classmethod
    def of(cls, opt: Optimisation) -> NoiseOptions:
        """From the Optimisation config's noise fields."""
        return cls(opt.noise_offset, opt.noise_offset_random_strength, opt.multires_noise_iterations,
                   opt.multires_noise_discount, opt.ip_noise_gamma, opt.ip_noise_gamma_random_strength)


def _per_sample(values: torch.Tensor, ndim: int) -> torch.Tensor:
    """[B] -> [B, 1, ..., 1] with `ndim` dimensions, to scale each sample of a batch."""
    return values.reshape((-1,) + (1,) * (ndim - 1))


def _random_strength(scale: float, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """scale x U(0, 1), one draw per sample [B]."""
    return scale * torch.rand((batch_size,), generator=generator, device=generator.device)


def noise_offsets(batch_size: int, generator: torch.Generator, options: NoiseOptions) -> float | torch.Tensor:
    """The noise offset of each sample: `options.offset`, or offset x U(0, 1) per sample with random strength.

    sd-scripts draws one strength for the whole batch; one per sample keeps a sample's noise independent of
    its batch (the same at batch size 1). Draws nothing unless both the offset and its random strength are on.
    """
    if options.offset > 0 and options.offset_random_strength:
        return _random_strength(options.offset, batch_size, generator)
    return options.offset


def sample_noise(shape: tuple[int, ...], generator: torch.Generator,
                 noise_offset: float | torch.Tensor = 0.0) -> torch.Tensor:
    """Gaussian noise (fp32, generator's device), plus kohya's per-channel offset when noise_offset > 0.

    The offset, noise_offset * N(0,1) per (sample, channel), lets the model learn to shift an image's
    mean brightness, which zero-mean noise never teaches. noise_offset is one value, or one per sample [B]
    (noise_offsets with random strength).
    """
    noise = torch.randn(shape, generator=generator, device=generator.device)
    if isinstance(noise_offset, torch.Tensor) or noise_offset > 0:
        offset_shape = tuple(shape[:2]) + (1,) * (len(shape) - 2)
        offset = torch.randn(offset_shape, generator=generator, device=generator.device)
        scale = _per_sample(noise_offset, len(shape)) if isinstance(noise_offset, torch.Tensor) else noise_offset
        noise = noise + scale * offset
    return noise


def pyramid_noise(noise: torch.Tensor, generator: torch.Generator, iterations: int, discount: float) -> torch.Tensor:
    """Multires noise (sd-scripts' pyramid_noise_like): noise plus upsampled coarser noise, rescaled to unit std.

    Iteration i adds N(0, 1) drawn at (H, W) / r^i, upsampled bilinearly to (H, W), times discount^i, with
    r ~ U(2, 4) drawn per iteration; it stops after the first 1-pixel level. Low frequencies get noise that
    plain Gaussian noise barely has. Each sample is divided by its own standard deviation (sd-scripts divides
    the batch by one; the same at batch size 1). `noise` is [B, ..., H, W]; returns a new tensor.
    """
    height, width = noise.shape[-2:]
    lead = tuple(noise.shape[:-2])
    result = noise.clone()
    for i in range(iterations):
        r = float(torch.rand((), generator=generator, device=generator.device)) * 2 + 2
        low_h, low_w = max(1, int(height / r**i)), max(1, int(width / r**i))
        coarse = torch.randn(lead + (low_h, low_w), generator=generator, device=generator.device)
        upsampled = F.interpolate(coarse.reshape(-1, 1, low_h, low_w), size=(height, width), mode="bilinear",
                                  align_corners=False)
        result = result + upsampled.reshape(noise.shape) * discount**i
        if low_h == 1 or low_w == 1:
            break
    return result / _per_sample(result.flatten(1).std(dim=1), result.ndim)


def input_perturbation(noise: torch.Tensor, generator: torch.Generator, gamma: float,
                       random_strength: bool) -> torch.Tensor:
    """Input-perturbation noise (Ning et al. 2023): noise + gamma x N(0, 1), gamma x U(0, 1) per sample with
    random_strength. The noisy input is made with this; the target keeps the unperturbed noise."""
    strength = _random_strength(gamma, noise.shape[0], generator) if random_strength else None
    extra = torch.randn(tuple(noise.shape), generator=generator, device=generator.device).to(noise.device)
    if strength is None:
        return noise + gamma * extra
    return noise + _per_sample(strength, noise.ndim).to(noise.device) * extra
