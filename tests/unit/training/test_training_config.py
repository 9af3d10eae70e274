"""Config validation messages and declared ranges, metadata round trip (and from version 1), help text;
learning-rate schedules."""

from __future__ import annotations

import dataclasses
import math

import pytest

from trainer.training.config import (
    CONFIG_VERSION,
    Checkpointing,
    LoraShape,
    Optimisation,
    RunStart,
    Sampling,
    TrainConfig,
)
from trainer.training.schedules import lr_multiplier_at
from trainer.training.settings import config_field, field_help, field_type

SECTIONS = (LoraShape, Optimisation, Checkpointing, Sampling, RunStart)


def learning_rate_at(step: int, opt: Optimisation, base_lr: float | None = None) -> float:
    """The learning rate of update `step` as the loop applies it: a base rate times the schedule's factor."""
    return (opt.learning_rate if base_lr is None else base_lr) * lr_multiplier_at(step, opt)


@pytest.mark.parametrize(("cls", "kwargs", "fragment"), [
    (Optimisation, {"steps": 0}, "steps = 0 is not allowed; expected an integer between 1 and 1000000"),
    (Optimisation, {"learning_rate": 0.0}, "learning_rate = 0.0 is not allowed; expected a number greater than 0.0"),
    (Optimisation, {"learning_rate": float("nan")}, "learning_rate = nan is not allowed; expected a finite number"),
    (Optimisation, {"learning_rate": "1e-4"}, "learning_rate = '1e-4' is not allowed; expected a finite number"),
    (Optimisation, {"batch_size": 0}, "batch_size = 0"),
    (Optimisation, {"batch_size": 257}, "batch_size = 257 is not allowed; expected an integer between 1 and 256"),
    (Optimisation, {"grad_accumulation": 0}, "grad_accumulation = 0"),
    (Optimisation, {"max_grad_norm": -1.0}, "max_grad_norm = -1.0 is not allowed; expected a number at least 0.0 "
                                            "and at most 1000.0"),
    (Optimisation, {"schedule": "step"},
     "schedule = 'step' is not allowed; expected one of 'constant', 'linear', 'cosine'"),
    (Optimisation, {"steps": 10, "warmup_steps": 10}, "warmup_steps = 10"),
    (Optimisation, {"optimizer": "sgd"}, "optimizer = 'sgd'"),
    (Optimisation, {"min_snr_gamma": -1.0}, "min_snr_gamma = -1.0"),
    (Optimisation, {"min_snr_gamma": None}, "min_snr_gamma = None is not allowed; expected a finite number"),
    (Optimisation, {"mixed_precision": "fp8"}, "mixed_precision = 'fp8'"),
    (Optimisation, {"seed": -1}, "seed = -1"),
    (Optimisation, {"gradient_checkpointing": 1}, "gradient_checkpointing = 1 is not allowed; expected True or False"),
    (LoraShape, {"rank": 0}, "rank = 0 is not allowed; expected an integer between 1 and 1024"),
    (LoraShape, {"rank": True}, "rank = True is not allowed; expected an integer"),
    (LoraShape, {"alpha": 0.0}, "alpha = 0.0 is not allowed; expected a number at least 0.01 and at most 1024.0"),
    (LoraShape, {"dropout": 1.0}, "dropout = 1.0 is not allowed; expected a number at least 0.0 and at most 0.9"),
    (LoraShape, {"targets": "all"}, "targets = 'all' is not allowed; expected one of 'attention', 'attention_ff'"),
    (LoraShape, {"text_encoder_lr": -1e-4}, "text_encoder_lr = -0.0001"),
    (Checkpointing, {"every_n_steps": -1}, "every_n_steps = -1 is not allowed; expected an integer between 0"),
    (Checkpointing, {"keep_last": -1}, "keep_last = -1"),
    (Sampling, {"steps": 0}, "steps = 0"),
    (Sampling, {"sampler": None}, "sampler = None is not allowed; expected a text"),
    (RunStart, {"resume": "yes"}, "resume = 'yes' is not allowed; expected True or False"),
])
def test_invalid_values_name_field_value_and_allowed(cls: type, kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError) as error:
        cls(**kwargs)
    assert fragment in str(error.value)


def test_train_config_rejects_wrong_section_type() -> None:
    with pytest.raises(ValueError, match="optimisation = .* expected an instance of Optimisation"):
        TrainConfig(optimisation=LoraShape())  # type: ignore[arg-type]


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        LoraShape().rank = 8  # type: ignore[misc]


def test_metadata_round_trip() -> None:
    config = TrainConfig(
        lora=LoraShape(rank=8, alpha=4.0, dropout=0.1, targets="attention_ff", train_text_encoder=True,
                       text_encoder_lr=5e-5),
        optimisation=Optimisation(steps=123, learning_rate=3e-4, schedule="cosine", warmup_steps=10,
                                  min_snr_gamma=5.0, noise_offset=0.05, mixed_precision="bf16", seed=99),
        checkpointing=Checkpointing(every_n_steps=50, keep_last=3))
    metadata = config.to_metadata()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    assert metadata["loralab.lora.rank"] == "8"
    assert TrainConfig.from_metadata(metadata) == config
    assert TrainConfig.from_metadata({**metadata, "ss_network_dim": "8", "loralab.lora.future_field": "1"}) == config


