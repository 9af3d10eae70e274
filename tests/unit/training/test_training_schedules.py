"""Each learning-rate schedule, step by step, against diffusers' or transformers' LambdaLR of the same name after
warmup, and against hand-computed values where neither has it (REX, our warmup, the min_lr_ratio floor)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from diffusers.optimization import get_scheduler
from transformers.optimization import get_inverse_sqrt_schedule, get_wsd_schedule

from trainer.errors import ConfigError
from trainer.training.config import SCHEDULES, Optimisation
from trainer.training.schedules import lr_multiplier_at

STEPS, WARMUP = 40, 5


def _lambda_lr(make: Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler],
               lr: float = 1.0) -> list[float]:
    """The multiplier a torch LRScheduler gives each step 0..STEPS-1 (its lr / the initial lr)."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = make(optimizer)
    values = []
    for _ in range(STEPS):
        values.append(optimizer.param_groups[0]["lr"] / lr)
        optimizer.step()
        scheduler.step()
    return values


def _ours(**fields: object) -> list[float]:
    opt = Optimisation(steps=STEPS, warmup_steps=WARMUP, **fields)
    return [lr_multiplier_at(step, opt) for step in range(STEPS)]


@pytest.mark.parametrize(("schedule", "diffusers_name", "kwargs"), [
    ("constant", "constant_with_warmup", {}),
    ("linear", "linear", {}),
    ("cosine", "cosine", {}),
    ("cosine_with_restarts", "cosine_with_restarts", {"lr_cycles": 3}),
    ("polynomial", "polynomial", {"lr_power": 2.0}),
])
def test_after_warmup_each_schedule_equals_diffusers(schedule: str, diffusers_name: str, kwargs: dict) -> None:
    extra = {"num_cycles": kwargs["lr_cycles"]} if "lr_cycles" in kwargs else {}
    extra.update({"power": kwargs["lr_power"]} if "lr_power" in kwargs else {})
    reference = _lambda_lr(lambda o: get_scheduler(diffusers_name, o, num_warmup_steps=WARMUP,
                                                   num_training_steps=STEPS, **extra))
    ours = _ours(schedule=schedule, **kwargs)
    # diffusers' polynomial ends at lr_end = 1e-7 (an absolute lr; 1e-7 of lr 1.0), ours at min_lr_ratio = 0
    tolerance = 1e-6 if schedule == "polynomial" else 1e-12
    assert ours[WARMUP:] == pytest.approx(reference[WARMUP:], abs=tolerance)


def test_polynomial_floor_equals_diffusers_lr_end() -> None:
    lr = 1e-3
    reference = _lambda_lr(lambda o: get_scheduler("polynomial", o, num_warmup_steps=WARMUP, num_training_steps=STEPS,
                                                   power=0.5), lr=lr)
    # diffusers' lr_end defaults to 1e-7: with lr 1e-3 that is min_lr_ratio 1e-4
    ours = _ours(schedule="polynomial", lr_power=0.5, min_lr_ratio=1e-7 / lr, learning_rate=lr)
    assert ours[WARMUP:] == pytest.approx(reference[WARMUP:], rel=1e-9)


def test_inverse_sqrt_equals_transformers_with_the_warmup_as_timescale() -> None:
    reference = _lambda_lr(lambda o: get_inverse_sqrt_schedule(o, num_warmup_steps=WARMUP))
    assert _ours(schedule="inverse_sqrt")[WARMUP:] == pytest.approx(reference[WARMUP:], abs=1e-12)


def test_inverse_sqrt_without_warmup_is_one_over_sqrt_of_the_step_count() -> None:
    opt = Optimisation(steps=STEPS, schedule="inverse_sqrt")
    assert [lr_multiplier_at(s, opt) for s in (0, 3, 15, 35)] == pytest.approx([1.0, 0.5, 0.25, 1 / 6])


@pytest.mark.parametrize("decay_steps", [10, 0])
def test_warmup_stable_decay_equals_transformers_cosine_wsd(decay_steps: int) -> None:
    decay = decay_steps or round(0.2 * (STEPS - WARMUP))  # 0 = the last 20% of the steps after warmup
    reference = _lambda_lr(lambda o: get_wsd_schedule(o, num_warmup_steps=WARMUP, num_decay_steps=decay,
                                                      num_training_steps=STEPS, decay_type="cosine"))
    ours = _ours(schedule="warmup_stable_decay", decay_steps=decay_steps)
    assert ours[WARMUP:] == pytest.approx(reference[WARMUP:], abs=1e-12)
    assert ours[WARMUP:STEPS - decay] == [1.0] * (STEPS - decay - WARMUP)  # stable
    assert ours[-1] < ours[-2] < 1.0


