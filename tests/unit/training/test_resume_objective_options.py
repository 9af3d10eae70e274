"""Resume with the loss and noise options on: stop at k, save, load, continue == one uninterrupted run, bit for bit;
a resume with other loss or noise settings is refused by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.support.tiny_models import config, train_tiny
from trainer.errors import ResumeStateError
from trainer.training.config import LoraShape, TrainConfig
from trainer.training.objective import NoiseSchedule
from trainer.training.resume_checks import check_resumable
from trainer.training.resume_state import load_state, save_state

EPS = NoiseSchedule.scaled_linear()
V = NoiseSchedule.scaled_linear(prediction_type="v")
FLOW = NoiseSchedule.flow()
OPTIONS: dict[str, tuple[NoiseSchedule, dict[str, Any]]] = {
    "huber_snr_min_snr_debiased": (V, {"loss_type": "huber", "huber_schedule": "snr", "huber_c": 0.2,
                                       "min_snr_gamma": 5.0, "debiased_estimation": True}),
    "smooth_l1_exponential": (EPS, {"loss_type": "smooth_l1", "huber_schedule": "exponential"}),
    "l1_flow": (FLOW, {"loss_type": "l1"}),
    "offset_random_strength": (EPS, {"noise_offset": 0.1, "noise_offset_random_strength": True}),
    "multires": (EPS, {"multires_noise_iterations": 6, "multires_noise_discount": 0.3}),
    "input_perturbation": (FLOW, {"ip_noise_gamma": 0.1, "ip_noise_gamma_random_strength": True}),
    "zero_terminal_snr": (V, {"zero_terminal_snr": True, "min_snr_gamma": 5.0, "debiased_estimation": True,
                              "min_timestep": 990}),  # draws the zero-SNR step 999 (asserted below)
    "all_at_once": (EPS, {"loss_type": "huber", "huber_schedule": "constant", "min_snr_gamma": 5.0,
                          "debiased_estimation": True, "noise_offset": 0.1, "noise_offset_random_strength": True,
                          "multires_noise_iterations": 4, "ip_noise_gamma": 0.1,
                          "ip_noise_gamma_random_strength": True, "zero_terminal_snr": True}),
}


def _config(**options: Any) -> TrainConfig:
    return config(steps=6, lora=LoraShape(rank=2, alpha=1.0, dropout=0.2, targets="attention_ff_conv"),
                  grad_accumulation=2, **options)


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_resume_with_objective_options_equals_uninterrupted(name: str, tmp_path: Path) -> None:
    schedule, options = OPTIONS[name]
    cfg = _config(**options)
    full, full_result, records = train_tiny(cfg, schedule, init_seed=cfg.optimisation.seed)
    if name == "zero_terminal_snr":
        assert 999 in {t for record in records for t in record.timesteps}
    _, first, _ = train_tiny(cfg, schedule, stop_at=3, init_seed=cfg.optimisation.seed)
    assert first.steps_completed == 3
    path = tmp_path / "state.safetensors"
    save_state(path, first.state)
    state = load_state(path, expected_config=cfg)
    resumed, resumed_result, _ = train_tiny(cfg, schedule, start=state, init_seed=1234)  # everything from the state
    assert all(torch.isfinite(torch.tensor(full_result.loss_history)))
    assert resumed_result.loss_history == full_result.loss_history
    for key, value in full.items():
        assert torch.equal(resumed[key], value), key


def test_the_options_change_what_is_trained() -> None:
    """Each option set trains another LoRA than the plain run (so the resume tests above are not of no-ops)."""
    plain = train_tiny(_config(), EPS)[0]
    for name, (schedule, options) in OPTIONS.items():
        if schedule is not EPS:
            continue
        changed = train_tiny(_config(**options), EPS)[0]
        assert any(not torch.equal(changed[k], plain[k]) for k in plain), name


@pytest.mark.parametrize("field, saved, now", [
    ("loss_type", "l2", "huber"),
    ("huber_c", 0.1, 0.2),
    ("min_snr_gamma", 0.0, 5.0),
    ("debiased_estimation", False, True),
    ("noise_offset", 0.0, 0.05),
    ("multires_noise_iterations", 0, 6),
    ("ip_noise_gamma", 0.1, 0.0),
    ("zero_terminal_snr", True, False),
])
def test_resume_refuses_other_loss_or_noise_settings(field: str, saved: object, now: object) -> None:
    with pytest.raises(ResumeStateError, match=rf"other loss or noise settings \({field}: saved {saved!r}, "
                                               rf"now {now!r}\)"):
        check_resumable(_config(**{field: saved}), _config(**{field: now}), saved_step=3)


def test_states_written_before_these_options_resume_with_their_defaults() -> None:
    metadata = {k: v for k, v in _config().to_metadata().items()
                if not any(k.endswith("." + name) for name in ("loss_type", "huber_schedule", "huber_c",
                                                               "debiased_estimation", "zero_terminal_snr",
                                                               "noise_offset_random_strength", "ip_noise_gamma",
                                                               "multires_noise_iterations", "multires_noise_discount",
                                                               "ip_noise_gamma_random_strength"))}
    assert TrainConfig.from_metadata(metadata) == _config()
    check_resumable(TrainConfig.from_metadata(metadata), _config(), saved_step=3)
