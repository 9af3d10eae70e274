"""Resume contract: stop at k, save, load, continue to N == one uninterrupted run (CPU fp32, bitwise)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.support.tiny_models import (TinyTextEncoder, attach, batch_fn, caption_batches, config, dataset, make_model,
                                   text_denoiser)
from trainer.training.resume_state import ResumeStateError, TrainState, load_state, save_state
from trainer.training.config import LoraShape, TrainConfig
from trainer.training.loop import StepRecord, TrainResult, train
from trainer.training.objective import NoiseSchedule
from trainer.safetensors_io import read_safetensors

SCHEDULE = NoiseSchedule.scaled_linear()
# Everything that draws randomness or keeps state is on: dropout, noise offset, min-SNR, shuffling,
# accumulation, warmup + cosine (lr depends on the step), weight decay.
CONFIG = config(steps=8, lora=LoraShape(rank=2, alpha=1.0, dropout=0.2, targets="attention_ff_conv"),
                grad_accumulation=2, noise_offset=0.1, min_snr_gamma=5.0, schedule="cosine", warmup_steps=2)


def _train(cfg: TrainConfig, stop_at: int | None = None, start: TrainState | None = None,
           init_seed: int | None = None) -> tuple[dict[str, torch.Tensor], TrainResult]:
    model = make_model()
    adapters = attach(model, cfg.lora, seed=cfg.optimisation.seed if init_seed is None else init_seed)
    latents, cond = dataset()
    records: list[StepRecord] = []
    stop = (lambda: "stop" if records and records[-1].step >= stop_at else None) if stop_at else None
    result = train(model, adapters, batch_fn(latents, cond, 2), SCHEDULE, cfg, records.append,
                   should_stop=stop, start_state=start)
    return adapters.state_dict(), result


def test_stop_save_load_resume_equals_uninterrupted(tmp_path: Path) -> None:
    full, full_result = _train(CONFIG)
    _, first = _train(CONFIG, stop_at=3)
    assert first.steps_completed == 3 and first.stopped_early == "stop"
    path = tmp_path / "run_state.safetensors"
    save_state(path, first.state)
    state = load_state(path, expected_config=CONFIG)
    # different init seed: everything must come from the state file
    resumed, resumed_result = _train(CONFIG, start=state, init_seed=1234)
    assert resumed_result.steps_completed == 8
    assert resumed_result.loss_history == full_result.loss_history  # one continuous history
    for key, value in full.items():
        assert torch.equal(resumed[key], value), key


def test_state_file_round_trip_and_layout(tmp_path: Path) -> None:
    _, result = _train(config(steps=2))
    path = tmp_path / "s.safetensors"
    save_state(path, result.state)
    tensors, metadata = read_safetensors(path)
    assert metadata["loralab.state.format"] == "loralab.resume_state"
    assert tensors["rng::generator"].dtype == torch.uint8
    assert any(k.startswith("optim::") and k.endswith("::exp_avg_sq") for k in tensors)
    assert not any(k.endswith(".lora_down.weight") and not k.startswith("lora::") for k in tensors)
    loaded = load_state(path)
    assert loaded.step == 2 and loaded.config == result.state.config
    assert loaded.loss_history == list(result.loss_history)
    assert loaded.smoothed_loss == result.smoothed_loss and loaded.param_names == result.state.param_names
    assert torch.equal(loaded.generator_state, result.state.generator_state)
    assert all(torch.equal(loaded.lora[k], v) for k, v in result.state.lora.items())
    assert json.loads(metadata["loralab.state.param_names"]) == result.state.param_names


def test_resume_refuses_other_lora_shape(tmp_path: Path) -> None:
    _, result = _train(config(steps=2))
    save_state(tmp_path / "s.safetensors", result.state)
    other = config(steps=4, lora=LoraShape(rank=3, alpha=4.0, targets="attention"))
    with pytest.raises(ResumeStateError, match=r"different LoRA shape \(rank: saved 4, now 3; targets: "
                                               r"saved 'attention_ff_conv', now 'attention'\)"):
        load_state(tmp_path / "s.safetensors", expected_config=other)
    with pytest.raises(ResumeStateError, match="state is at step 2, but steps = 1"):
        load_state(tmp_path / "s.safetensors", expected_config=config(steps=1))


def test_load_state_refuses_a_lora_file(tmp_path: Path) -> None:
    from trainer.safetensors_io import write_safetensors_atomic
    write_safetensors_atomic(tmp_path / "lora.safetensors", {"x.alpha": torch.tensor(1.0)}, {"ss_network_dim": "4"})
    with pytest.raises(ResumeStateError, match="is not a LoRA Lab resume state"):
        load_state(tmp_path / "lora.safetensors")


class HostCancelled(Exception):
    """Stands for a host exception raised from inside a layer's forward when the user cancels."""


