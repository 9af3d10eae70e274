"""Each optimizer choice: its steps equal the library's own optimizer (or a hand-computed step) on the same
parameters and gradients; a run with it resumes bit for bit; a missing package, class or bad argument is named."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import lion_pytorch
import prodigyopt
import pytest
import schedulefree
import torch

from tests.support.tiny_models import attach, batch_fn, config, dataset, make_model, train_tiny
from trainer.errors import ConfigError, OptimizerError, ResumeStateError
from trainer.training import optimizers
from trainer.training.config import LoraShape, Optimisation, TrainConfig
from trainer.training.export import TrainingSummary, kohya_metadata
from trainer.training.loop import TrainResult, train
from trainer.training.objective import NoiseSchedule
from trainer.training.optimizers import averaged_weights, build_optimizer
from trainer.training.resume_state import TrainState, load_state, save_state

CPU = torch.device("cpu")
LR, WD = 1e-2, 0.01


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(4, 3, generator=g)),
            torch.nn.Parameter(torch.randn(2, 4, 3, 3, generator=g))]  # a linear and a conv LoRA matrix


def _grads(step: int, params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=g) for p in params]


def _run(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], steps: int = 3) -> list[torch.Tensor]:
    if optimizers.has_averaged_weights(optimizer):
        optimizer.train()
    for step in range(steps):
        for p, grad in zip(params, _grads(step, params), strict=True):
            p.grad = grad.clone()
        optimizer.step()
    return [p.detach().clone() for p in params]


def _ours(name: str, lr: float = LR, **fields: Any) -> list[torch.Tensor]:
    params = _params()
    opt = Optimisation(optimizer=name, learning_rate=lr, weight_decay=WD, **fields)
    optimizer, kind = build_optimizer([{"params": params, "lr": lr, "base_lr": lr, "group_name": "unet"}], opt, CPU)
    assert kind.name == name
    return _run(optimizer, params)


# Each choice against the library class called directly, with the defaults the choice documents.
REFERENCES: dict[str, Any] = {
    "adamw": lambda p: torch.optim.AdamW(p, lr=LR, weight_decay=WD),
    "lion": lambda p: lion_pytorch.Lion(p, lr=LR, weight_decay=WD),
    "adafactor": lambda p: torch.optim.Adafactor(p, lr=LR, weight_decay=WD),
    "adamw_schedulefree": lambda p: schedulefree.AdamWScheduleFree(p, lr=LR, weight_decay=WD, warmup_steps=0),
    "sgd_nesterov": lambda p: torch.optim.SGD(p, lr=LR, weight_decay=WD, momentum=0.9, nesterov=True),
}


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_each_optimizer_steps_as_its_library_does(name: str) -> None:
    params = _params()
    expected = _run(REFERENCES[name](params), params)
    for ours, theirs in zip(_ours(name), expected, strict=True):
        assert torch.equal(ours, theirs)


def test_prodigy_steps_as_prodigyopt_with_lr_as_a_multiplier() -> None:
    params = _params()
    expected = _run(prodigyopt.Prodigy(params, lr=1.0, weight_decay=WD), params)
    ours = _ours("prodigy", lr=1.0)
    assert all(torch.equal(a, b) for a, b in zip(ours, expected, strict=True))
    assert not torch.equal(ours[0], _params()[0])


def test_lion_step_by_hand() -> None:
    # Lion (Chen et al. 2023): p -= lr * (sign(b1 m + (1 - b1) g) + wd p); m = b2 m + (1 - b2) g; m starts at 0.
    start = _params()[0].detach().clone()
    grad = _grads(0, _params())[0]
    expected = start * (1 - LR * WD) - LR * torch.sign(0.1 * grad)
    assert torch.allclose(_one_step("lion")[0], expected, atol=1e-7)


def _one_step(name: str, **fields: Any) -> list[torch.Tensor]:
    params = _params()
    opt = Optimisation(optimizer=name, learning_rate=LR, weight_decay=WD, **fields)
    optimizer, _ = build_optimizer([{"params": params, "lr": LR, "base_lr": LR, "group_name": "unet"}], opt, CPU)
    return _run(optimizer, params, steps=1)


def test_sgd_nesterov_two_steps_by_hand() -> None:
    p0 = _params()[0].detach().clone()
    g0, g1 = _grads(0, _params())[0], _grads(1, _params())[0]
    # torch's SGD: d = g + wd p; buf = d (first step), then 0.9 buf + d; nesterov: p -= lr (d + 0.9 buf)
    d0 = g0 + WD * p0
    p1 = p0 - LR * (d0 + 0.9 * d0)
    d1 = g1 + WD * p1
    buf1 = 0.9 * d0 + d1
    p2 = p1 - LR * (d1 + 0.9 * buf1)
    params = _params()
    opt = Optimisation(optimizer="sgd_nesterov", learning_rate=LR, weight_decay=WD)
    optimizer, _ = build_optimizer([{"params": params, "lr": LR, "base_lr": LR, "group_name": "unet"}], opt, CPU)
    assert torch.allclose(_run(optimizer, params, steps=2)[0], p2, atol=1e-6)


def test_custom_class_by_dotted_name_with_literal_args() -> None:
    params = _params()
    expected = _run(torch.optim.RAdam(params, lr=LR, weight_decay=WD, betas=(0.8, 0.95), eps=1e-6), params)
    ours = _ours("custom", optimizer_class="torch.optim.RAdam", optimizer_args="betas=(0.8, 0.95), eps=1e-6")
    assert all(torch.equal(a, b) for a, b in zip(ours, expected, strict=True))


def test_optimizer_args_override_the_defaults_and_keep_the_group_keys() -> None:
    params = _params()
    opt = Optimisation(optimizer="sgd_nesterov", optimizer_args="momentum=0.5, weight_decay=0.0")
    optimizer, _ = build_optimizer([{"params": params, "lr": LR, "base_lr": LR, "group_name": "unet"}], opt, CPU)
    group = optimizer.param_groups[0]
    assert (group["momentum"], group["weight_decay"], group["nesterov"]) == (0.5, 0.0, True)
    assert (group["base_lr"], group["group_name"]) == (LR, "unet")


@pytest.mark.parametrize(("fields", "message"), [
    ({"optimizer": "custom", "optimizer_class": "no_such_package.Optim"},
     "needs the module no_such_package, which is not installed"),
    ({"optimizer": "custom", "optimizer_class": "torch.optim.NoSuchOptim"}, "torch.optim has no NoSuchOptim"),
    ({"optimizer": "custom", "optimizer_class": "torch.nn.Linear"}, "is not a torch.optim.Optimizer subclass"),
    ({"optimizer": "adamw", "optimizer_args": "no_such_arg=1"}, "refused its arguments .*It accepts: lr, betas"),
    ({"optimizer": "lion", "optimizer_args": "betas=(2.0, 0.9)"}, "lion .* refused its arguments"),
])
def test_bad_optimizer_choices_are_named(fields: dict, message: str) -> None:
    with pytest.raises(OptimizerError, match=message):
        build_optimizer([{"params": _params(), "lr": LR}], Optimisation(**fields), CPU)


@pytest.mark.parametrize(("fields", "message"), [
    ({"optimizer": "custom"}, "optimizer_class = '' is not allowed; expected with optimizer 'custom'"),
    ({"optimizer": "custom", "optimizer_class": "RAdam"}, "optimizer_class = 'RAdam'"),
    ({"optimizer_args": "betas=(0.9"}, "optimizer_args = 'betas=\\(0.9' is not allowed; expected comma-separated"),
    ({"optimizer_args": "0.9"}, "only key=value pairs"),
    ({"optimizer_args": "eps=__import__('os')"}, "a Python literal value for eps"),
    ({"optimizer_args": "eps=1, eps=2"}, "eps is given twice"),
    ({"optimizer": "adamw_schedulefree", "schedule": "cosine"},
     "schedule = 'cosine' is not allowed; expected 'constant' with optimizer 'adamw_schedulefree'"),
    ({"optimizer": "sgd"}, "optimizer = 'sgd' is not allowed"),
])
def test_bad_optimizer_settings_are_refused_by_the_config(fields: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Optimisation(**fields)


def _without(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))


def test_a_missing_package_names_the_pip_install(monkeypatch: pytest.MonkeyPatch) -> None:
    _without(monkeypatch, "prodigyopt")
    with pytest.raises(OptimizerError, match=r"prodigy needs prodigyopt: pip install prodigyopt==1\.1\.2 .*"
                                             "prodigy has no fallback"):
        build_optimizer([{"params": _params(), "lr": 1.0}], Optimisation(optimizer="prodigy", optimizer_fallback=True),
                        CPU)


def test_fallback_to_adamw_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    _without(monkeypatch, "lion_pytorch")
    with pytest.raises(OptimizerError, match="lion needs lion-pytorch.*turn optimizer_fallback on"):
        build_optimizer([{"params": _params(), "lr": LR}], Optimisation(optimizer="lion"), CPU)
    optimizer, kind = build_optimizer([{"params": _params(), "lr": LR}],
                                      Optimisation(optimizer="lion", optimizer_fallback=True,
                                                   optimizer_args="betas=(0.95, 0.98)"), CPU)
    assert kind.name == "adamw" and isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.999)  # Lion's arguments are not given to AdamW


def test_averaged_weights_puts_the_training_weights_back_bit_for_bit() -> None:
    params = _params()
    optimizer = schedulefree.AdamWScheduleFree(params, lr=LR)
    training = _run(optimizer, params)
    reference = schedulefree.AdamWScheduleFree(_params(), lr=LR)
    reference.load_state_dict(optimizer.state_dict())
    with averaged_weights(optimizer, params):
        inside = [p.detach().clone() for p in params]
    assert all(torch.equal(p, t) for p, t in zip(params, training, strict=True))
    assert optimizer.param_groups[0]["train_mode"] is True
    optimizer.eval()
    assert all(torch.equal(p, x) for p, x in zip(params, inside, strict=True))  # inside: eval()'s average
    assert not torch.equal(inside[0], training[0])


# --- whole runs: train, stop, save, load, resume == uninterrupted -------------------------------------------

SCHEDULE = NoiseSchedule.scaled_linear()
RUN_LR = {"prodigy": 1.0}  # Prodigy: a multiplier of the lr it estimates
CHOICES = ["adamw", "lion", "adafactor", "prodigy", "adamw_schedulefree", "sgd_nesterov", "custom"]


def _config(name: str, **fields: Any) -> TrainConfig:
    extra: dict[str, Any] = {"optimizer_class": "torch.optim.RAdam", "optimizer_args": "betas=(0.8, 0.99)"} \
        if name == "custom" else {}
    schedule = {} if name == "adamw_schedulefree" else {"schedule": "cosine_with_restarts", "lr_cycles": 2}
    return config(steps=6, optimizer=name, learning_rate=RUN_LR.get(name, 3e-3), warmup_steps=1, grad_accumulation=2,
                  lora=LoraShape(rank=2, alpha=1.0, dropout=0.1, targets="attention_ff_conv"),
                  **schedule, **extra, **fields)


def _train(cfg: TrainConfig, stop_at: int | None = None, start: TrainState | None = None, init_seed: int = 0,
           on_checkpoint: Any = None) -> tuple[dict[str, torch.Tensor], TrainResult]:
    state, result, _ = train_tiny(cfg, SCHEDULE, stop_at, start, init_seed, on_checkpoint)
    return state, result


@pytest.mark.parametrize("name", CHOICES)
def test_resume_with_each_optimizer_equals_uninterrupted(name: str, tmp_path: Path) -> None:
    cfg = _config(name)
    full, full_result = _train(cfg)
    _, first = _train(cfg, stop_at=3)
    path = tmp_path / "state.safetensors"
    save_state(path, first.state)
    state = load_state(path, expected_config=cfg)
    assert state.optimizer_name == name
    resumed, resumed_result = _train(cfg, start=state, init_seed=99)
    assert resumed_result.loss_history == full_result.loss_history
    for key, value in full.items():
        assert torch.equal(resumed[key], value), key
    assert full_result.loss_history[-1] != full_result.loss_history[0]


def test_schedule_free_checkpoints_show_the_average_and_do_not_change_the_run() -> None:
    cfg = _config("adamw_schedulefree")
    cfg = TrainConfig(lora=cfg.lora, optimisation=cfg.optimisation,
                      checkpointing=type(cfg.checkpointing)(every_n_steps=2))
    model = make_model()
    adapters = attach(model, cfg.lora)
    latents, cond = dataset()
    seen: list[tuple[TrainState, dict[str, torch.Tensor]]] = []
    result = train(model, adapters, batch_fn(latents, cond, 2), SCHEDULE, cfg, lambda record: None,
                   on_checkpoint=lambda state: seen.append((state, adapters.state_dict())))
    plain, without = _train(cfg)
    assert result.loss_history == without.loss_history  # the checkpoints' swaps changed nothing
    assert all(torch.equal(adapters.state_dict()[k], v) for k, v in plain.items())
    assert [state.step for state, _ in seen] == [2, 4]
    # in the callback and after the run the adapters hold the average (what is saved and used); the state
    # holds the training point
    for state, shown in [*seen, (result.state, adapters.state_dict())]:
        trained = [k for k in shown if k.endswith("weight")]
        assert any(not torch.equal(shown[k], state.lora[k]) for k in trained)


@pytest.mark.parametrize(("saved", "now", "named"), [
    ({"optimizer": "adamw"}, {"optimizer": "lion"}, "optimizer: saved 'adamw', now 'lion'"),
    ({"optimizer_args": "betas=(0.8, 0.99)"}, {"optimizer_args": ""}, "optimizer_args: saved 'betas=(0.8, 0.99)'"),
])
def test_resume_refuses_another_optimizer_naming_it(saved: dict, now: dict, named: str, tmp_path: Path) -> None:
    _, first = _train(config(steps=4, **saved), stop_at=2)
    path = tmp_path / "state.safetensors"
    save_state(path, first.state)
    with pytest.raises(ResumeStateError, match="trained with another optimizer \\(" + named.replace("(", r"\(")
                       .replace(")", r"\)")):
        load_state(path, expected_config=config(steps=4, **now))


def test_metadata_records_the_optimizer_its_arguments_and_the_schedule() -> None:
    cfg = config(optimizer="lion", optimizer_args="betas=(0.95, 0.98)", schedule="cosine_with_restarts", lr_cycles=3,
                 lr_power=2.0)
    md = kohya_metadata(cfg, TrainingSummary("x", 1, (8, 8), 1), "sd_v1")
    assert md["ss_optimizer"] == "lion_pytorch.lion_pytorch.Lion(weight_decay=0.01,betas=(0.95, 0.98))"
    assert md["ss_optimizer_args"] == "betas=(0.95, 0.98)"
    assert (md["ss_lr_scheduler"], md["ss_lr_scheduler_num_cycles"], md["ss_lr_scheduler_power"]) == (
        "cosine_with_restarts", "3", "2.0")
    assert TrainConfig.from_metadata(md) == cfg
    fell_back = kohya_metadata(config(optimizer="adamw8bit", optimizer_fallback=True),
                               TrainingSummary("x", 1, (8, 8), 1), "sd_v1", optimizer_name="adamw")
    assert fell_back["ss_optimizer"] == "torch.optim.adamw.AdamW(weight_decay=0.01)"


def test_check_optimizer_refuses_before_any_work_and_names_what_a_fallback_uses() -> None:
    """Train LoRA calls it while preparing the run, before the dataset is encoded."""
    cpu = torch.device("cpu")
    assert optimizers.check_optimizer(Optimisation(optimizer="lion", learning_rate=1e-4), cpu) == "lion"
    with pytest.raises(OptimizerError, match="CUDA GPU"):
        optimizers.check_optimizer(Optimisation(optimizer="adamw8bit"), cpu)
    assert optimizers.check_optimizer(Optimisation(optimizer="adamw8bit", optimizer_fallback=True), cpu) == "adamw"
    with pytest.raises(OptimizerError, match="no_such_module"):
        optimizers.check_optimizer(Optimisation(optimizer="custom", optimizer_class="no_such_module.Opt"), cpu)
