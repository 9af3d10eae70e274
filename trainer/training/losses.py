"""The training loss: the distance between prediction and target (l2, l1, Huber, smooth-L1 with a threshold per
timestep) and the weight of each sample (min-SNR-gamma, debiased estimation, the caller's own weights).

As sd-scripts defines them (train_util.get_huber_threshold_if_needed and conditional_loss,
custom_train_functions.apply_snr_weight and apply_debiased_estimation): elementwise loss, times the caller's
element weights (e.g. a mask), mean over each sample, times the per-sample weights, mean over the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..errors import ConfigError

if TYPE_CHECKING:
    from .config import Optimisation
    from .objective import NoiseSchedule

LOSS_TYPES: tuple[str, ...] = ("l2", "l1", "huber", "smooth_l1")
HUBER_SCHEDULES: tuple[str, ...] = ("constant", "exponential", "snr")
# Debiased estimation clamps the SNR into this range: sd-scripts' 1000 above (timestep 0's SNR is near inf);
# 1/1000 below keeps a zero-terminal-SNR step (SNR 0) at weight sqrt(1000) instead of 1/0.
DEBIASED_SNR_MIN, DEBIASED_SNR_MAX = 1e-3, 1000.0


@dataclass(frozen=True)
class LossSettings:
    """Which loss a training step computes and how it weights each sample (defaults: plain MSE)."""

    loss_type: str = "l2"
    huber_schedule: str = "snr"
    huber_c: float = 0.1
    min_snr_gamma: float = 0.0
    debiased_estimation: bool = False

    @classmethod
    def of(cls, opt: Optimisation) -> LossSettings:
        """From the Optimisation config's loss fields."""
        return cls(opt.loss_type, opt.huber_schedule, opt.huber_c, opt.min_snr_gamma, opt.debiased_estimation)

    @property
    def uses_threshold(self) -> bool:
        return self.loss_type in ("huber", "smooth_l1")

    def check(self, schedule: NoiseSchedule) -> None:
        """Raise ConfigError (naming the field) if these settings cannot be used with `schedule`."""
        if schedule.prediction_type != "flow":
            return
        for name, on in (("min_snr_gamma", self.min_snr_gamma > 0), ("debiased_estimation", self.debiased_estimation)):
            if on:
                raise ConfigError(f"{name} = {getattr(self, name)!r} is for epsilon and v prediction (it weights by "
                                  f"the DDPM signal-to-noise ratio); this model is a flow-matching model: turn it off.")
        if self.uses_threshold and self.huber_schedule == "snr":
            raise ConfigError(f"huber_schedule = 'snr' is for epsilon and v prediction (as in sd-scripts); with "
                              f"loss_type {self.loss_type!r} on this flow-matching model use 'constant' or "
                              f"'exponential'.")


def huber_thresholds(schedule: NoiseSchedule, timesteps: torch.Tensor, huber_schedule: str,
                     huber_c: float) -> torch.Tensor:
    """The Huber / smooth-L1 threshold of each sample [B] (fp32, CPU), sd-scripts' schedules.

    constant: c; exponential: exp(-alpha t) with alpha = -ln(c) / T (1 at t = 0, c at t = T);
    snr: (1 - c) / (1 + sigma_t)^2 + c with sigma_t = sqrt((1 - alphas_cumprod[t]) / alphas_cumprod[t])
    (1 at no noise, c at pure noise).
    """
    t = timesteps.to("cpu", torch.long)
    if huber_schedule == "constant":
        return torch.full((t.numel(),), huber_c)
    if huber_schedule == "exponential":
        alpha = -math.log(huber_c) / schedule.num_timesteps
        return torch.exp(-alpha * t.float())
    if huber_schedule == "snr":
        acp = schedule.alphas_cumprod[t]
        sigmas = ((1.0 - acp) / acp).sqrt()
        return (1.0 - huber_c) / (1.0 + sigmas) ** 2 + huber_c
    raise ValueError(f"huber_schedule = {huber_schedule!r}; expected one of {', '.join(HUBER_SCHEDULES)}")


