"""Learning rate as a pure function of the step: linear warmup, then constant, linear or cosine decay."""

from __future__ import annotations

import math

from .config import Optimisation


def lr_multiplier_at(step: int, opt: Optimisation) -> float:
    """Factor in (0, 1] applied to every base learning rate for update `step` (0-based, < opt.steps).

    Warmup follows nanoGPT, (step + 1) / (warmup + 1), so the first update is never taken at lr 0.
    Decay runs over the remaining steps and stops one step short of 0, so the last update still counts.
    """
    if not 0 <= step < opt.steps:
        raise ValueError(f"step = {step} is outside the run; expected 0 <= step < steps ({opt.steps}).")
    if step < opt.warmup_steps:
        return (step + 1) / (opt.warmup_steps + 1)
    if opt.schedule == "constant":
        return 1.0
    decay_steps = opt.steps - opt.warmup_steps
    progress = (step - opt.warmup_steps) / decay_steps  # 0 at the first decay step, < 1 at the last
    if opt.schedule == "linear":
        return 1.0 - progress
    if opt.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"schedule = {opt.schedule!r} is not allowed; expected constant, linear or cosine.")

