"""The training loop on a tiny denoiser: only LoRA changes, loss falls, determinism, NaN stop, accumulation."""

from __future__ import annotations

import math

import pytest
import torch

import trainer.training.denoising as denoising
import trainer.training.loop as loop
from tests.support.tiny_models import (
    TinyTextEncoder,
    attach,
    batch_fn,
    caption_batches,
    config,
    dataset,
    make_model,
    text_denoiser,
)
from trainer.errors import NonFiniteLossError, OptimizerError
from trainer.training.config import LoraShape, TrainConfig
from trainer.training.evaluation import evaluate
from trainer.training.loop import StepRecord, gradient_checkpointing, train
from trainer.training.objective import NoiseSchedule

SCHEDULE = NoiseSchedule.scaled_linear()


def _run(cfg: TrainConfig, **kwargs: object) -> tuple[torch.nn.Module, object, object, list[StepRecord]]:
    model = make_model()
    adapters = attach(model, cfg.lora, seed=cfg.optimisation.seed)
    latents, cond = dataset()
    records: list[StepRecord] = []
    result = train(model, adapters, batch_fn(latents, cond, cfg.optimisation.batch_size), SCHEDULE, cfg,
                   records.append, **kwargs)  # type: ignore[arg-type]
    return model, adapters, result, records


def test_only_lora_parameters_change() -> None:
    base = make_model().state_dict()
    model, adapters, result, records = _run(config(steps=3))
    assert all(torch.equal(base[k], v) for k, v in model.state_dict().items())
    assert any(torch.count_nonzero(adapters.merged_delta(k)) > 0 for k in adapters.keys())
    assert [r.step for r in records] == [1, 2, 3] and records[-1].total == 3
    assert result.steps_completed == 3 and result.stopped_early is None and result.optimizer_name == "adamw"
    assert all(math.isfinite(r.grad_norm) and r.seconds_per_step >= 0 for r in records)


def test_loss_at_fixed_noise_falls_on_memorisation_task() -> None:
    cfg = config(steps=60, learning_rate=2e-2, batch_size=4)
    model = make_model()
    adapters = attach(model, cfg.lora)
    latents, cond = dataset()
    fixed = batch_fn(latents, cond, 4, shuffle=False)
    before = evaluate(model, adapters, fixed, SCHEDULE, fixed_seed=1, num_batches=2)
    assert evaluate(model, adapters, fixed, SCHEDULE, fixed_seed=1, num_batches=2) == before  # deterministic
    result = train(model, adapters, batch_fn(latents, cond, 4), SCHEDULE, cfg, lambda r: None)
    after = evaluate(model, adapters, fixed, SCHEDULE, fixed_seed=1, num_batches=2)
    assert after < 0.7 * before, (before, after)
    assert result.smoothed_loss is not None and result.smoothed_loss < result.loss_history[0]


def test_same_seed_gives_bitwise_same_lora_and_history() -> None:
    cfg = config(steps=4, lora=LoraShape(rank=2, dropout=0.2, targets="attention_ff_conv"),
                 noise_offset=0.1, min_snr_gamma=5.0)
    _, a, result_a, _ = _run(cfg)
    _, b, result_b, _ = _run(cfg)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert result_a.loss_history == result_b.loss_history
    _, c, _, _ = _run(config(steps=4, seed=8, lora=cfg.lora))
    assert not torch.equal(a.state_dict()["res.in_layers.2.lora_up.weight"],
                           c.state_dict()["res.in_layers.2.lora_up.weight"])


def test_global_rng_is_left_alone() -> None:
    cfg = config(steps=2, lora=LoraShape(rank=2, dropout=0.3))
    model = make_model()
    adapters = attach(model, cfg.lora)
    latents, cond = dataset()
    torch.manual_seed(42)
    expected = torch.rand(3)
    torch.manual_seed(42)
    train(model, adapters, batch_fn(latents, cond, 2), SCHEDULE, cfg, lambda r: None)
    assert torch.equal(torch.rand(3), expected)