def elementwise_loss(prediction: torch.Tensor, target: torch.Tensor, loss_type: str = "l2",
                     thresholds: torch.Tensor | None = None) -> torch.Tensor:
    """The loss of each element (fp32), shaped like prediction; `thresholds` [B] for huber and smooth_l1.

    huber: 2c (sqrt(d^2 + c^2) - c), about d^2 for |d| << c and 2c|d| beyond; smooth_l1: 2 (sqrt(d^2 + c^2) - c),
    about d^2 / c, then 2|d| (both the pseudo-Huber forms of sd-scripts' conditional_loss).
    """
    difference = prediction.float() - target.float()
    if loss_type == "l2":
        return difference.pow(2)
    if loss_type == "l1":
        return difference.abs()
    if loss_type not in ("huber", "smooth_l1"):
        raise ValueError(f"loss_type = {loss_type!r}; expected one of {', '.join(LOSS_TYPES)}")
    if thresholds is None:
        raise ValueError(f"loss_type = {loss_type!r} needs a threshold per sample (huber_thresholds)")
    c = thresholds.to(difference.device, torch.float32).reshape((-1,) + (1,) * (difference.ndim - 1))
    pseudo_huber = (difference.pow(2) + c * c).sqrt() - c
    return 2 * c * pseudo_huber if loss_type == "huber" else 2 * pseudo_huber


def debiased_weights(schedule: NoiseSchedule, timesteps: torch.Tensor) -> torch.Tensor:
    """Debiased estimation weights [B] (Yu et al. 2024, sd-scripts' apply_debiased_estimation).

    epsilon: 1 / sqrt(SNR); v: 1 / (SNR + 1); SNR clamped into [DEBIASED_SNR_MIN, DEBIASED_SNR_MAX].
    """
    snr = schedule.snr(timesteps).clamp(DEBIASED_SNR_MIN, DEBIASED_SNR_MAX)
    return 1.0 / (snr + 1.0) if schedule.prediction_type == "v" else snr.rsqrt()


def sample_weights_for(schedule: NoiseSchedule, timesteps: torch.Tensor, settings: LossSettings,
                       sample_weights: torch.Tensor | None = None) -> torch.Tensor | None:
    """The product of each sample's weights [B]: min-SNR-gamma, debiased estimation, `sample_weights`; None if
    none applies."""
    factors = []
    if settings.min_snr_gamma > 0:
        factors.append(schedule.min_snr_weights(timesteps, settings.min_snr_gamma))
    if settings.debiased_estimation:
        factors.append(debiased_weights(schedule, timesteps))
    if sample_weights is not None:
        factors.append(sample_weights.to("cpu", torch.float32))
    if not factors:
        return None
    weights = factors[0]
    for factor in factors[1:]:
        weights = weights * factor
    return weights


def per_sample_loss(prediction: torch.Tensor, target: torch.Tensor, loss_type: str = "l2",
                    thresholds: torch.Tensor | None = None,
                    element_weights: torch.Tensor | None = None) -> torch.Tensor:
    """The loss of each sample [B] (fp32): the mean of its elementwise loss (default: mean squared error).

    `element_weights` (broadcastable to prediction, e.g. a [B, 1, H, W] mask) multiply the elements before
    the mean, not renormalised (sd-scripts' masked loss).
    """
    elements = elementwise_loss(prediction, target, loss_type, thresholds)
    if element_weights is not None:
        elements = elements * element_weights.to(elements.device, elements.dtype)
    return elements.flatten(1).mean(dim=1)


def diffusion_loss(prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None, *,
                   loss_type: str = "l2", thresholds: torch.Tensor | None = None,
                   element_weights: torch.Tensor | None = None) -> torch.Tensor:
    """per_sample_loss, optionally weighted per sample [B], averaged over the batch."""
    per_sample = per_sample_loss(prediction, target, loss_type, thresholds, element_weights)
    if weights is not None:
        per_sample = per_sample * weights.to(per_sample.device, per_sample.dtype)
    return per_sample.mean()


def training_loss(prediction: torch.Tensor, target: torch.Tensor, timesteps: torch.Tensor,
                  schedule: NoiseSchedule, settings: LossSettings, *, element_weights: torch.Tensor | None = None,
                  sample_weights: torch.Tensor | None = None) -> torch.Tensor:
    """The loss a training step minimises for one batch drawn at `timesteps` [B] (a scalar, fp32).

    element_weights: broadcastable to prediction (e.g. a latent-size mask); sample_weights: [B] (e.g. a prior
    loss weight per sample), multiplied with the min-SNR and debiased weights.
    """
    thresholds = (huber_thresholds(schedule, timesteps, settings.huber_schedule, settings.huber_c)
                  if settings.uses_threshold else None)
    weights = sample_weights_for(schedule, timesteps, settings, sample_weights)
    return diffusion_loss(prediction, target, weights, loss_type=settings.loss_type, thresholds=thresholds,
                          element_weights=element_weights)
