"""LoRA+ (loraplus_lr_ratio): the up matrices in param groups of their own at lr x ratio; schedule; resume; refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.support.tiny_models import (
    TinyTextEncoder,
    attach,
    caption_batches,
    config,
    make_model,
    text_denoiser,
)
from trainer.errors import ConfigError, ResumeStateError
from trainer.training.config import Checkpointing, LoraShape, TrainConfig
from trainer.training.loop import StepRecord, TrainResult, build_optimizer, train
from trainer.training.objective import NoiseSchedule
from trainer.training.resume_state import TrainState, load_state, save_state
from trainer.training.schedules import lr_multiplier_at
from trainer.training.trainable_lora import LoraAdapterSet

SCHEDULE = NoiseSchedule.scaled_linear()
LR, TEXT_LR, RATIO = 1e-2, 3e-3, 16.0
SHAPE = LoraShape(rank=2, alpha=2.0, targets="attention_ff", train_text_encoder=True, text_encoder_lr=TEXT_LR)


def _adapters(shape: LoraShape = SHAPE, seed: int = 7) -> tuple[torch.nn.Module, TinyTextEncoder, LoraAdapterSet]:
    model, text_encoder = make_model(), TinyTextEncoder()
    adapters = attach(model, shape, seed=seed)
    adapters.attach(text_encoder, list(TinyTextEncoder.LAYERS), key_prefix="text_encoder:", group="text_encoder")
    return model, text_encoder, adapters


def _config(**optimisation: Any) -> TrainConfig:
    return config(lora=SHAPE, learning_rate=LR, **optimisation)


def test_up_matrices_get_their_own_groups_at_lr_times_ratio() -> None:
    _, _, adapters = _adapters()
    optimizer, _, group_names = build_optimizer(adapters, _config(loraplus_lr_ratio=RATIO))
    groups = {g["group_name"]: g for g in optimizer.param_groups}
    assert list(groups) == ["text_encoder", "text_encoder.lora_up", "unet", "unet.lora_up"]
    assert {name: g["base_lr"] for name, g in groups.items()} == {
        "text_encoder": TEXT_LR, "text_encoder.lora_up": TEXT_LR * RATIO, "unet": LR, "unet.lora_up": LR * RATIO}
    names = dict(zip(groups, group_names, strict=True))
    assert all(n.endswith(".lora_up.weight") for g in ("text_encoder.lora_up", "unet.lora_up") for n in names[g])
    assert all(n.endswith(".lora_down.weight") for g in ("text_encoder", "unet") for n in names[g])
    assert all(n.startswith("text_encoder:") for n in names["text_encoder"] + names["text_encoder.lora_up"])
    assert sorted(n for g in group_names for n in g) == sorted(n for n, _ in adapters.named_parameters())


def test_without_loraplus_the_groups_are_as_before() -> None:
    _, _, adapters = _adapters()
    optimizer, _, group_names = build_optimizer(adapters, _config())
    assert [(g["group_name"], g["base_lr"]) for g in optimizer.param_groups] == [("text_encoder", TEXT_LR),
                                                                                ("unet", LR)]
    assert [len(names) for names in group_names] == [2 * len(TinyTextEncoder.LAYERS), 2 * (len(adapters) - 3)]


def test_one_sgd_step_moves_the_up_matrices_ratio_times_as_far() -> None:
    _, _, adapters = _adapters()
    optimizer, _, _ = build_optimizer(adapters, _config(optimizer="custom", optimizer_class="torch.optim.SGD",
                                                        weight_decay=0.0, loraplus_lr_ratio=RATIO))
    generator = torch.Generator().manual_seed(3)
    before, grads = {}, {}
    for name, param in adapters.named_parameters():
        before[name] = param.detach().clone()
        grads[name] = param.grad = torch.randn(param.shape, generator=generator)
    optimizer.step()
    for name, param in adapters.named_parameters():
        lr = TEXT_LR if name.startswith("text_encoder:") else LR
        if name.endswith(".lora_up.weight"):
            lr *= RATIO
        assert torch.allclose(param.detach(), before[name] - lr * grads[name], rtol=0, atol=1e-7), name


def _random_up(adapters: LoraAdapterSet) -> None:
    """Non-zero up matrices, so the down matrices get a gradient in the first step too."""
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, param in adapters.named_parameters():
            if name.endswith(".lora_up.weight"):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)


def _one_loop_step(ratio: float) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    model, text_encoder, adapters = _adapters()
    _random_up(adapters)
    before = {name: param.detach().clone() for name, param in adapters.named_parameters()}
    cfg = _config(steps=1, optimizer="custom", optimizer_class="torch.optim.SGD", weight_decay=0.0,
                  max_grad_norm=0.0, loraplus_lr_ratio=ratio)
    train(text_denoiser(model, text_encoder), adapters, caption_batches(), SCHEDULE, cfg, lambda record: None)
    return before, {name: param.detach() for name, param in adapters.named_parameters()}


def test_in_the_loop_the_up_matrices_move_ratio_times_as_far_as_without_loraplus() -> None:
    start, plain = _one_loop_step(0.0)
    start_plus, plus = _one_loop_step(RATIO)
    for name, value in start.items():
        assert torch.equal(start_plus[name], value)
        moved_plain, moved_plus = plain[name] - value, plus[name] - value
        assert torch.count_nonzero(moved_plain) > 0, name
        if name.endswith(".lora_up.weight"):
            # fp32 differences of weights near 0.1: a few 1e-8 of rounding, times the ratio
            assert torch.allclose(moved_plus, RATIO * moved_plain, rtol=1e-3, atol=1e-6), name
        else:  # the same gradient (the up matrices only act after the step) at the same lr
            assert torch.equal(moved_plus, moved_plain), name


def test_every_groups_lr_follows_the_schedule() -> None:
    model, text_encoder, adapters = _adapters()
    cfg = TrainConfig(lora=SHAPE, optimisation=_config(steps=6, schedule="cosine", warmup_steps=2,
                                                       loraplus_lr_ratio=RATIO).optimisation,
                      checkpointing=Checkpointing(every_n_steps=1))
    states: list[TrainState] = []
    result = train(text_denoiser(model, text_encoder), adapters, caption_batches(), SCHEDULE, cfg,
                   lambda record: None, on_checkpoint=states.append)
    states.append(result.state)
    base = {"text_encoder": TEXT_LR, "text_encoder.lora_up": TEXT_LR * RATIO, "unet": LR, "unet.lora_up": LR * RATIO}
    multipliers = set()
    for state in states:
        multiplier = lr_multiplier_at(state.step - 1, cfg.optimisation)  # the lr of the last update taken
        multipliers.add(multiplier)
        for group in state.optimizer_state["param_groups"]:
            assert group["lr"] == pytest.approx(base[group["group_name"]] * multiplier, rel=1e-12)
    assert [s.step for s in states] == [1, 2, 3, 4, 5, 6] and len(multipliers) == 6


def _run(cfg: TrainConfig, stop_at: int | None = None, start: TrainState | None = None,
         seed: int = 7) -> tuple[dict[str, torch.Tensor], TrainResult]:
    model, text_encoder, adapters = _adapters(cfg.lora, seed)
    records: list[StepRecord] = []
    stop = (lambda: "stop" if records and records[-1].step >= stop_at else None) if stop_at else None
    result = train(text_denoiser(model, text_encoder), adapters, caption_batches(), SCHEDULE, cfg, records.append,
                   should_stop=stop, start_state=start)
    return adapters.state_dict(), result


RESUMED = config(steps=6, lora=LoraShape(rank=2, alpha=2.0, dropout=0.2, targets="attention_ff",
                                         train_text_encoder=True, text_encoder_lr=TEXT_LR),
                 learning_rate=LR, loraplus_lr_ratio=RATIO, grad_accumulation=2, schedule="cosine", warmup_steps=2)


def test_resume_with_loraplus_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    full, full_result = _run(RESUMED)
    _, first = _run(RESUMED, stop_at=3)
    path = tmp_path / "loraplus_state.safetensors"
    save_state(path, first.state)
    resumed, resumed_result = _run(RESUMED, start=load_state(path, expected_config=RESUMED), seed=1234)
    assert resumed_result.steps_completed == 6
    assert resumed_result.loss_history == full_result.loss_history
    for key, value in full.items():
        assert torch.equal(resumed[key], value), key


@pytest.mark.parametrize("ratio", [0.0, 4.0])
def test_resume_with_another_ratio_is_refused_naming_it(tmp_path: Path, ratio: float) -> None:
    _, first = _run(RESUMED, stop_at=1)
    changed = TrainConfig(lora=RESUMED.lora, optimisation=config(
        steps=6, learning_rate=LR, loraplus_lr_ratio=ratio, grad_accumulation=2, schedule="cosine",
        warmup_steps=2).optimisation)
    with pytest.raises(ResumeStateError, match=f"loraplus_lr_ratio: saved 16.0, now {ratio}"):
        _run(changed, start=first.state)


@pytest.mark.parametrize("adapter", ["loha", "lokr"])
def test_loraplus_with_an_adapter_without_up_matrices_is_refused(adapter: str) -> None:
    shape = LoraShape(rank=2, adapter=adapter)
    adapters = attach(make_model(), shape)
    with pytest.raises(ConfigError, match=f"loraplus_lr_ratio = 16.0 is not allowed with adapter '{adapter}'"):
        build_optimizer(adapters, config(lora=shape, loraplus_lr_ratio=RATIO))


def test_dora_magnitudes_stay_at_the_base_lr() -> None:
    shape = LoraShape(rank=2, adapter="dora")
    adapters = attach(make_model(), shape)
    optimizer, _, group_names = build_optimizer(adapters, config(lora=shape, learning_rate=LR, loraplus_lr_ratio=RATIO))
    assert [(g["group_name"], g["base_lr"]) for g in optimizer.param_groups] == [("unet", LR),
                                                                                ("unet.lora_up", LR * RATIO)]
    assert any(n.endswith(".dora_scale") for n in group_names[0])
    assert all(n.endswith(".lora_up.weight") for n in group_names[1])


def test_the_ratio_round_trips_through_the_metadata_and_is_at_least_zero() -> None:
    cfg = _config(loraplus_lr_ratio=RATIO)
    assert TrainConfig.from_metadata(cfg.to_metadata()) == cfg
    assert cfg.to_metadata()["loralab.optimisation.loraplus_lr_ratio"] == "16.0"
    with pytest.raises(ConfigError, match="loraplus_lr_ratio = -1.0 is not allowed"):
        config(loraplus_lr_ratio=-1.0)
