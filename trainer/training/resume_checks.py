"""Can this run continue a saved one? The checks that compare a resume state with the current run's settings,
LoRA layers and optimizer, each raising ResumeStateError that names the file and the differing setting."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import TYPE_CHECKING

import torch

from ..errors import ResumeStateError
from .config import DataOptions, LoraShape, TrainConfig
from .trainable_lora import LoraAdapterSet

if TYPE_CHECKING:
    from .resume_state import TrainState

logger = logging.getLogger(__name__)


# LoraShape fields a run may change on resume; every other one (rank, alpha, targets, text encoder, and
# any field added later) decides the LoRA's tensors, so a state trained with another value cannot continue.
_FREE_LORA_FIELDS = frozenset({"dropout", "text_encoder_lr"})
# Optimisation fields that decide what the saved optimizer statistics mean, and how they are grouped (LoRA+ puts the
# up matrices in param groups of their own): a run cannot continue with others.
_OPTIMIZER_FIELDS = ("optimizer", "optimizer_class", "optimizer_args", "loraplus_lr_ratio")
# Optimisation fields that decide which timesteps are drawn: the continued run would train another objective.
_TIMESTEP_FIELDS = ("timestep_sampling", "min_timestep", "max_timestep", "sigmoid_scale", "logit_mean", "logit_std",
                    "discrete_flow_shift")
# Optimisation fields that decide the loss and the noise of each step: the continued run would train another objective.
_OBJECTIVE_FIELDS = ("loss_type", "huber_schedule", "huber_c", "min_snr_gamma", "debiased_estimation", "noise_offset",
                     "noise_offset_random_strength", "multires_noise_iterations", "multires_noise_discount",
                     "ip_noise_gamma", "ip_noise_gamma_random_strength", "zero_terminal_snr")
# Ema fields that decide the saved averages; for_samples and for_final only choose which weights are used.
# Named in messages by their input names (ema, ema_decay, ema_every).
_EMA_FIELDS = {"enabled": "ema", "decay": "ema_decay", "every_n_steps": "ema_every"}


def state_name(state: TrainState) -> str:
    """How messages name a state: "The resume state '<file>'", or without a file for a live snapshot."""
    return f"The resume state '{state.source}'" if state.source else "The resume state"


def _shape_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(LoraShape) if f.name not in _FREE_LORA_FIELDS]


def check_resumable(saved: TrainConfig, current: TrainConfig, saved_step: int,
                    path: str | os.PathLike[str] | None = None,
                    world_sizes: tuple[int, int] | None = None) -> None:
    """Raise ResumeStateError if `current` cannot continue a run saved with `saved` at `saved_step`.

    `world_sizes` (saved, now): the processes that trained the state and that continue it (torchrun). The state
    itself does not depend on them; the batch does: the warning about changed settings compares the global
    batch, batch_size x processes (left out when they are not known yet).
    """
    where = f"The resume state '{os.fspath(path)}'" if path is not None else "The resume state"
    source = os.fspath(path) if path is not None else None
    problems = [f"{name}: saved {getattr(saved.lora, name)!r}, now {getattr(current.lora, name)!r}"
                for name in _shape_fields() if getattr(saved.lora, name) != getattr(current.lora, name)]
    if problems:
        raise ResumeStateError(f"{where} was trained with a different LoRA shape (" + "; ".join(problems)
                               + "). Use the same settings as the saved run, or turn resume off to start a new "
                               "run.", path=source)
    if current.optimisation.steps < saved_step:
        raise ResumeStateError(f"{where} is at step {saved_step}, but steps = {current.optimisation.steps}. "
                               f"Set steps to {saved_step} or more to continue.", path=source)
    other_optimizer = [f"{name}: saved {getattr(saved.optimisation, name)!r}, "
                       f"now {getattr(current.optimisation, name)!r}" for name in _OPTIMIZER_FIELDS
                       if getattr(saved.optimisation, name) != getattr(current.optimisation, name)]
    if other_optimizer:
        raise ResumeStateError(f"{where} was trained with another optimizer (" + "; ".join(other_optimizer)
                               + "): its statistics do not fit this one. Set the optimizer settings back, or turn "
                               "resume off to start a new run.", path=source)
    other_math = [f"{name}: saved {getattr(saved.optimisation, name)!r}, now {getattr(current.optimisation, name)!r}"
                  for name in _TIMESTEP_FIELDS
                  if getattr(saved.optimisation, name) != getattr(current.optimisation, name)]
    other_math += [f"{shown}: saved {getattr(saved.ema, name)!r}, now {getattr(current.ema, name)!r}"
                   for name, shown in _EMA_FIELDS.items() if getattr(saved.ema, name) != getattr(current.ema, name)]
    if other_math:
        raise ResumeStateError(f"{where} was trained with other timestep or EMA settings (" + "; ".join(other_math)
                               + "): continuing would not be the same run. Set them back, or turn resume off to "
                               "start a new run.", path=source)
    other_objective = [f"{name}: saved {getattr(saved.optimisation, name)!r}, "
                       f"now {getattr(current.optimisation, name)!r}" for name in _OBJECTIVE_FIELDS
                       if getattr(saved.optimisation, name) != getattr(current.optimisation, name)]
    if other_objective:
        raise ResumeStateError(f"{where} was trained with other loss or noise settings ("
                               + "; ".join(other_objective) + "): continuing would not be the same run. Set them "
                               "back, or turn resume off to start a new run.", path=source)
    # Every data option (captions, masks, class images) decides what the steps train on and what they draw.
    other_data = [f"{f.name}: saved {getattr(saved.data, f.name)!r}, now {getattr(current.data, f.name)!r}"
                  for f in dataclasses.fields(DataOptions)
                  if getattr(saved.data, f.name) != getattr(current.data, f.name)]
    if other_data:
        raise ResumeStateError(f"{where} was trained with other dataset options (" + "; ".join(other_data)
                               + "): continuing would not be the same run. Set them back on the LoRA Dataset node, "
                               "or turn resume off to start a new run.", path=source)
    changed = [name for name, value in vars(current.optimisation).items()
               if name != "batch_size" and getattr(saved.optimisation, name) != value]
    if world_sizes is not None:
        (saved_world, world), saved_batch = world_sizes, saved.optimisation.batch_size
        if saved_batch * saved_world != current.optimisation.batch_size * world:
            changed.append(f"batch_size x processes ({saved_batch} x {saved_world} -> "
                           f"{current.optimisation.batch_size} x {world})")
    if changed:
        # Allowed (e.g. more steps), but the continued run no longer equals an uninterrupted one.
        logger.warning("resuming with changed optimisation settings %s; the result will differ from an "
                       "uninterrupted run", changed)


def _layer_fit_problem(key: str, saved: torch.Tensor, needed: torch.Size) -> str:
    if key.endswith(".lora_down.weight") and saved.dim() == len(needed) and saved.shape[1:] == needed[1:]:
        return f"rank {saved.shape[0]} in the file, this run's rank is {needed[0]}"
    if key.endswith(".lora_up.weight") and saved.dim() == len(needed) and saved.shape[0] == needed[0]:
        return f"rank {saved.shape[1]} in the file, this run's rank is {needed[1]}"
    return f"shape {tuple(saved.shape)} in the file, this layer needs {tuple(needed)} (another model?)"


def check_layers(state: TrainState, adapters: LoraAdapterSet) -> None:
    """Raise ResumeStateError unless the state's LoRA tensors have exactly the adapters' keys and shapes."""
    needed = adapters.state_shapes()
    missing, unexpected = sorted(needed.keys() - state.lora.keys()), sorted(state.lora.keys() - needed.keys())
    if missing or unexpected:
        parts = []
        if unexpected:
            parts.append(f"holds {len(unexpected)} LoRA tensors this run does not train (e.g. '{unexpected[0]}')")
        if missing:
            parts.append(f"lacks {len(missing)} that this run trains (e.g. '{missing[0]}')")
        raise ResumeStateError(f"{state_name(state)} {' and '.join(parts)}: it was saved by a run on another model, or "
                               "with other targets or text-encoder setting. Resume with the same model and settings, "
                               "or turn resume off to start a new run.", path=state.source)
    for key, shape in needed.items():
        if state.lora[key].shape != shape:
            raise ResumeStateError(f"{state_name(state)} does not fit this run's LoRA: '{key}' has "
                                   f"{_layer_fit_problem(key, state.lora[key], shape)}. Resume with the same model "
                                   "and settings, or turn resume off to start a new run.", path=state.source)


def check_optimizer(state: TrainState, optimizer_name: str) -> None:
    """Raise ResumeStateError if the state's optimizer statistics are of another optimizer than this run's."""
    if state.optimizer_name != optimizer_name:
        raise ResumeStateError(
            f"{state_name(state)} holds {state.optimizer_name} optimizer state, but this run uses {optimizer_name} "
            "(with optimizer_fallback on, an optimizer whose package or GPU is missing is replaced by adamw). "
            "Resume where the saved run's optimizer is available, or turn resume off to start a new run.",
            path=state.source)