def test_warmup_stable_decay_min_lr_ratio_equals_transformers() -> None:
    reference = _lambda_lr(lambda o: get_wsd_schedule(o, num_warmup_steps=WARMUP, num_decay_steps=12,
                                                      num_training_steps=STEPS, min_lr_ratio=0.1))
    ours = _ours(schedule="warmup_stable_decay", decay_steps=12, min_lr_ratio=0.1)
    assert ours[WARMUP:] == pytest.approx(reference[WARMUP:], abs=1e-12)


def test_cosine_min_lr_ratio_equals_transformers_cosine_with_min_lr() -> None:
    from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup
    reference = _lambda_lr(lambda o: get_cosine_with_min_lr_schedule_with_warmup(
        o, num_warmup_steps=WARMUP, num_training_steps=STEPS, min_lr_rate=0.25))
    assert _ours(schedule="cosine", min_lr_ratio=0.25)[WARMUP:] == pytest.approx(reference[WARMUP:], abs=1e-12)


def test_rex_by_hand() -> None:
    # REX: (1 - p) / (1 - p / 2) with p the share of the steps after warmup that have passed.
    opt = Optimisation(steps=14, warmup_steps=4, schedule="rex")
    for step, p in ((4, 0.0), (6, 0.2), (9, 0.5), (13, 0.9)):
        assert lr_multiplier_at(step, opt) == pytest.approx((1 - p) / (1 - p / 2))
    assert lr_multiplier_at(9, opt) == pytest.approx(2 / 3)


def test_min_lr_ratio_floor_by_hand() -> None:
    opt = Optimisation(steps=10, schedule="linear", min_lr_ratio=0.2)
    # linear at step 5 of 10: 0.5 of the way down from 1 to 0.2
    assert lr_multiplier_at(5, opt) == pytest.approx(0.2 + 0.8 * 0.5)
    assert lr_multiplier_at(9, opt) == pytest.approx(0.2 + 0.8 * 0.1)
    assert lr_multiplier_at(3, Optimisation(steps=10, min_lr_ratio=0.2)) == 1.0  # constant is untouched


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_every_schedule_warms_up_the_same_and_stays_in_range(schedule: str) -> None:
    values = _ours(schedule=schedule, lr_cycles=2)
    assert values[:WARMUP] == pytest.approx([(s + 1) / (WARMUP + 1) for s in range(WARMUP)])  # never 0
    assert values[WARMUP] == 1.0
    assert all(0 < v <= 1 for v in values)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_every_schedule_is_a_pure_function_of_the_step(schedule: str) -> None:
    opt = Optimisation(steps=STEPS, warmup_steps=WARMUP, schedule=schedule)
    forward = [lr_multiplier_at(s, opt) for s in range(STEPS)]
    backward = [lr_multiplier_at(s, opt) for s in reversed(range(STEPS))][::-1]
    assert forward == backward  # bitwise: a resumed run computes every step's lr alike


def test_cosine_with_restarts_restarts_at_the_peak() -> None:
    opt = Optimisation(steps=20, schedule="cosine_with_restarts", lr_cycles=4)
    values = [lr_multiplier_at(s, opt) for s in range(20)]
    assert [values[i] for i in (0, 5, 10, 15)] == [1.0] * 4
    assert values[4] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.8)))


@pytest.mark.parametrize(("fields", "message"), [
    ({"schedule": "warmup_stable_decay", "steps": 10, "warmup_steps": 4, "decay_steps": 7},
     "decay_steps = 7 is not allowed; expected at most the 6 steps after warmup"),
    ({"lr_cycles": 0}, "lr_cycles = 0"),
    ({"lr_power": 0.0}, "lr_power = 0.0"),
    ({"min_lr_ratio": 1.5}, "min_lr_ratio = 1.5"),
    ({"schedule": "onecycle"}, "schedule = 'onecycle' is not allowed"),
])
def test_bad_schedule_settings_name_the_field(fields: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        Optimisation(**fields)