def test_from_metadata_refuses_foreign_or_newer() -> None:
    with pytest.raises(ValueError, match="not written by LoRA Lab"):
        TrainConfig.from_metadata({"ss_network_dim": "8"})
    with pytest.raises(ValueError, match="newer than this LoRA Lab"):
        TrainConfig.from_metadata({"loralab.config_version": "999"})


def test_every_field_has_help() -> None:
    for cls in SECTIONS:
        for f in dataclasses.fields(cls):
            assert field_help(cls, f.name), f"{cls.__name__}.{f.name} has no help text"


def _fields() -> list[tuple[type, str]]:
    return [(cls, f.name) for cls in SECTIONS for f in dataclasses.fields(cls)]


@pytest.mark.parametrize(("cls", "name"), _fields(), ids=lambda v: v if isinstance(v, str) else v.__name__)
def test_declared_range_is_what_validation_accepts(cls: type, name: str) -> None:
    """A widget shows the declared min and max: both ends are accepted (min unless exclusive), just past is not."""
    f = config_field(cls, name)
    kind, ui = field_type(cls, name), f.metadata.get("ui", {})
    assert kind in (int, float, bool, str)
    assert f.default is not dataclasses.MISSING and isinstance(f.default, kind)
    if kind in (int, float):
        assert "min" in ui and "max" in ui, f"{name} declares no range"
        assert ui["min"] <= f.default <= ui["max"]
    if "choices" in f.metadata:
        assert f.default in f.metadata["choices"]
    extra = {"warmup_steps": {"steps": ui.get("max", 0) + 1}} if cls is Optimisation else {}
    context = extra.get(name, {})
    if kind in (int, float):
        cls(**{name: ui["max"], **context})
        with pytest.raises(ValueError, match=f"{name} = "):
            cls(**{name: ui["max"] + (1 if kind is int else ui.get("step", 0.01)), **context})
        if f.metadata.get("exclusive_min"):
            with pytest.raises(ValueError, match=f"{name} = "):
                cls(**{name: ui["min"], **context})
        else:
            cls(**{name: ui["min"], **context})
            with pytest.raises(ValueError, match=f"{name} = "):
                cls(**{name: ui["min"] - (1 if kind is int else ui.get("step", 0.01)), **context})


def test_off_has_one_encoding() -> None:
    """0 means off (min_snr_gamma) and the UNet's rate (text_encoder_lr), as on the node's widget; None is refused."""
    assert Optimisation().min_snr_gamma == 0.0 and LoraShape().text_encoder_lr == 0.0
    assert Optimisation(min_snr_gamma=0.0).min_snr_gamma == 0.0


def test_mixed_precision_default_is_the_one_the_node_shows() -> None:
    # bf16 on a GPU, as ComfyUI users train; the CPU runs fp32 whatever this says.
    assert Optimisation().mixed_precision == "bf16"


def test_version_1_metadata_with_null_for_off_still_loads() -> None:
    """Files and resume states written before version 2 said null where 0 now says off / same rate."""
    metadata = TrainConfig().to_metadata()
    assert metadata["loralab.config_version"] == str(CONFIG_VERSION) == "2"
    old = {**metadata, "loralab.config_version": "1", "loralab.optimisation.min_snr_gamma": "null",
           "loralab.lora.text_encoder_lr": "null"}
    assert TrainConfig.from_metadata(old) == TrainConfig()
    with pytest.raises(ValueError, match="(text_encoder_lr|min_snr_gamma) = None"):
        TrainConfig.from_metadata({**old, "loralab.config_version": "2"})


def test_constant_schedule_with_warmup() -> None:
    opt = Optimisation(steps=10, learning_rate=1.0, warmup_steps=3)
    assert [learning_rate_at(s, opt) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert learning_rate_at(9, opt) == 1.0


def test_linear_schedule_ends_one_step_above_zero() -> None:
    opt = Optimisation(steps=4, learning_rate=1.0, schedule="linear")
    assert [learning_rate_at(s, opt, base_lr=2.0) for s in range(4)] == [2.0, 1.5, 1.0, 0.5]


def test_cosine_schedule() -> None:
    opt = Optimisation(steps=12, learning_rate=1.0, schedule="cosine", warmup_steps=2)
    assert lr_multiplier_at(0, opt) == pytest.approx(1 / 3)
    assert lr_multiplier_at(2, opt) == 1.0
    assert lr_multiplier_at(7, opt) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    values = [lr_multiplier_at(s, opt) for s in range(2, 12)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False)) and values[-1] > 0
    assert learning_rate_at(2, opt, base_lr=0.1) == pytest.approx(0.1)


def test_schedule_rejects_steps_outside_run() -> None:
    with pytest.raises(ValueError, match="step = 4 is outside the run"):
        lr_multiplier_at(4, Optimisation(steps=4))
