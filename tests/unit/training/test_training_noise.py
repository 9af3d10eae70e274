"""Noise variants (offset strength, multires, input perturbation) and the zero-terminal-SNR schedule, against
direct formulas at the same generator draws and against diffusers' rescale_zero_terminal_snr."""

from __future__ import annotations

import pytest
import torch
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler, rescale_zero_terminal_snr

from tests.support.tiny_models import attach, batch_fn, config, dataset, make_model
from trainer.errors import ConfigError
from trainer.training.config import Optimisation
from trainer.training.denoising import noisy_inputs
from trainer.training.loop import train
from trainer.training.noise import NoiseOptions, input_perturbation, noise_offsets, pyramid_noise, sample_noise
from trainer.training.objective import NoiseSchedule, training_schedule, zero_terminal_snr

EPS = NoiseSchedule.scaled_linear()
CPU = torch.device("cpu")
SHAPE = (3, 4, 16, 12)


def _generator(seed: int = 5) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _latents() -> torch.Tensor:
    return torch.randn(SHAPE, generator=_generator(99))


def test_options_come_from_the_config() -> None:
    opt = Optimisation(noise_offset=0.1, noise_offset_random_strength=True, multires_noise_iterations=6,
                       multires_noise_discount=0.4, ip_noise_gamma=0.1, ip_noise_gamma_random_strength=True)
    assert NoiseOptions.of(opt) == NoiseOptions(0.1, True, 6, 0.4, 0.1, True)


def test_with_every_option_off_the_draws_are_noise_offset_then_timesteps() -> None:
    """The order of draws before these options existed: noise, offset, timesteps (so old runs resume alike)."""
    latents = _latents()
    x_t, target, t = noisy_inputs(latents, EPS, _generator(), CPU, NoiseOptions(offset=0.1), None)
    g = _generator()
    noise = torch.randn(SHAPE, generator=g) + 0.1 * torch.randn(SHAPE[:2] + (1, 1), generator=g)
    timesteps = torch.randint(0, 1000, (SHAPE[0],), generator=g)
    assert torch.equal(t, timesteps) and torch.equal(target, noise)
    assert torch.equal(x_t, EPS.add_noise(latents, noise, timesteps))
    plain_target = noisy_inputs(latents, EPS, _generator(), CPU, None, None)[1]
    assert torch.equal(plain_target, torch.randn(SHAPE, generator=_generator()))


def test_random_strength_scales_each_samples_offset_by_a_uniform_draw() -> None:
    options = NoiseOptions(offset=0.2, offset_random_strength=True)
    g = _generator()
    noise = sample_noise(SHAPE, g, noise_offsets(SHAPE[0], g, options))
    g = _generator()
    strength = 0.2 * torch.rand(SHAPE[0], generator=g)
    base = torch.randn(SHAPE, generator=g)
    expected = base + strength.reshape(-1, 1, 1, 1) * torch.randn(SHAPE[:2] + (1, 1), generator=g)
    assert torch.equal(noise, expected)
    assert len(set(strength.tolist())) == SHAPE[0] and bool(((strength >= 0) & (strength <= 0.2)).all())
    assert noise_offsets(SHAPE[0], _generator(), NoiseOptions(offset_random_strength=True)) == 0.0  # no offset
    assert noise_offsets(SHAPE[0], _generator(), NoiseOptions(offset=0.2)) == 0.2


def _pyramid_reference(noise: torch.Tensor, g: torch.Generator, iterations: int, discount: float) -> torch.Tensor:
    """sd-scripts' pyramid_noise_like with its random draws from `g` and each sample scaled to unit std."""
    b, c, h, w = noise.shape
    upsample = torch.nn.Upsample(size=(h, w), mode="bilinear")
    noise = noise.clone()
    for i in range(iterations):
        r = torch.rand((), generator=g).item() * 2 + 2
        hn, wn = max(1, int(h / (r**i))), max(1, int(w / (r**i)))
        noise += upsample(torch.randn(b, c, hn, wn, generator=g)) * discount**i
        if hn == 1 or wn == 1:
            break
    return noise / noise.flatten(1).std(dim=1).reshape(-1, 1, 1, 1)


@pytest.mark.parametrize("iterations, discount", [(1, 0.3), (6, 0.3), (10, 0.8)])
def test_pyramid_noise_equals_sd_scripts_formula(iterations: int, discount: float) -> None:
    noise = torch.randn(SHAPE, generator=_generator(1))
    g, reference_g = _generator(), _generator()
    result = pyramid_noise(noise, g, iterations, discount)
    torch.testing.assert_close(result, _pyramid_reference(noise, reference_g, iterations, discount))
    assert torch.equal(g.get_state(), reference_g.get_state())  # the same draws, and no more
    torch.testing.assert_close(result.flatten(1).std(dim=1), torch.ones(SHAPE[0]))


def test_pyramid_noise_stops_after_the_first_one_pixel_level() -> None:
    # 16 x 12 at r >= 2 reaches one pixel by level 4 at the latest: 50 iterations draw no more than that.
    g = _generator()
    pyramid_noise(torch.randn(SHAPE), g, 50, 0.3)
    reference = _generator()
    _pyramid_reference(torch.randn(SHAPE), reference, 50, 0.3)
    assert torch.equal(g.get_state(), reference.get_state())
    assert not torch.equal(g.get_state(), _generator().get_state())