def test_exception_inside_a_step_resumes_like_an_uninterrupted_run(tmp_path: Path) -> None:
    """Bug: the host's Cancel raises inside a layer mid-step; the run lost all its work."""
    full, full_result = _train(CONFIG)
    model = make_model()
    adapters = attach(model, CONFIG.lora, seed=CONFIG.optimisation.seed)
    latents, cond = dataset()
    batches = batch_fn(latents, cond, 2)
    calls = {"n": 0}

    def cancelling_batches(index: int, generator: torch.Generator):
        calls["n"] += 1
        if calls["n"] == 8:  # the second micro-batch of step 4: step 4 is half done
            raise HostCancelled()
        return batches(index, generator)

    result = train(model, adapters, cancelling_batches, SCHEDULE, CONFIG, lambda record: None,
                   interruptions=(HostCancelled,))
    assert result.stopped_early == "interrupted" and result.steps_completed == 3
    save_state(tmp_path / "state.safetensors", result.state)
    resumed, resumed_result = _train(CONFIG, start=load_state(tmp_path / "state.safetensors", CONFIG), init_seed=99)
    assert resumed_result.loss_history == full_result.loss_history
    for key, value in full.items():
        assert torch.equal(resumed[key], value), key


def test_other_exceptions_inside_a_step_still_propagate() -> None:
    model = make_model()
    adapters = attach(model, CONFIG.lora)
    latents, cond = dataset()

    def broken(index: int, generator: torch.Generator):
        raise KeyError("a real bug")

    with pytest.raises(KeyError):
        train(model, adapters, broken, SCHEDULE, CONFIG, lambda record: None, interruptions=(HostCancelled,))


def test_resume_with_a_text_encoder_lora_equals_uninterrupted(tmp_path: Path) -> None:
    cfg = config(steps=6, lora=LoraShape(rank=2, alpha=2.0, targets="attention_ff", train_text_encoder=True,
                                         text_encoder_lr=3e-3))

    def run(stop_at: int | None = None, start: TrainState | None = None) -> tuple[dict, TrainResult]:
        model, text_encoder = make_model(), TinyTextEncoder()
        adapters = attach(model, cfg.lora, seed=cfg.optimisation.seed)
        # the key prefix Train LoRA uses for CLIP layers (with a ':') goes through the state file too
        adapters.attach(text_encoder, list(TinyTextEncoder.LAYERS), key_prefix="text_encoder:", group="text_encoder")
        records: list[StepRecord] = []
        stop = (lambda: "stop" if records and records[-1].step >= stop_at else None) if stop_at else None
        result = train(text_denoiser(model, text_encoder), adapters, caption_batches(), SCHEDULE, cfg,
                       records.append, should_stop=stop, start_state=start)
        return adapters.state_dict(), result

    full, full_result = run()
    _, first = run(stop_at=2)
    path = tmp_path / "te_state.safetensors"
    save_state(path, first.state)
    resumed, resumed_result = run(start=load_state(path, expected_config=cfg))
    assert resumed_result.loss_history == full_result.loss_history
    assert any(k.startswith("text_encoder:") for k in full)
    for key, value in full.items():
        assert torch.equal(resumed[key], value), key
