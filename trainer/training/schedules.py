"""Learning rate as a pure function of the step: linear warmup, then one of the decay shapes of SCHEDULES.

Nothing here keeps state, so a resumed run computes the same rate for every step as an uninterrupted one.
After warmup each shape matches the LambdaLR of `diffusers.optimization` / `transformers.optimization` of the
same name (tests/unit/training/test_training_schedules.py checks them step by step); the warmup differs on
purpose: it starts at 1 / (warmup + 1), not at 0, so no update is wasted at lr 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from .config import DEFAULT_DECAY_SHARE, Optimisation

# progress in [0, 1) over the steps after warmup -> decay factor in [0, 1] (1 = the peak learning rate).
_DECAYS: dict[str, Callable[[float, Optimisation], float]] = {
    "linear": lambda p, opt: 1.0 - p,
    "cosine": lambda p, opt: 0.5 * (1.0 + math.cos(math.pi * p)),
    # diffusers' cosine_with_hard_restarts: each of lr_cycles cycles restarts at the peak.
    "cosine_with_restarts": lambda p, opt: 0.5 * (1.0 + math.cos(math.pi * ((opt.lr_cycles * p) % 1.0))),
    "polynomial": lambda p, opt: (1.0 - p) ** opt.lr_power,
    # REX (Chen et al. 2022, "REX: Revisiting Budgeted Training with an Improved Schedule").
    "rex": lambda p, opt: (1.0 - p) / (1.0 - p / 2.0),
}


def wsd_decay_steps(opt: Optimisation) -> int:
    """Steps of warmup_stable_decay's final decay: decay_steps, or DEFAULT_DECAY_SHARE of the steps after warmup."""
    after_warmup = opt.steps - opt.warmup_steps
    return opt.decay_steps or max(1, round(DEFAULT_DECAY_SHARE * after_warmup))


def _decay_factor(step: int, opt: Optimisation) -> float:
    """The schedule's factor for a step at or after warmup, before the min_lr_ratio floor."""
    after = step - opt.warmup_steps  # 0 at the first step after warmup
    if opt.schedule == "inverse_sqrt":
        # transformers' inverse_sqrt with timescale = warmup_steps: 1 at the end of warmup, then sqrt(w / s);
        # without warmup the timescale is one step.
        timescale = max(opt.warmup_steps, 1)
        return 1.0 / math.sqrt((after + timescale) / timescale)
    if opt.schedule == "warmup_stable_decay":
        decay = wsd_decay_steps(opt)
        stable = opt.steps - opt.warmup_steps - decay
        if after < stable:
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * (after - stable) / decay))  # transformers' default cosine decay
    decay_shape = _DECAYS.get(opt.schedule)
    if decay_shape is None:
        raise ValueError(f"schedule = {opt.schedule!r} has no formula; expected one of constant, "
                         + ", ".join(sorted([*_DECAYS, "inverse_sqrt", "warmup_stable_decay"])) + ".")
    return decay_shape(after / (opt.steps - opt.warmup_steps), opt)


def lr_multiplier_at(step: int, opt: Optimisation) -> float:
    """Factor in (0, 1] applied to every base learning rate for update `step` (0-based, < opt.steps).

    Warmup follows nanoGPT, (step + 1) / (warmup + 1), so the first update is never taken at lr 0.
    Decays run over the remaining steps and stop one step short of their end, so the last update still
    counts; they fall to min_lr_ratio, not to 0: factor = min_lr_ratio + (1 - min_lr_ratio) x decay.
    """
    if not 0 <= step < opt.steps:
        raise ValueError(f"step = {step} is outside the run; expected 0 <= step < steps ({opt.steps}).")
    if step < opt.warmup_steps:
        return (step + 1) / (opt.warmup_steps + 1)
    if opt.schedule == "constant":
        return 1.0
    return opt.min_lr_ratio + (1.0 - opt.min_lr_ratio) * _decay_factor(step, opt)