def test_non_finite_loss_stops_without_applying_the_update() -> None:
    model = make_model()
    cfg = config(steps=5)
    adapters = attach(model, cfg.lora)
    latents, cond = dataset()
    calls = {"n": 0}

    def denoiser(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        out = model(x, t, c)
        return out * float("nan") if calls["n"] == 3 else out

    snapshots: list[dict[str, torch.Tensor]] = []
    with pytest.raises(NonFiniteLossError, match="Training stopped at step 3: the loss became nan") as error:
        train(denoiser, adapters, batch_fn(latents, cond, 2), SCHEDULE, cfg,
              lambda r: snapshots.append(adapters.state_dict()))
    assert error.value.step == 3 and len(snapshots) == 2
    state = adapters.state_dict()
    assert all(torch.isfinite(v).all() for v in state.values())
    assert all(torch.equal(state[k], snapshots[-1][k]) for k in state)
    assert all(p.grad is None for p in adapters.parameters())


def test_should_stop_ends_gracefully_with_reason() -> None:
    cfg = config(steps=10)
    model = make_model()
    adapters = attach(model, cfg.lora)
    latents, cond = dataset()
    records: list[StepRecord] = []
    result = train(model, adapters, batch_fn(latents, cond, 2), SCHEDULE, cfg, records.append,
                   should_stop=lambda: "user pressed Stop" if len(records) >= 2 else None)
    assert result.steps_completed == 2 and result.stopped_early == "user pressed Stop"
    assert len(result.loss_history) == 2 and result.state.step == 2


def test_checkpoint_callback_every_n_steps() -> None:
    cfg = TrainConfig(lora=config().lora, optimisation=config(steps=7).optimisation,
                      checkpointing=config().checkpointing.__class__(every_n_steps=3))
    states = []
    _, _, result, _ = _run(cfg, on_checkpoint=states.append)
    assert [s.step for s in states] == [3, 6]
    assert len(states[0].loss_history) == 3 and states[0].loss_history == list(result.loss_history[:3])


def test_grad_accumulation_equals_larger_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    # Noise and timesteps fixed per sample, so 2 micro-batches of 1 see exactly what 1 batch of 2 sees.
    monkeypatch.setattr(denoising, "sample_noise", lambda shape, g, offset: torch.linspace(-2, 2, math.prod(shape[1:]))
                        .reshape(1, *shape[1:]).expand(shape).clone())
    monkeypatch.setattr(denoising, "sample_timesteps", lambda n, s, g, *args, **kwargs: torch.full((n,), 400))
    latents, cond = dataset()
    results = []
    for batch_size, accumulation in ((2, 1), (1, 2)):
        cfg = config(steps=2, batch_size=batch_size, grad_accumulation=accumulation, max_grad_norm=0.0)
        model = make_model()
        adapters = attach(model, cfg.lora)
        result = train(model, adapters, batch_fn(latents, cond, batch_size, shuffle=False), SCHEDULE, cfg,
                       lambda r: None)
        results.append((adapters.state_dict(), result.loss_history))
    (a, loss_a), (b, loss_b) = results
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)


def test_gradient_checkpointing_gives_same_result_and_restores_forward() -> None:
    cfg = config(steps=3, lora=LoraShape(rank=2, dropout=0.25, targets="attention_ff_conv"))
    _, plain, _, _ = _run(cfg)
    model = make_model()
    adapters = attach(model, cfg.lora, seed=cfg.optimisation.seed)
    latents, cond = dataset()
    blocks = [model.res, model.attn.transformer_blocks[0]]
    train(model, adapters, batch_fn(latents, cond, 2), SCHEDULE, cfg, lambda r: None, checkpoint_modules=blocks)
    assert all("forward" not in b.__dict__ for b in blocks)
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(adapters.state_dict()[key], value, rtol=1e-5, atol=1e-7)


def test_gradient_checkpointing_context_restores_instance_forward() -> None:
    module = torch.nn.Linear(2, 2)
    own = module.forward
    module.forward = own  # an instance-level forward set by someone else
    with gradient_checkpointing([module]):
        assert module.forward is not own
    assert module.forward is own


def test_adamw8bit_on_cpu_is_refused_unless_fallback_is_asked_for() -> None:
    with pytest.raises(OptimizerError, match="adamw8bit needs a CUDA GPU.*optimizer_fallback"):
        _run(config(steps=1, optimizer="adamw8bit"))
    _, _, result, _ = _run(config(steps=1, optimizer="adamw8bit", optimizer_fallback=True))
    assert result.optimizer_name == "adamw"


def test_v_prediction_with_min_snr_trains() -> None:
    model = make_model()
    cfg = config(steps=3, min_snr_gamma=5.0)
    adapters = attach(model, cfg.lora)
    latents, cond = dataset()
    result = train(model, adapters, batch_fn(latents, cond, 2), NoiseSchedule.scaled_linear(prediction_type="v"),
                   cfg, lambda r: None)
    assert all(math.isfinite(v) for v in result.loss_history)


def test_text_encoder_lora_trains_in_its_own_group_at_its_own_learning_rate() -> None:
    cfg = config(steps=3, lora=LoraShape(rank=2, alpha=2.0, targets="attention_ff", train_text_encoder=True,
                                         text_encoder_lr=5e-3))
    model, text_encoder = make_model(), TinyTextEncoder()
    adapters = attach(model, cfg.lora)
    te_layers = list(TinyTextEncoder.LAYERS)
    adapters.attach(text_encoder, te_layers, key_prefix="te:", group="text_encoder")
    base_te = {k: v.clone() for k, v in text_encoder.state_dict().items()}
    optimizer, _, names = loop.build_optimizer(adapters, cfg)
    lrs = {g["group_name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs == {"text_encoder": 5e-3, "unet": cfg.optimisation.learning_rate}
    assert sorted(n.rsplit(".", 2)[0] for n in names[0])[::2] == [f"te:{n}" for n in sorted(te_layers)]

    train(text_denoiser(model, text_encoder), adapters, caption_batches(), SCHEDULE, cfg, lambda r: None)
    assert all(torch.count_nonzero(adapters.merged_delta(f"te:{n}")) > 0 for n in te_layers)
    assert all(torch.equal(base_te[k], v) for k, v in text_encoder.state_dict().items())


def test_one_base_lr_policy_for_new_and_resumed_runs() -> None:
    cfg = config(learning_rate=1e-3, lora=LoraShape(rank=2, alpha=2.0, train_text_encoder=True, text_encoder_lr=5e-4))
    assert loop._base_lr("unet", cfg) == 1e-3 and loop._base_lr("text_encoder", cfg) == 5e-4
    assert loop._base_lr("text_encoder", config(learning_rate=1e-3)) == 1e-3  # no own lr: the UNet's
    assert loop._base_lr("embedding", cfg) == 1e-3
