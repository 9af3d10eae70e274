"""Resumable training state in one .safetensors file (tensors + JSON in the header), never pickle.

Layout: `lora::<key>` LoRA tensors, `optim::<param name>::<stat>` optimizer tensors (AdamW exp_avg,
exp_avg_sq, step), `rng::generator` the torch.Generator state (uint8), `history::loss` (float64);
header metadata holds the step, smoothed loss, optimizer scalars/param groups, GradScaler state and
the TrainConfig (`TrainConfig.to_metadata`). Keys use `::` so no LoRA loader mistakes the file for a LoRA.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from .config import TrainConfig
from ..errors import LoraLabError
from ..safetensors_io import read_safetensors, write_safetensors_atomic

logger = logging.getLogger(__name__)

STATE_FORMAT = "loralab.resume_state"
STATE_VERSION = 1
_META = "loralab.state."
# Fields that decide the LoRA's tensors: a state trained with other values cannot continue.
_SHAPE_FIELDS = ("rank", "alpha", "targets", "train_text_encoder")


class ResumeStateError(LoraLabError, ValueError):
    """A resume-state file cannot continue this run (different LoRA shape, or not a state file)."""


@dataclass(frozen=True)
class TrainState:
    """Everything needed to continue a run exactly where it stopped (after `step` updates)."""

    step: int
    config: TrainConfig
    lora: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]  # torch Optimizer.state_dict(): params indexed as in param_names
    param_names: list[str]  # optimizer parameter index -> adapter parameter name
    generator_state: torch.Tensor  # torch.Generator.get_state(), uint8
    loss_history: list[float]
    smoothed_loss: float | None
    optimizer_name: str
    scaler_state: dict[str, Any] = field(default_factory=dict)


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    return value


def _optimizer_to_file(state: TrainState) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, stats in state.optimizer_state["state"].items():
        name = state.param_names[int(index)]
        for stat, value in stats.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim::{name}::{stat}"] = value
            else:
                scalars.setdefault(name, {})[stat] = _jsonable(value)
    groups = []
    for group in state.optimizer_state["param_groups"]:
        entry = {k: _jsonable(v) for k, v in group.items() if k != "params"}
        entry["params"] = [state.param_names[i] for i in group["params"]]
        groups.append(entry)
    return tensors, {"scalars": scalars, "param_groups": groups}


def save_state(path: str | os.PathLike[str], state: TrainState) -> None:
    """Write `state` atomically (temp file + rename) to `path` (a .safetensors file)."""
    tensors = {f"lora::{k}": v for k, v in state.lora.items()}
    optim_tensors, optim_json = _optimizer_to_file(state)
    tensors.update(optim_tensors)
    tensors["rng::generator"] = state.generator_state
    tensors["history::loss"] = torch.tensor(state.loss_history, dtype=torch.float64)
    metadata = state.config.to_metadata()
    metadata.update({
        f"{_META}format": STATE_FORMAT,
        f"{_META}version": str(STATE_VERSION),
        f"{_META}step": str(state.step),
        f"{_META}smoothed_loss": json.dumps(state.smoothed_loss),
        f"{_META}optimizer_name": state.optimizer_name,
        f"{_META}param_names": json.dumps(state.param_names),
        f"{_META}optimizer": json.dumps(optim_json),
        f"{_META}scaler": json.dumps(state.scaler_state),
    })
    write_safetensors_atomic(path, tensors, metadata)
    logger.info("saved resume state at step %d to %s", state.step, path)


def _optimizer_from_file(tensors: dict[str, torch.Tensor], optim_json: dict[str, Any],
                         param_names: list[str]) -> dict[str, Any]:
    index = {name: i for i, name in enumerate(param_names)}
    per_param: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim::"):
            name, _, stat = key[len("optim::"):].rpartition("::")
            per_param.setdefault(index[name], {})[stat] = value
    for name, stats in optim_json["scalars"].items():
        per_param.setdefault(index[name], {}).update(stats)
    groups = []
    for group in optim_json["param_groups"]:
        entry = dict(group)
        if isinstance(entry.get("betas"), list):
            entry["betas"] = tuple(entry["betas"])
        entry["params"] = [index[name] for name in group["params"]]
        groups.append(entry)
    return {"state": per_param, "param_groups": groups}


def check_resumable(saved: TrainConfig, current: TrainConfig, saved_step: int) -> None:
    """Raise ResumeStateError if `current` cannot continue a run saved with `saved` at `saved_step`."""
    problems = [f"{name}: saved {getattr(saved.lora, name)!r}, now {getattr(current.lora, name)!r}"
                for name in _SHAPE_FIELDS if getattr(saved.lora, name) != getattr(current.lora, name)]
    if problems:
        raise ResumeStateError("The resume state was trained with a different LoRA shape (" + "; ".join(problems)
                               + "). Use the same settings as the saved run, or start a new run.")
    if current.optimisation.steps < saved_step:
        raise ResumeStateError(f"The resume state is at step {saved_step}, but steps = "
                               f"{current.optimisation.steps}. Set steps above {saved_step} to continue.")
    changed = [name for name, value in vars(current.optimisation).items()
               if getattr(saved.optimisation, name) != value]
    if changed:
        # Allowed (e.g. more steps), but the continued run no longer equals an uninterrupted one.
        logger.warning("resuming with changed optimisation settings %s; the result will differ from an "
                       "uninterrupted run", changed)


def load_state(path: str | os.PathLike[str], expected_config: TrainConfig | None = None) -> TrainState:
    """Read a state written by save_state; with expected_config, also check the run can continue."""
    tensors, metadata = read_safetensors(path)
    if metadata.get(f"{_META}format") != STATE_FORMAT:
        raise ResumeStateError(f"'{path}' is not a LoRA Lab resume state (it may be a LoRA file); "
                               "select the matching *_state.safetensors file.")
    version = int(metadata[f"{_META}version"])
    if version > STATE_VERSION:
        raise ResumeStateError(f"'{path}' was written by a newer LoRA Lab (state version {version}); update LoRA Lab.")
    config = TrainConfig.from_metadata(metadata)
    step = int(metadata[f"{_META}step"])
    if expected_config is not None:
        check_resumable(config, expected_config, step)
    param_names = json.loads(metadata[f"{_META}param_names"])
    history = tensors["history::loss"].tolist()
    if len(history) != step:
        raise ResumeStateError(f"'{path}' is damaged: step {step} but {len(history)} loss values.")
    return TrainState(
        step=step,
        config=config,
        lora={k[len("lora::"):]: v for k, v in tensors.items() if k.startswith("lora::")},
        optimizer_state=_optimizer_from_file(tensors, json.loads(metadata[f"{_META}optimizer"]), param_names),
        param_names=param_names,
        generator_state=tensors["rng::generator"],
        loss_history=history,
        smoothed_loss=json.loads(metadata[f"{_META}smoothed_loss"]),
        optimizer_name=metadata[f"{_META}optimizer_name"],
        scaler_state=json.loads(metadata[f"{_META}scaler"]),
    )


def optimizer_state_for(state: TrainState, group_names: list[list[str]]) -> dict[str, Any]:
    """The saved optimizer state laid out for an optimizer whose param groups hold `group_names`.

    torch's Optimizer.load_state_dict pairs saved and current parameters by position, so the saved
    statistics are re-indexed by parameter name to the current positions.
    """
    saved = state.optimizer_state
    saved_groups = [[state.param_names[i] for i in g["params"]] for g in saved["param_groups"]]
    if [sorted(g) for g in saved_groups] != [sorted(g) for g in group_names]:
        differing = sorted(set(state.param_names) ^ {n for g in group_names for n in g})
        raise ResumeStateError(f"The resume state's LoRA layers differ from this run's ({differing[:3]}); "
                               "resume with the same model, targets and text-encoder setting.")
    stats_by_name = {state.param_names[int(i)]: stats for i, stats in saved["state"].items()}
    new_state: dict[int, dict[str, Any]] = {}
    new_groups = []
    position = 0
    for saved_group, names in zip(saved["param_groups"], group_names, strict=True):
        indices = []
        for name in names:
            if name in stats_by_name:
                new_state[position] = stats_by_name[name]
            indices.append(position)
            position += 1
        new_groups.append({**saved_group, "params": indices})
    return {"state": new_state, "param_groups": new_groups}
