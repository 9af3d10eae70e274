"""The denoising objective: noise schedule (and its zero-terminal-SNR rescale), timestep draws, noised input,
target, min-SNR weights. The noise itself is drawn in noise.py, the loss computed in losses.py.

All writes are x_t = a_t * x_0 + b_t * noise:
  DDPM ("epsilon", "v"): a_t = sqrt(alphas_cumprod[t]), b_t = sqrt(1 - alphas_cumprod[t]);
  rectified flow ("flow"): a_t = 1 - s_t, b_t = s_t with s_t = (t + 1) / T, or the model's own (shifted)
  sigma table s_t = flow_sigmas[t].
Targets: epsilon -> noise; v -> a_t * noise - b_t * x_0 (Salimans & Ho 2022); flow -> noise - x_0.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .config import Optimisation

logger = logging.getLogger(__name__)

PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v", "flow")
# Flux's resolution-dependent shift (as sd-scripts' flux_shift and diffusers' dynamic shifting define it):
# mu is linear in the image token count, 0.5 at 256 tokens and 1.15 at 4096; t -> e^mu / (e^mu + 1/t - 1).
FLUX_BASE_SEQ, FLUX_BASE_SHIFT, FLUX_MAX_SEQ, FLUX_MAX_SHIFT = 256, 0.5, 4096, 1.15


@dataclass(frozen=True)
class NoiseSchedule:
    """Discrete training timesteps 0..T-1 and what the denoiser predicts."""

    alphas_cumprod: torch.Tensor
    prediction_type: str = "epsilon"
    flow_sigmas: torch.Tensor | None = None  # flow only: s_t per timestep (e.g. SD3's shift-3 table)

    def __post_init__(self) -> None:
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type = {self.prediction_type!r} is not allowed; "
                             f"expected one of {', '.join(PREDICTION_TYPES)}.")
        acp = self.alphas_cumprod
        if acp.ndim != 1 or acp.numel() < 2:
            raise ValueError(f"alphas_cumprod has shape {tuple(acp.shape)}; expected a 1-D tensor of T >= 2 values.")
        if self.prediction_type != "flow" and not bool(((acp >= 0) & (acp <= 1)).all()):
            raise ValueError("alphas_cumprod must lie in [0, 1].")
        if self.flow_sigmas is not None:
            sigmas = self.flow_sigmas
            if self.prediction_type != "flow" or sigmas.shape != acp.shape or not bool(
                    ((sigmas > 0) & (sigmas <= 1)).all()):
                raise ValueError("flow_sigmas are for flow schedules: one value in (0, 1] per timestep.")
            object.__setattr__(self, "flow_sigmas", sigmas.detach().to("cpu", torch.float32).clone())
        # Kept as a CPU fp32 copy: timesteps are drawn on the CPU generator and coefficients moved per batch.
        object.__setattr__(self, "alphas_cumprod", acp.detach().to("cpu", torch.float32).clone())

    @classmethod
    def scaled_linear(cls, num_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
                      prediction_type: str = "epsilon") -> NoiseSchedule:
        """Stable Diffusion 1.x/2.x/XL training schedule (betas linear in sqrt space)."""
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2
        return cls(torch.cumprod(1.0 - betas, dim=0).float(), prediction_type)

    @classmethod
    def flow(cls, num_timesteps: int = 1000, sigmas: torch.Tensor | None = None) -> NoiseSchedule:
        """Rectified-flow schedule: s_t = (t + 1) / T, or `sigmas[t]` (then T = len(sigmas))."""
        steps = num_timesteps if sigmas is None else int(sigmas.numel())
        return cls(torch.ones(steps), "flow", sigmas)

    @property
    def num_timesteps(self) -> int:
        return int(self.alphas_cumprod.numel())

    def coefficients(self, timesteps: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a_t, b_t) shaped [B, 1, ..., 1] on like's device, fp32."""
        t = timesteps.to("cpu", torch.long)
        if self.prediction_type == "flow":
            s = self.flow_sigmas[t] if self.flow_sigmas is not None else (t.float() + 1.0) / self.num_timesteps
            a, b = 1.0 - s, s
        else:
            acp = self.alphas_cumprod[t]
            a, b = acp.sqrt(), (1.0 - acp).sqrt()
        shape = (-1,) + (1,) * (like.ndim - 1)
        return a.reshape(shape).to(like.device), b.reshape(shape).to(like.device)

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = a_t * latents + b_t * noise."""
        a, b = self.coefficients(timesteps, latents)
        return a * latents + b * noise

    def training_target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What the denoiser should output for x_t: noise, v, or the flow velocity."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "flow":
            return noise - latents
        a, b = self.coefficients(timesteps, latents)
        return a * noise - b * latents

    def snr(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio a_t^2 / b_t^2 per sample, shape [B] (inf where b_t = 0)."""
        a, b = self.coefficients(timesteps, timesteps.reshape(-1))
        return (a * a) / (b * b)

    def min_snr_weights(self, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
        """Per-sample loss weights of Min-SNR-gamma (Hang et al. 2023), shape [B].

        epsilon: min(snr, gamma) / snr; v: min(snr, gamma) / (snr + 1). Written with where() so a
        zero-terminal-SNR step (snr = 0) gets weight 1 instead of 0/0.
        """
        if self.prediction_type == "flow":
            raise ValueError("min_snr_gamma is defined for epsilon and v prediction only; "
                             "leave it empty for flow-matching models.")
        snr = self.snr(timesteps)
        if self.prediction_type == "epsilon":
            return torch.where(snr <= gamma, torch.ones_like(snr), gamma / snr)
        return torch.clamp(snr, max=gamma) / (snr + 1.0)


def zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """alphas_cumprod rescaled to zero terminal SNR (Lin et al. 2023, Algorithm 1; diffusers'
    rescale_zero_terminal_snr does it on the betas): sqrt(alphas_cumprod) shifted so that the last timestep's
    is 0 (pure noise) and scaled so that the first keeps its value. Computed in fp64, returned fp32."""
    root = alphas_cumprod.double().sqrt()
    first, last = root[0], root[-1]
    return ((root - last) * (first / (first - last))).pow(2).float()


def training_schedule(schedule: NoiseSchedule, opt: Optimisation) -> NoiseSchedule:
    """The schedule a run trains with: the model's, rescaled to zero terminal SNR with opt.zero_terminal_snr."""
    if not opt.zero_terminal_snr:
        return schedule
    if schedule.prediction_type == "flow":
        raise ConfigError("zero_terminal_snr = True is for epsilon and v prediction models; this is a flow-matching "
                          "model, whose last timestep is already pure noise: turn it off.")
    if schedule.prediction_type == "epsilon":
        logger.warning("zero_terminal_snr on an epsilon-prediction model: at the last timestep the input is pure "
                       "noise, so the target equals the input; Lin et al. 2023 pair the rescale with v prediction")
    return NoiseSchedule(zero_terminal_snr(schedule.alphas_cumprod), schedule.prediction_type)


@dataclass(frozen=True)
class TimestepSampling:
    """How training timesteps are drawn: a distribution of u in (0, 1), mapped onto [min_timestep, max_timestep).

    uniform draws integers directly (torch.randint, as before these options existed). The others are for flow
    models, where u is the noise level: sigmoid u = sigmoid(scale * z); logit_normal u = sigmoid(mean + std * z);
    shift u = s * v / (1 + (s - 1) * v) with v the sigmoid draw; flux_shift u = e^mu / (e^mu + 1/v - 1) with
    mu from the latent's token count (z ~ N(0, 1), sd-scripts' definitions).
    """

    kind: str = "uniform"
    min_timestep: int = 0
    max_timestep: int = 1000
    sigmoid_scale: float = 1.0
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = 3.0

    @classmethod
    def of(cls, opt: Optimisation) -> TimestepSampling:
        """From the Optimisation config's timestep fields."""
        return cls(opt.timestep_sampling, opt.min_timestep, opt.max_timestep, opt.sigmoid_scale, opt.logit_mean,
                   opt.logit_std, opt.discrete_flow_shift)

    def bounds(self, schedule: NoiseSchedule) -> tuple[int, int]:
        """[low, high) in the schedule's timesteps (max_timestep capped at T)."""
        return self.min_timestep, min(self.max_timestep, schedule.num_timesteps)

    def check(self, schedule: NoiseSchedule) -> None:
        """Raise ConfigError (naming the field) if this sampling cannot be used with `schedule`."""
        if self.kind != "uniform" and schedule.prediction_type != "flow":
            raise ConfigError(f"timestep_sampling = {self.kind!r} is for flow-matching models (SD3, Flux); this "
                              f"model predicts {schedule.prediction_type}: use 'uniform'.")
        low, high = self.bounds(schedule)
        if low >= high:
            raise ConfigError(f"min_timestep = {self.min_timestep} is not allowed; this model has "
                              f"{schedule.num_timesteps} timesteps, so expected less than {high}.")


def flux_shift_mu(latent_hw: tuple[int, int]) -> float:
    """Flux's mu for a latent of (height, width): linear in its 2x2-patch token count."""
    tokens = (latent_hw[0] // 2) * (latent_hw[1] // 2)
    slope = (FLUX_MAX_SHIFT - FLUX_BASE_SHIFT) / (FLUX_MAX_SEQ - FLUX_BASE_SEQ)
    return FLUX_BASE_SHIFT + slope * (tokens - FLUX_BASE_SEQ)


def sample_unit_timesteps(batch_size: int, sampling: TimestepSampling, generator: torch.Generator,
                          latent_hw: tuple[int, int] = (64, 64)) -> torch.Tensor:
    """u in (0, 1) per sample (fp32, generator's device) from a continuous distribution (not uniform)."""
    z = torch.randn((batch_size,), generator=generator, device=generator.device)
    if sampling.kind == "logit_normal":
        return torch.sigmoid(sampling.logit_mean + sampling.logit_std * z)
    u = torch.sigmoid(sampling.sigmoid_scale * z)
    if sampling.kind == "shift":
        return u * sampling.shift / (1.0 + (sampling.shift - 1.0) * u)
    if sampling.kind == "flux_shift":
        exp_mu = math.exp(flux_shift_mu(latent_hw))
        return exp_mu / (exp_mu + (1.0 / u - 1.0))
    if sampling.kind != "sigmoid":
        raise ValueError(f"no continuous distribution for timestep_sampling = {sampling.kind!r}")
    return u


def sample_timesteps(batch_size: int, schedule: NoiseSchedule, generator: torch.Generator,
                     sampling: TimestepSampling | None = None,
                     latent_hw: tuple[int, int] = (64, 64)) -> torch.Tensor:
    """Integer timesteps in [min_timestep, min(max_timestep, T)), int64 on the generator's device.

    Continuous draws u map to low + floor(u * (high - low)), as diffusers and sd-scripts' SD3 index the
    schedule's timesteps; on a flow schedule timestep t has noise level (t + 1) / T, so that is about u.
    """
    sampling = sampling or TimestepSampling()
    low, high = sampling.bounds(schedule)
    if sampling.kind == "uniform":
        return torch.randint(low, high, (batch_size,), generator=generator, device=generator.device)
    u = sample_unit_timesteps(batch_size, sampling, generator, latent_hw)
    return (low + (u * (high - low)).long()).clamp_(low, high - 1)
