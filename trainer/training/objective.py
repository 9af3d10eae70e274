"""The denoising objective: noise schedule, noised input, regression target, min-SNR weights, noise offset.

All writes are x_t = a_t * x_0 + b_t * noise:
  DDPM ("epsilon", "v"): a_t = sqrt(alphas_cumprod[t]), b_t = sqrt(1 - alphas_cumprod[t]);
  rectified flow ("flow"): a_t = 1 - s_t, b_t = s_t with s_t = (t + 1) / T, or the model's own (shifted)
  sigma table s_t = flow_sigmas[t].
Targets: epsilon -> noise; v -> a_t * noise - b_t * x_0 (Salimans & Ho 2022); flow -> noise - x_0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v", "flow")


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


def sample_timesteps(batch_size: int, schedule: NoiseSchedule, generator: torch.Generator) -> torch.Tensor:
    """Uniform integer timesteps in [0, T), int64 on the generator's device."""
    return torch.randint(0, schedule.num_timesteps, (batch_size,), generator=generator, device=generator.device)


def sample_noise(shape: tuple[int, ...], generator: torch.Generator, noise_offset: float = 0.0) -> torch.Tensor:
    """Gaussian noise (fp32, generator's device), plus kohya's per-channel offset when noise_offset > 0.

    The offset, noise_offset * N(0,1) per (sample, channel), lets the model learn to shift an image's
    mean brightness, which zero-mean noise never teaches.
    """
    noise = torch.randn(shape, generator=generator, device=generator.device)
    if noise_offset > 0:
        offset_shape = tuple(shape[:2]) + (1,) * (len(shape) - 2)
        noise = noise + noise_offset * torch.randn(offset_shape, generator=generator, device=generator.device)
    return noise


def diffusion_loss(prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error per sample (fp32), optionally weighted per sample, averaged over the batch."""
    per_sample = (prediction.float() - target.float()).pow(2).flatten(1).mean(dim=1)
    if weights is not None:
        per_sample = per_sample * weights.to(per_sample.device, per_sample.dtype)
    return per_sample.mean()
