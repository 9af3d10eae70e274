"""Loss kinds, Huber thresholds and per-sample weights against direct formulas (sd-scripts' definitions)."""

from __future__ import annotations

import math

import pytest
import torch

from tests.support.tiny_models import attach, batch_fn, config, dataset, make_model
from trainer.errors import ConfigError
from trainer.training.config import LoraShape, Optimisation
from trainer.training.denoising import noisy_inputs
from trainer.training.loop import train
from trainer.training.losses import (
    DEBIASED_SNR_MAX,
    LossSettings,
    debiased_weights,
    elementwise_loss,
    huber_thresholds,
    sample_weights_for,
    training_loss,
)
from trainer.training.noise import NoiseOptions
from trainer.training.objective import NoiseSchedule, zero_terminal_snr

EPS = NoiseSchedule.scaled_linear()
V = NoiseSchedule.scaled_linear(prediction_type="v")
ZERO_TERMINAL_V = NoiseSchedule(zero_terminal_snr(EPS.alphas_cumprod), "v")
T = torch.tensor([0, 10, 400, 999])


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 4, 6, 6, generator=g), torch.randn(4, 4, 6, 6, generator=g) * 0.5


def _old_loss(prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The loss before loss kinds existed: MSE per sample, times the min-SNR weights, mean over the batch."""
    per_sample = (prediction.float() - target.float()).pow(2).flatten(1).mean(dim=1)
    return (per_sample * weights if weights is not None else per_sample).mean()


def test_l2_with_everything_off_is_the_old_loss_bit_for_bit() -> None:
    prediction, target = _batch()
    assert torch.equal(training_loss(prediction, target, T, EPS, LossSettings()), _old_loss(prediction, target))
    with_min_snr = LossSettings(min_snr_gamma=5.0)
    for schedule in (EPS, V):
        assert torch.equal(training_loss(prediction, target, T, schedule, with_min_snr),
                           _old_loss(prediction, target, schedule.min_snr_weights(T, 5.0)))


def test_settings_come_from_the_config() -> None:
    opt = Optimisation(loss_type="smooth_l1", huber_schedule="exponential", huber_c=0.3, min_snr_gamma=2.0,
                       debiased_estimation=True)
    assert LossSettings.of(opt) == LossSettings("smooth_l1", "exponential", 0.3, 2.0, True)


def test_huber_thresholds_follow_sd_scripts_schedules() -> None:
    c = 0.1
    torch.testing.assert_close(huber_thresholds(EPS, T, "constant", c), torch.full((4,), c))
    alpha = -math.log(c) / 1000
    exponential = huber_thresholds(EPS, T, "exponential", c)
    torch.testing.assert_close(exponential, torch.exp(-alpha * T.float()))
    assert exponential[0].item() == 1.0 and huber_thresholds(EPS, torch.tensor([1000]), "exponential", c).item() \
        == pytest.approx(c)
    acp = EPS.alphas_cumprod[T]
    sigmas = torch.sqrt((1 - acp) / acp)
    snr = huber_thresholds(EPS, T, "snr", c)
    torch.testing.assert_close(snr, (1 - c) / (1 + sigmas) ** 2 + c)
    assert snr[0].item() > 0.9 and bool((snr[1:] < snr[:-1]).all())  # from near 1 down towards c
    assert huber_thresholds(ZERO_TERMINAL_V, torch.tensor([999]), "snr", c).item() == pytest.approx(c)  # SNR 0


def test_loss_kinds_against_direct_formulas() -> None:
    prediction, target = _batch()
    d = prediction - target
    c = torch.tensor([0.05, 0.1, 0.5, 1.0])
    cc = c.reshape(4, 1, 1, 1)
    torch.testing.assert_close(elementwise_loss(prediction, target, "l1"), d.abs())
    torch.testing.assert_close(elementwise_loss(prediction, target, "huber", c),
                               2 * cc * (torch.sqrt(d**2 + cc**2) - cc))
    torch.testing.assert_close(elementwise_loss(prediction, target, "smooth_l1", c),
                               2 * (torch.sqrt(d**2 + cc**2) - cc))
    with pytest.raises(ValueError, match="needs a threshold"):
        elementwise_loss(prediction, target, "huber")


def test_pseudo_huber_is_quadratic_near_zero_and_linear_far_out() -> None:
    c = torch.tensor([0.1])
    small, large = torch.full((1, 3), 0.01), torch.full((1, 3), 50.0)
    zero = torch.zeros(1, 3)
    torch.testing.assert_close(elementwise_loss(small, zero, "huber", c), small**2, rtol=5e-3, atol=0)
    torch.testing.assert_close(elementwise_loss(large, zero, "huber", c), 2 * 0.1 * large, rtol=1e-2, atol=0)
    torch.testing.assert_close(elementwise_loss(small, zero, "smooth_l1", c), small**2 / 0.1, rtol=5e-3, atol=0)
    torch.testing.assert_close(elementwise_loss(large, zero, "smooth_l1", c), 2 * large, rtol=1e-2, atol=0)


@pytest.mark.parametrize("loss_type", ["l1", "huber", "smooth_l1"])
def test_training_loss_of_each_kind(loss_type: str) -> None:
    prediction, target = _batch(1)
    settings = LossSettings(loss_type=loss_type, huber_schedule="snr", huber_c=0.2, min_snr_gamma=5.0)
    c = huber_thresholds(EPS, T, "snr", 0.2)
    per_element = elementwise_loss(prediction, target, loss_type, c)
    expected = (per_element.flatten(1).mean(dim=1) * EPS.min_snr_weights(T, 5.0)).mean()
    torch.testing.assert_close(training_loss(prediction, target, T, EPS, settings), expected)


def test_debiased_weights_eps_and_v() -> None:
    snr = EPS.snr(T)
    eps = debiased_weights(EPS, T)
    torch.testing.assert_close(eps, 1 / torch.sqrt(torch.minimum(snr, torch.tensor(1000.0))))
    assert eps[0].item() == pytest.approx(1 / math.sqrt(DEBIASED_SNR_MAX))  # t = 0: SNR ~ 1175, clamped
    torch.testing.assert_close(debiased_weights(V, T), 1 / (torch.minimum(snr, torch.tensor(1000.0)) + 1))


def test_weights_stay_finite_at_zero_terminal_snr() -> None:
    last = torch.tensor([998, 999])
    for prediction_type in ("epsilon", "v"):
        schedule = NoiseSchedule(zero_terminal_snr(EPS.alphas_cumprod), prediction_type)
        assert schedule.snr(last)[-1].item() == 0.0
        weights = sample_weights_for(schedule, last, LossSettings(min_snr_gamma=5.0, debiased_estimation=True))
        assert bool(torch.isfinite(weights).all()), prediction_type
    eps_zero = NoiseSchedule(zero_terminal_snr(EPS.alphas_cumprod))
    assert debiased_weights(eps_zero, torch.tensor([999])).item() == pytest.approx(math.sqrt(1000))  # SNR floor
    assert debiased_weights(ZERO_TERMINAL_V, torch.tensor([999])).item() == pytest.approx(1 / 1.001)


def test_sample_weights_multiply_min_snr_debiased_and_the_callers() -> None:
    prior = torch.tensor([1.0, 0.5, 2.0, 0.0])
    settings = LossSettings(min_snr_gamma=5.0, debiased_estimation=True)
    expected = V.min_snr_weights(T, 5.0) * debiased_weights(V, T) * prior
    torch.testing.assert_close(sample_weights_for(V, T, settings, prior), expected)
    assert sample_weights_for(V, T, LossSettings()) is None
    prediction, target = _batch(2)
    mse = (prediction - target).pow(2).flatten(1).mean(dim=1)
    torch.testing.assert_close(training_loss(prediction, target, T, V, settings, sample_weights=prior),
                               (mse * expected).mean())


def test_element_weights_mask_each_element_before_the_mean() -> None:
    prediction, target = _batch(3)
    mask = torch.zeros(4, 1, 6, 6)
    mask[:, :, :3] = 1.0  # train the top half only
    mask[1] = 0.5
    settings = LossSettings(loss_type="l1")
    expected = ((prediction - target).abs() * mask).flatten(1).mean(dim=1).mean()
    torch.testing.assert_close(training_loss(prediction, target, T, EPS, settings, element_weights=mask), expected)
    changed = target.clone()
    changed[:, :, 3:] += 10.0  # where the mask is 0 nothing counts
    changed[1] = target[1]  # sample 1 counts everywhere, at half weight
    torch.testing.assert_close(training_loss(prediction, changed, T, EPS, settings, element_weights=mask),
                               training_loss(prediction, target, T, EPS, settings, element_weights=mask))


@pytest.mark.parametrize("settings, field", [
    (LossSettings(min_snr_gamma=5.0), "min_snr_gamma = 5.0"),
    (LossSettings(debiased_estimation=True), "debiased_estimation = True"),
    (LossSettings(loss_type="huber", huber_schedule="snr"), "huber_schedule = 'snr'"),
])
def test_flow_models_refuse_ddpm_snr_settings(settings: LossSettings, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        settings.check(NoiseSchedule.flow())
    settings.check(EPS)


def test_flow_models_take_constant_and_exponential_huber() -> None:
    flow = NoiseSchedule.flow()
    for schedule in ("constant", "exponential"):
        LossSettings(loss_type="smooth_l1", huber_schedule=schedule).check(flow)


@pytest.mark.parametrize("values, message", [
    ({"loss_type": "mse"}, "loss_type = 'mse' is not allowed; expected one of 'l2', 'l1', 'huber', 'smooth_l1'"),
    ({"huber_schedule": "linear"}, "huber_schedule = 'linear' is not allowed"),
    ({"huber_c": 0.0}, r"huber_c = 0.0 is not allowed; expected a number greater than 0.0 and at most 1.0"),
    ({"huber_c": 1.5}, "huber_c = 1.5 is not allowed"),
])
def test_config_refuses_bad_loss_settings(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Optimisation(**values)


def test_train_refuses_min_snr_on_a_flow_model_before_any_step() -> None:
    cfg = config(steps=2, min_snr_gamma=5.0)
    model = make_model()
    latents, cond = dataset()
    steps: list[object] = []
    with pytest.raises(ConfigError, match="min_snr_gamma = 5.0 is for epsilon and v prediction"):
        train(model, attach(model, cfg.lora), batch_fn(latents, cond, 2), NoiseSchedule.flow(), cfg, steps.append)
    assert steps == []


def test_the_loops_first_loss_is_the_configured_loss_at_its_draws() -> None:
    """The loop computes the configured loss kind and weights on the noise and timesteps it drew (step 1: the
    LoRA's delta is still zero, so the prediction is the base model's)."""
    cfg = config(steps=1, lora=LoraShape(rank=2, targets="attention"), loss_type="huber", huber_schedule="snr",
                 huber_c=0.2, min_snr_gamma=5.0, debiased_estimation=True, noise_offset=0.1)
    model = make_model()
    latents, cond = dataset()
    batches = batch_fn(latents, cond, 2)
    result = train(model, attach(model, cfg.lora), batches, V, cfg, lambda r: None)

    generator = torch.Generator().manual_seed(cfg.optimisation.seed)
    torch.randint(0, 2**62, (1,), generator=generator)  # the step's dropout seed, drawn first
    x0, c = batches(0, generator)
    x_t, target, t = noisy_inputs(x0, V, generator, torch.device("cpu"), NoiseOptions(offset=0.1), None)
    with torch.no_grad():
        prediction = make_model()(x_t, t, c)
    d = prediction - target
    thresholds = ((1 - 0.2) / (1 + torch.sqrt((1 - V.alphas_cumprod[t]) / V.alphas_cumprod[t])) ** 2 + 0.2)
    k = thresholds.reshape(-1, 1, 1, 1)
    per_sample = (2 * k * (torch.sqrt(d**2 + k**2) - k)).flatten(1).mean(dim=1)
    snr = V.snr(t)
    weights = torch.minimum(snr, torch.tensor(5.0)) / (snr + 1) / (torch.minimum(snr, torch.tensor(1000.0)) + 1)
    assert result.loss_history[0] == pytest.approx((per_sample * weights).mean().item(), rel=1e-5)