def test_pyramid_noise_adds_low_frequencies() -> None:
    white = torch.randn(64, 4, 32, 32, generator=_generator(3))
    pyramid = pyramid_noise(white, _generator(), 6, 0.8)
    # The variance of 8x8 block means: 1/64 for white noise, far more once coarse levels are added.
    block_var = lambda x: torch.nn.functional.avg_pool2d(x, 8).var().item()  # noqa: E731
    assert block_var(white) == pytest.approx(1 / 64, rel=0.15)
    assert block_var(pyramid) > 5 * block_var(white)


def test_multires_noise_in_noisy_inputs_is_both_target_and_input() -> None:
    latents = _latents()
    options = NoiseOptions(multires_iterations=6, multires_discount=0.3)
    x_t, target, t = noisy_inputs(latents, EPS, _generator(), CPU, options, None)
    g = _generator()
    noise = _pyramid_reference(torch.randn(SHAPE, generator=g), g, 6, 0.3)
    timesteps = torch.randint(0, 1000, (SHAPE[0],), generator=g)
    torch.testing.assert_close(target, noise)
    torch.testing.assert_close(x_t, EPS.add_noise(latents, noise, timesteps))


@pytest.mark.parametrize("random_strength", [False, True])
def test_input_perturbation_noises_the_input_but_not_the_target(random_strength: bool) -> None:
    latents = _latents()
    options = NoiseOptions(ip_gamma=0.1, ip_gamma_random_strength=random_strength)
    v = NoiseSchedule.scaled_linear(prediction_type="v")
    x_t, target, t = noisy_inputs(latents, v, _generator(), CPU, options, None)
    g = _generator()
    noise = torch.randn(SHAPE, generator=g)
    timesteps = torch.randint(0, 1000, (SHAPE[0],), generator=g)
    gamma = (0.1 * torch.rand(SHAPE[0], generator=g)).reshape(-1, 1, 1, 1) if random_strength else 0.1
    perturbed = noise + gamma * torch.randn(SHAPE, generator=g)
    torch.testing.assert_close(x_t, v.add_noise(latents, perturbed, timesteps))
    torch.testing.assert_close(target, v.training_target(latents, noise, timesteps))
    assert torch.equal(t, timesteps)


def test_input_perturbation_is_gamma_times_standard_noise() -> None:
    noise = torch.zeros(2000, 4, 8, 8)
    extra = input_perturbation(noise, _generator(), 0.1, False)
    assert extra.std().item() == pytest.approx(0.1, rel=0.01)
    random = input_perturbation(noise, _generator(), 0.1, True).flatten(1).std(dim=1)
    strength = 0.1 * torch.rand(2000, generator=_generator())  # gamma x U(0, 1) per sample, drawn first
    torch.testing.assert_close(random / strength, torch.ones(2000), rtol=0.3, atol=0)
    assert (random / strength).mean().item() == pytest.approx(1.0, abs=0.01)


def test_zero_terminal_snr_equals_diffusers() -> None:
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    expected = torch.cumprod(1 - rescale_zero_terminal_snr(scheduler.betas), dim=0)
    rescaled = zero_terminal_snr(EPS.alphas_cumprod)
    torch.testing.assert_close(rescaled, expected, rtol=1e-5, atol=1e-7)
    assert rescaled[-1].item() == 0.0 and rescaled[0].item() == pytest.approx(EPS.alphas_cumprod[0].item())
    zts = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                        rescale_betas_zero_snr=True)
    torch.testing.assert_close(rescaled[:-1], zts.alphas_cumprod[:-1], rtol=1e-5, atol=1e-7)


def test_training_schedule_rescales_only_when_asked() -> None:
    assert training_schedule(EPS, Optimisation()) is EPS
    v = NoiseSchedule.scaled_linear(prediction_type="v")
    rescaled = training_schedule(v, Optimisation(zero_terminal_snr=True))
    assert rescaled.prediction_type == "v" and rescaled.snr(torch.tensor([999])).item() == 0.0
    x, n = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    last = torch.tensor([999])
    assert torch.equal(rescaled.add_noise(x, n, last), n)  # the last step is pure noise
    assert torch.equal(rescaled.training_target(x, n, last), -x)  # v = a n - b x with a = 0, b = 1
    with pytest.raises(ConfigError, match="zero_terminal_snr = True is for epsilon and v prediction"):
        training_schedule(NoiseSchedule.flow(), Optimisation(zero_terminal_snr=True))


def test_train_refuses_zero_terminal_snr_on_a_flow_model() -> None:
    cfg = config(steps=2, zero_terminal_snr=True)
    model = make_model()
    latents, cond = dataset()
    with pytest.raises(ConfigError, match="zero_terminal_snr"):
        train(model, attach(model, cfg.lora), batch_fn(latents, cond, 2), NoiseSchedule.flow(), cfg, lambda r: None)


@pytest.mark.parametrize("values, message", [
    ({"multires_noise_iterations": -1}, "multires_noise_iterations = -1 is not allowed"),
    ({"multires_noise_discount": 1.5}, "multires_noise_discount = 1.5 is not allowed"),
    ({"ip_noise_gamma": -0.1}, "ip_noise_gamma = -0.1 is not allowed"),
    ({"zero_terminal_snr": 1}, "zero_terminal_snr = 1 is not allowed; expected True or False"),
])
def test_config_refuses_bad_noise_settings(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Optimisation(**values)
