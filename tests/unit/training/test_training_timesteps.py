"""Timestep sampling: each distribution's draws against its CDF (Kolmogorov-Smirnov), bounds, resume, histogram."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.support.tiny_models import config, train_tiny
from trainer.errors import ConfigError, ResumeStateError
from trainer.jobs import JobRegistry
from trainer.timestep_histogram import TIMESTEP_BINS
from trainer.training.config import LoraShape, TrainConfig
from trainer.training.export import TrainingSummary, kohya_metadata
from trainer.training.loop import StepRecord, TrainResult
from trainer.training.objective import (
    NoiseSchedule,
    TimestepSampling,
    flux_shift_mu,
    sample_timesteps,
    sample_unit_timesteps,
)
from trainer.training.resume_state import TrainState, load_state, save_state

FLOW = NoiseSchedule.flow()
DRAWS = 20_000
KS_BOUND = 0.02  # the 0.1% critical value at 20,000 draws is 1.95 / sqrt(n) = 0.0138


def _phi(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _logit(u: torch.Tensor) -> torch.Tensor:
    return torch.log(u) - torch.log1p(-u)


# The target CDF of u for each distribution, derived by hand by inverting its transform of z ~ N(0, 1).
CDFS = {
    "sigmoid": (TimestepSampling("sigmoid", sigmoid_scale=1.7), lambda u: _phi(_logit(u) / 1.7)),
    "logit_normal": (TimestepSampling("logit_normal", logit_mean=0.4, logit_std=0.8),
                     lambda u: _phi((_logit(u) - 0.4) / 0.8)),
    # u = s v / (1 + (s - 1) v)  <=>  v = u / (s - (s - 1) u)
    "shift": (TimestepSampling("shift", sigmoid_scale=1.0, shift=3.0), lambda u: _phi(_logit(u / (3.0 - 2.0 * u)))),
    # u = e^mu / (e^mu + 1/v - 1)  <=>  logit(v) = logit(u) - mu; 64x64 latent: 1024 tokens
    "flux_shift": (TimestepSampling("flux_shift", sigmoid_scale=1.0),
                   lambda u: _phi(_logit(u) - flux_shift_mu((64, 64)))),
}


def _ks(samples: torch.Tensor, cdf) -> float:
    x = samples.double().sort().values
    n = x.numel()
    f = cdf(x)
    above = torch.arange(1, n + 1, dtype=torch.float64) / n - f
    below = f - torch.arange(0, n, dtype=torch.float64) / n
    return float(torch.maximum(above, below).max())


def test_flux_mu_is_the_linear_function_of_the_token_count() -> None:
    assert flux_shift_mu((32, 32)) == pytest.approx(0.5)  # 256 tokens
    assert flux_shift_mu((128, 128)) == pytest.approx(1.15)  # 4096 tokens (1024 px)
    assert flux_shift_mu((64, 64)) == pytest.approx(0.5 + 0.65 * (1024 - 256) / 3840)


@pytest.mark.parametrize("kind", sorted(CDFS))
def test_continuous_draws_follow_their_distribution(kind: str) -> None:
    sampling, cdf = CDFS[kind]
    u = sample_unit_timesteps(DRAWS, sampling, torch.Generator().manual_seed(3), latent_hw=(64, 64))
    assert bool(((u > 0) & (u < 1)).all())
    assert _ks(u, cdf) < KS_BOUND
    # and a wrong target is rejected by the same test: the statistic has power
    assert _ks(u, lambda x: x) > 0.05 or kind == "sigmoid"


@pytest.mark.parametrize("kind", sorted(CDFS))
def test_integer_timesteps_follow_the_distribution_on_the_schedule(kind: str) -> None:
    sampling, cdf = CDFS[kind]
    t = sample_timesteps(DRAWS, FLOW, torch.Generator().manual_seed(4), sampling, latent_hw=(64, 64))
    assert t.dtype == torch.int64 and int(t.min()) >= 0 and int(t.max()) < 1000
    # t = floor(u * 1000): the CDF of (t + 0.5) / 1000 is within half a bin of u's
    assert _ks((t.double() + 0.5) / 1000, cdf) < KS_BOUND + 1e-3


def test_uniform_is_uniform_over_min_max_and_unchanged_by_default() -> None:
    schedule = NoiseSchedule.scaled_linear()
    default = sample_timesteps(64, schedule, torch.Generator().manual_seed(5))
    assert torch.equal(default, torch.randint(0, 1000, (64,), generator=torch.Generator().manual_seed(5)))
    t = sample_timesteps(DRAWS, schedule, torch.Generator().manual_seed(5), TimestepSampling(min_timestep=200,
                                                                                            max_timestep=700))
    assert int(t.min()) == 200 and int(t.max()) == 699
    assert _ks((t.double() - 200 + 0.5) / 500, lambda u: u.clamp(0, 1)) < KS_BOUND


@pytest.mark.parametrize("kind", ["sigmoid", "logit_normal", "shift", "flux_shift"])
def test_min_and_max_timestep_bound_every_distribution(kind: str) -> None:
    sampling = TimestepSampling(kind, min_timestep=100, max_timestep=400)
    t = sample_timesteps(DRAWS, FLOW, torch.Generator().manual_seed(6), sampling)
    assert int(t.min()) >= 100 and int(t.max()) < 400
    assert int(t.min()) < 150 and int(t.max()) > 350  # the range is used, not a corner of it


def test_max_timestep_is_capped_at_the_schedules_length() -> None:
    short = NoiseSchedule.flow(num_timesteps=50)
    t = sample_timesteps(2000, short, torch.Generator().manual_seed(1), TimestepSampling("sigmoid"))
    assert int(t.max()) < 50
    with pytest.raises(ConfigError, match=r"min_timestep = 60 is not allowed; this model has 50 timesteps"):
        TimestepSampling("sigmoid", min_timestep=60).check(short)


@pytest.mark.parametrize("kind", ["sigmoid", "logit_normal", "shift", "flux_shift"])
def test_flow_distributions_are_refused_on_epsilon_and_v_models(kind: str) -> None:
    for prediction in ("epsilon", "v"):
        schedule = NoiseSchedule.scaled_linear(prediction_type=prediction)
        with pytest.raises(ConfigError, match=rf"timestep_sampling = '{kind}' is for flow-matching models.*"
                                              rf"predicts {prediction}: use 'uniform'"):
            TimestepSampling(kind).check(schedule)


def test_min_timestep_must_be_below_max_timestep() -> None:
    with pytest.raises(ConfigError, match=r"min_timestep = 500 is not allowed; expected less than max_timestep"):
        config(min_timestep=500, max_timestep=500)


# --- in the loop: the run's generator, resume, the histogram -------------------------------------------------

LORA = LoraShape(rank=2, alpha=1.0, targets="attention_ff")


def _train(cfg: TrainConfig, schedule: NoiseSchedule, stop_at: int | None = None,
           start: TrainState | None = None) -> tuple[dict, TrainResult, list[StepRecord]]:
    return train_tiny(cfg, schedule, stop_at, start, init_seed=cfg.optimisation.seed)


@pytest.mark.parametrize(("kind", "schedule"), [
    ("uniform", NoiseSchedule.scaled_linear()), ("sigmoid", FLOW), ("logit_normal", FLOW), ("shift", FLOW),
    ("flux_shift", FLOW)])
def test_resume_with_each_distribution_equals_uninterrupted(tmp_path: Path, kind: str,
                                                            schedule: NoiseSchedule) -> None:
    cfg = config(steps=6, lora=LORA, grad_accumulation=2, timestep_sampling=kind, min_timestep=50,
                 max_timestep=900, sigmoid_scale=1.3, logit_mean=0.2, logit_std=0.9, discrete_flow_shift=2.0)
    full, full_result, full_records = _train(cfg, schedule)
    _, first, first_records = _train(cfg, schedule, stop_at=2)
    save_state(tmp_path / "s.safetensors", first.state)
    resumed, resumed_result, resumed_records = _train(cfg, schedule, start=load_state(tmp_path / "s.safetensors",
                                                                                      expected_config=cfg))
    assert resumed_result.loss_history == full_result.loss_history
    assert [r.timesteps for r in first_records + resumed_records] == [r.timesteps for r in full_records]
    assert all(len(r.timesteps) == 4 and all(50 <= t < 900 for t in r.timesteps) for r in full_records)
    for key, value in full.items():
        assert torch.equal(resumed[key], value), key


@pytest.mark.parametrize(("field", "value", "shown"), [
    ("timestep_sampling", "logit_normal", "timestep_sampling: saved 'sigmoid', now 'logit_normal'"),
    ("min_timestep", 10, "min_timestep: saved 0, now 10"),
    ("max_timestep", 800, "max_timestep: saved 1000, now 800"),
    ("sigmoid_scale", 2.0, "sigmoid_scale: saved 1.0, now 2.0"),
    ("discrete_flow_shift", 1.0, "discrete_flow_shift: saved 3.0, now 1.0"),
])
def test_resume_refuses_other_timestep_settings_naming_them(tmp_path: Path, field: str, value: object,
                                                            shown: str) -> None:
    cfg = config(steps=4, lora=LORA, timestep_sampling="sigmoid")
    _, first, _ = _train(cfg, FLOW, stop_at=2)
    save_state(tmp_path / "s.safetensors", first.state)
    with pytest.raises(ResumeStateError, match=r"other timestep or EMA settings \(" + shown):
        load_state(tmp_path / "s.safetensors", expected_config=config(steps=4, lora=LORA, **{
            "timestep_sampling": "sigmoid", field: value}))


def test_the_loop_refuses_a_flow_distribution_on_an_epsilon_model_before_any_step() -> None:
    with pytest.raises(ConfigError, match=r"timestep_sampling = 'shift' is for flow-matching models"):
        _train(config(steps=2, lora=LORA, timestep_sampling="shift"), NoiseSchedule.scaled_linear())


def test_histogram_counts_equal_the_draws() -> None:
    _, _, records = _train(config(steps=5, lora=LORA, grad_accumulation=3, timestep_sampling="logit_normal"), FLOW)
    job = JobRegistry().create("run", 5, "/tmp")
    assert job.snapshot()["timestep_histogram"] is None
    drawn = [t for r in records for t in r.timesteps]
    for record in records:
        job.record_timesteps(record.timesteps, FLOW.num_timesteps)
    histogram = job.snapshot()["timestep_histogram"]
    assert histogram["range"] == [0, 1000] and len(histogram["counts"]) == TIMESTEP_BINS
    assert sum(histogram["counts"]) == len(drawn) == 5 * 3 * 2
    assert histogram["counts"] == [sum(1 for t in drawn if i * 50 <= t < (i + 1) * 50) for i in range(TIMESTEP_BINS)]


def test_histogram_bins_edges_and_bad_timesteps() -> None:
    from trainer.errors import JobError
    job = JobRegistry().create("run", 5, "/tmp")
    job.record_timesteps([0, 49, 50, 999], 1000)
    assert job.snapshot()["timestep_histogram"]["counts"][:2] == [2, 1]
    assert job.snapshot()["timestep_histogram"]["counts"][-1] == 1
    with pytest.raises(JobError, match=r"timestep 1000 is outside \[0, 1000\)"):
        job.record_timesteps([1000], 1000)


def test_timestep_settings_are_in_the_kohya_metadata() -> None:
    cfg = config(timestep_sampling="shift", min_timestep=10, max_timestep=990, sigmoid_scale=1.5,
                 discrete_flow_shift=3.1582, logit_mean=0.1, logit_std=1.2)
    md = kohya_metadata(cfg, TrainingSummary("x", 1, (64, 64), 6), "flux1", "flow")
    assert (md["ss_timestep_sampling"], md["ss_min_timestep"], md["ss_max_timestep"]) == ("shift", "10", "990")
    assert (md["ss_sigmoid_scale"], md["ss_discrete_flow_shift"]) == ("1.5", "3.1582")
    assert (md["ss_logit_mean"], md["ss_logit_std"]) == ("0.1", "1.2")
    assert TrainConfig.from_metadata(md) == cfg  # and the loralab.* config round-trips, ema section included
