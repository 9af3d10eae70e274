"""EMA of the LoRA weights: the formula (against diffusers' EMAModel), every N steps, swap in/out, resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.support.tiny_models import attach, batch_fn, config, dataset, make_model
from trainer.errors import ResumeStateError
from trainer.safetensors_io import read_safetensors, write_safetensors_atomic
from trainer.training.config import Ema, LoraShape, TrainConfig
from trainer.training.ema import AdapterEma
from trainer.training.loop import StepRecord, TrainResult, train
from trainer.training.objective import NoiseSchedule
from trainer.training.resume_state import TrainState, load_state, save_state

SCHEDULE = NoiseSchedule.scaled_linear()
LORA = LoraShape(rank=2, alpha=1.0, dropout=0.1, targets="attention_ff_conv")


def _with_ema(cfg: TrainConfig, **ema: object) -> TrainConfig:
    return TrainConfig(lora=cfg.lora, optimisation=cfg.optimisation, checkpointing=cfg.checkpointing,
                       ema=Ema(enabled=True, **ema))  # type: ignore[arg-type]


CONFIG = _with_ema(config(steps=8, lora=LORA, grad_accumulation=2, noise_offset=0.1, schedule="cosine",
                          warmup_steps=2), decay=0.8, every_n_steps=2)


def _train(cfg: TrainConfig, stop_at: int | None = None, start: TrainState | None = None,
           ema: AdapterEma | None = None, on_step=None) -> tuple[object, TrainResult]:
    model = make_model()
    adapters = attach(model, cfg.lora, seed=cfg.optimisation.seed)
    latents, cond = dataset()
    records: list[StepRecord] = []

    def step(record: StepRecord) -> None:
        records.append(record)
        if on_step is not None:
            on_step(adapters, record)

    stop = (lambda: "stop" if records and records[-1].step >= stop_at else None) if stop_at else None
    result = train(model, adapters, batch_fn(latents, cond, 2), SCHEDULE, cfg, step, should_stop=stop,
                   start_state=start, ema=ema)
    return adapters, result


def test_ema_follows_the_direct_formula_every_n_steps() -> None:
    """ema_k = decay * ema_{k-1} + (1 - decay) * w_k at steps 2, 4, ...; from the untrained weights."""
    model = make_model()
    live = attach(model, CONFIG.lora, seed=CONFIG.optimisation.seed)
    expected = {n: p.detach().clone().double() for n, p in live.named_parameters()}
    ema = AdapterEma(live, CONFIG.ema)

    def check(record: StepRecord) -> None:
        if record.step % 2 == 0:
            for n, p in live.named_parameters():
                expected[n] = 0.8 * expected[n] + 0.2 * p.detach().double()
        for n, value in expected.items():
            torch.testing.assert_close(ema.shadow[n].double(), value, rtol=1e-6, atol=1e-7)

    latents, cond = dataset()
    result = train(model, live, batch_fn(latents, cond, 2), SCHEDULE, CONFIG, check, ema=ema)
    assert result.steps_completed == 8
    assert set(result.state.ema) == {n for n, _ in live.named_parameters()}
    assert all(v.dtype == torch.float32 and v.device.type == "cpu" for v in result.state.ema.values())


def test_ema_equals_diffusers_ema_model_step_by_step() -> None:
    diffusers = pytest.importorskip("diffusers.training_utils")
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(2, 4, 1, 1))]

    class Holder:  # the two methods AdapterEma reads from a LoraAdapterSet
        def named_parameters(self):
            return iter([("a.lora_down.weight", params[0]), ("a.lora_up.weight", params[1])])

    ours = AdapterEma(Holder(), Ema(enabled=True, decay=0.9))  # type: ignore[arg-type]
    # min_decay = decay and update_after_step = -1: diffusers' constant decay from the first update, no warmup
    reference = diffusers.EMAModel(params, decay=0.9, min_decay=0.9, update_after_step=-1, use_ema_warmup=False)
    for step in range(1, 21):
        with torch.no_grad():
            for p in params:
                p.add_(torch.randn_like(p) * 0.1)
        ours.update(step, Holder())  # type: ignore[arg-type]
        reference.step(params)
        for value, shadow in zip(ours.shadow.values(), reference.shadow_params, strict=True):
            torch.testing.assert_close(value, shadow, rtol=1e-6, atol=1e-6)


def test_applied_swaps_the_ema_in_and_restores_the_weights_bit_exactly() -> None:
    _, result = _train(CONFIG)
    model = make_model()
    adapters = attach(model, LORA)
    adapters.load_state_dict(result.state.lora)
    ema = AdapterEma(adapters, CONFIG.ema)
    ema.load_state_dict(result.state.ema)
    before = {n: p.detach().clone() for n, p in adapters.named_parameters()}
    with ema.applied(adapters):
        inside = {n: p.detach().clone() for n, p in adapters.named_parameters()}
    assert all(torch.equal(inside[n], result.state.ema[n]) for n in inside)
    assert any(not torch.equal(inside[n], before[n]) for n in inside)
    assert all(torch.equal(p.detach(), before[n]) for n, p in adapters.named_parameters())


def test_ema_off_keeps_no_ema_and_writes_a_version_1_state(tmp_path: Path) -> None:
    """Version-1 files (without EMA) are what runs without EMA still write, so older LoRA Labs read them."""
    _, result = _train(config(steps=2, lora=LORA))
    assert result.state.ema == {}
    save_state(tmp_path / "s.safetensors", result.state)
    tensors, metadata = read_safetensors(tmp_path / "s.safetensors")
    assert metadata["loralab.state.version"] == "1" and not any(k.startswith("ema::") for k in tensors)
    assert load_state(tmp_path / "s.safetensors").ema == {}


def test_resume_with_ema_equals_uninterrupted(tmp_path: Path) -> None:
    full_adapters, full = _train(CONFIG)
    _, first = _train(CONFIG, stop_at=3)  # stopped between two EMA updates (every 2)
    path = tmp_path / "ema_state.safetensors"
    save_state(path, first.state)
    tensors, metadata = read_safetensors(path)
    assert metadata["loralab.state.version"] == "2" and any(k.startswith("ema::") for k in tensors)
    resumed_adapters, resumed = _train(CONFIG, start=load_state(path, expected_config=CONFIG))
    assert resumed.loss_history == full.loss_history
    assert full.state.ema.keys() == resumed.state.ema.keys()
    for key, value in full.state.ema.items():
        assert torch.equal(resumed.state.ema[key], value), key
    for key, value in full_adapters.state_dict().items():
        assert torch.equal(resumed_adapters.state_dict()[key], value), key


@pytest.mark.parametrize(("ema", "message"), [
    (Ema(enabled=False), r"ema: saved True, now False"),
    (Ema(enabled=True, decay=0.5, every_n_steps=2), r"ema_decay: saved 0.8, now 0.5"),
    (Ema(enabled=True, decay=0.8, every_n_steps=1), r"ema_every: saved 2, now 1"),
])
def test_resume_refuses_other_ema_settings_naming_them(tmp_path: Path, ema: Ema, message: str) -> None:
    _, first = _train(CONFIG, stop_at=2)
    save_state(tmp_path / "s.safetensors", first.state)
    other = TrainConfig(lora=CONFIG.lora, optimisation=CONFIG.optimisation, ema=ema)
    with pytest.raises(ResumeStateError, match=r"was trained with other timestep or EMA settings \(" + message):
        load_state(tmp_path / "s.safetensors", expected_config=other)


def test_ema_for_samples_and_final_may_change_on_resume(tmp_path: Path) -> None:
    _, first = _train(CONFIG, stop_at=2)
    save_state(tmp_path / "s.safetensors", first.state)
    other = _with_ema(CONFIG, decay=0.8, every_n_steps=2, for_samples=True, for_final=True)
    assert load_state(tmp_path / "s.safetensors", expected_config=other).step == 2


def test_state_with_ema_on_but_without_its_tensors_is_damaged(tmp_path: Path) -> None:
    _, first = _train(CONFIG, stop_at=2)
    save_state(tmp_path / "s.safetensors", first.state)
    tensors, metadata = read_safetensors(tmp_path / "s.safetensors")
    write_safetensors_atomic(tmp_path / "cut.safetensors", {k: v for k, v in tensors.items()
                                                            if not k.startswith("ema::")}, metadata)
    with pytest.raises(ResumeStateError, match=r"cut.safetensors': the file is damaged \(ema is on in its settings, "
                                               r"but it holds the EMA of 0 of the"):
        load_state(tmp_path / "cut.safetensors")


def test_a_state_without_ema_cannot_start_an_ema_run() -> None:
    _, first = _train(config(steps=8, lora=LORA), stop_at=2)
    model = make_model()
    adapters = attach(model, LORA)
    latents, cond = dataset()
    with pytest.raises(ResumeStateError, match=r"ema: saved False, now True"):
        train(model, adapters, batch_fn(latents, cond, 2), SCHEDULE, CONFIG, lambda r: None, start_state=first.state)


@pytest.mark.parametrize(("field", "value"), [("decay", 1.0), ("decay", -0.1), ("every_n_steps", 0)])
def test_ema_settings_are_validated(field: str, value: object) -> None:
    from trainer.errors import ConfigError
    with pytest.raises(ConfigError, match=rf"{field} = {value!r} is not allowed"):
        Ema(**{field: value})  # type: ignore[arg-type]


def test_with_a_schedule_free_optimizer_the_ema_averages_the_weights_a_file_holds() -> None:
    """Schedule-free trains at one point and saves another (its average): the EMA follows the saved one."""
    pytest.importorskip("schedulefree")
    cfg = _with_ema(config(steps=5, lora=LORA, optimizer="adamw_schedulefree"), decay=0.5)
    model = make_model()
    live = attach(model, cfg.lora, seed=cfg.optimisation.seed)
    expected = {n: p.detach().clone().double() for n, p in live.named_parameters()}
    ema = AdapterEma(live, cfg.ema)

    def check(record: StepRecord) -> None:  # on_step sees the averaged weights
        for n, p in live.named_parameters():
            expected[n] = 0.5 * expected[n] + 0.5 * p.detach().double()
            torch.testing.assert_close(ema.shadow[n].double(), expected[n], rtol=1e-6, atol=1e-7)

    latents, cond = dataset()
    train(model, live, batch_fn(latents, cond, 2), SCHEDULE, cfg, check, ema=ema)
