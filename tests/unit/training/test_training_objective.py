"""Noise schedule, targets, min-SNR weights and noise offset."""

from __future__ import annotations

import pytest
import torch

from trainer.training.losses import diffusion_loss
from trainer.training.noise import sample_noise
from trainer.training.objective import NoiseSchedule, sample_timesteps


def test_scaled_linear_matches_stable_diffusion() -> None:
    s = NoiseSchedule.scaled_linear()
    assert s.num_timesteps == 1000
    assert s.alphas_cumprod[0].item() == pytest.approx(1 - 0.00085, rel=1e-6)
    assert s.alphas_cumprod[-1].item() == pytest.approx(0.0047, abs=2e-4)  # SD1.5's final alpha_cumprod


def test_add_noise_and_targets() -> None:
    x, n = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    t = torch.tensor([0, 500, 999])
    eps = NoiseSchedule.scaled_linear()
    a = eps.alphas_cumprod[t].sqrt().reshape(3, 1, 1, 1)
    b = (1 - eps.alphas_cumprod[t]).sqrt().reshape(3, 1, 1, 1)
    torch.testing.assert_close(eps.add_noise(x, n, t), a * x + b * n)
    assert torch.equal(eps.training_target(x, n, t), n)
    v = NoiseSchedule.scaled_linear(prediction_type="v")
    torch.testing.assert_close(v.training_target(x, n, t), a * n - b * x)
    flow = NoiseSchedule.flow(1000)
    s = ((t + 1) / 1000).reshape(3, 1, 1, 1)
    torch.testing.assert_close(flow.add_noise(x, n, t), (1 - s) * x + s * n)
    torch.testing.assert_close(flow.training_target(x, n, t), n - x)


def test_min_snr_weights() -> None:
    eps = NoiseSchedule.scaled_linear()
    t = torch.tensor([0, 100, 999])
    snr = eps.snr(t)
    w = eps.min_snr_weights(t, 5.0)
    torch.testing.assert_close(w, torch.minimum(snr, torch.tensor(5.0)) / snr)
    assert w[-1].item() == 1.0 and w[0].item() < 0.01  # low-noise steps are down-weighted
    v = NoiseSchedule.scaled_linear(prediction_type="v")
    torch.testing.assert_close(v.min_snr_weights(t, 5.0), torch.minimum(snr, torch.tensor(5.0)) / (snr + 1))
    zero_terminal = NoiseSchedule(torch.tensor([0.9, 0.5, 0.0]))
    assert zero_terminal.min_snr_weights(torch.tensor([2]), 5.0).item() == 1.0
    with pytest.raises(ValueError, match="epsilon and v prediction only"):
        NoiseSchedule.flow().min_snr_weights(t, 5.0)


def test_noise_offset_shifts_channel_means() -> None:
    g = torch.Generator().manual_seed(0)
    plain = sample_noise((2, 4, 32, 32), torch.Generator().manual_seed(0))
    offset = sample_noise((2, 4, 32, 32), g, noise_offset=1.0)
    shift = (offset - plain).flatten(2)
    assert torch.allclose(shift, shift[:, :, :1].expand_as(shift))  # constant per (sample, channel)
    assert shift.abs().sum() > 0


def test_timesteps_and_loss() -> None:
    t = sample_timesteps(1000, NoiseSchedule.scaled_linear(), torch.Generator().manual_seed(0))
    assert t.dtype == torch.int64 and t.min() >= 0 and t.max() <= 999
    pred, target = torch.ones(2, 3), torch.zeros(2, 3)
    assert diffusion_loss(pred, target).item() == 1.0
    assert diffusion_loss(pred, target, torch.tensor([1.0, 0.0])).item() == 0.5


def test_invalid_schedule() -> None:
    with pytest.raises(ValueError, match="prediction_type = 'x0'"):
        NoiseSchedule(torch.ones(10), "x0")
    with pytest.raises(ValueError, match="alphas_cumprod must lie in"):
        NoiseSchedule(torch.tensor([1.5, 0.5]))


def test_flow_schedule_with_the_models_own_shifted_sigmas() -> None:
    t = torch.tensor([0, 1, 3])
    sigmas = torch.tensor([0.25, 0.5, 0.75, 1.0])  # e.g. a shifted table: not (t + 1) / T
    sigmas = 3 * sigmas / (1 + 2 * sigmas)  # SD3's time shift of 3
    flow = NoiseSchedule.flow(sigmas=sigmas)
    x, n = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    s = sigmas[t].reshape(3, 1, 1, 1)
    assert flow.num_timesteps == 4
    torch.testing.assert_close(flow.add_noise(x, n, t), (1 - s) * x + s * n)
    torch.testing.assert_close(flow.training_target(x, n, t), n - x)
    with pytest.raises(ValueError, match="flow_sigmas"):
        NoiseSchedule(torch.ones(4), "flow", torch.tensor([0.0, 0.5, 0.7, 1.0]))
    with pytest.raises(ValueError, match="flow_sigmas"):
        NoiseSchedule(torch.ones(4), "epsilon", sigmas)
