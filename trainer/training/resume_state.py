"""Resumable training state in one .safetensors file (tensors + JSON in the header), never pickle.

Layout: `lora::<key>` LoRA tensors, `optim::<param name>::<stat>` optimizer tensors (whatever tensors the
optimizer keeps: AdamW exp_avg, exp_avg_sq, step), `rng::generator` the torch.Generator state (uint8),
`history::loss` (float64), `ema::<param name>` the EMA of the weights (fp32; only with ema on, and then the
state is version 2, so an older LoRA Lab refuses it rather than dropping the EMA); header metadata holds the
step, smoothed loss, optimizer scalars/param groups, GradScaler state, the base model when the caller names it,
the number of training processes, and the TrainConfig (`TrainConfig.to_metadata`).
Keys use `::` so no LoRA loader mistakes the file for a LoRA.

Reading trusts nothing: a damaged, partial or foreign file, or one saved by a run with other settings,
raises ResumeStateError naming the file and the problem, never a raw KeyError or JSONDecodeError.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import LoraFileError, LoraWriteError, ResumeStateError, ResumeStateWriteError
from ..safetensors_io import read_metadata, read_safetensors, write_safetensors_atomic
from .config import OPTIMIZERS, TrainConfig
from .resume_checks import check_resumable, state_name

logger = logging.getLogger(__name__)

STATE_FORMAT = "loralab.resume_state"
STATE_VERSION = 2
_VERSION_WITHOUT_EMA = 1  # what a state without EMA is written as: LoRA Lab versions before EMA read it too
_META = "loralab.state."
# Optimizer statistics shaped like their parameter (AdamW, Lion, Prodigy, SGD momentum, schedule-free z); others
# (step, 8-bit blocks, Adafactor's factored rows and columns, Prodigy's flattened s and p0) are not checked.
_PARAM_SHAPED_STATS = ("exp_avg", "exp_avg_sq", "momentum_buffer", "z")
_NEW_RUN = "The run's LoRA checkpoints are not affected; turn resume off to start a new run."


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
    source: str | None = None  # the file it was loaded from (for messages); None for a live snapshot
    ema: dict[str, torch.Tensor] = field(default_factory=dict)  # the EMA of the weights by parameter name, if on
    world_size: int = 1  # the processes that trained it (torchrun): its global batch is batch_size x world_size


# --- writing -----------------------------------------------------------------------------------------------

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


def _previous_state_note(path: str) -> str:
    """What the user still has at `path` after a failed save (the write left it unchanged)."""
    if not os.path.exists(path):
        return "There is no earlier resume state, so this run cannot be resumed until a save succeeds."
    try:
        previous_step = read_metadata(path).get(f"{_META}step")
    except LoraFileError:
        previous_step = None
    if previous_step is None:
        return f"'{path}' still holds the earlier file, unchanged."
    return (f"'{path}' still holds the resume state of step {previous_step}, unchanged: resuming continues "
            f"from step {previous_step}.")


def save_state(path: str | os.PathLike[str], state: TrainState, base_model: str | None = None) -> None:
    """Write `state` atomically (temp file + rename) to `path` (a .safetensors file).

    `base_model` (e.g. kohya's ss_base_model_version, "sdxl_base_v1-0") is recorded so that load_state can
    refuse to continue the run on another model family. Raises ResumeStateWriteError (a LoraWriteError)
    when the file cannot be written; the previous file at `path` is then left as it was.
    """
    path = os.fspath(path)
    tensors = {f"lora::{k}": v for k, v in state.lora.items()}
    optim_tensors, optim_json = _optimizer_to_file(state)
    tensors.update(optim_tensors)
    tensors["rng::generator"] = state.generator_state
    tensors["history::loss"] = torch.tensor(state.loss_history, dtype=torch.float64)
    tensors.update({f"ema::{k}": v for k, v in state.ema.items()})
    metadata = state.config.to_metadata()
    metadata.update({
        f"{_META}format": STATE_FORMAT,
        f"{_META}version": str(STATE_VERSION if state.ema else _VERSION_WITHOUT_EMA),
        f"{_META}step": str(state.step),
        f"{_META}smoothed_loss": json.dumps(state.smoothed_loss),
        f"{_META}optimizer_name": state.optimizer_name,
        f"{_META}param_names": json.dumps(state.param_names),
        f"{_META}optimizer": json.dumps(optim_json),
        f"{_META}scaler": json.dumps(state.scaler_state),
        f"{_META}world_size": str(state.world_size),
    })
    if base_model:
        metadata[f"{_META}base_model"] = base_model
    try:
        write_safetensors_atomic(path, tensors, metadata)
    except LoraWriteError as e:
        raise ResumeStateWriteError(
            f"{e} The resume state of step {state.step} was not saved. {_previous_state_note(path)} "
            "LoRA files saved before this point are complete and load on their own; only resuming is affected.",
            path=path) from e
    logger.info("saved resume state at step %d to %s", state.step, path)


# --- reading: every field checked, every failure in the user's terms -------------------------------------

def _damaged(path: str, what: str) -> ResumeStateError:
    return ResumeStateError(f"Cannot resume from '{path}': the file is damaged ({what}). {_NEW_RUN}", path=path)


def _meta(metadata: dict[str, str], key: str, path: str) -> str:
    """The raw `loralab.state.<key>` header value; a missing one means a damaged or partial file."""
    full_key = f"{_META}{key}"
    if full_key not in metadata:
        raise _damaged(path, f"it lacks the header entry {full_key}")
    return metadata[full_key]


def _meta_json(metadata: dict[str, str], key: str, path: str, kind: type | tuple[type, ...], described: str) -> Any:
    """The header value parsed as JSON and checked to be an instance of `kind` (bool never counts as a number)."""
    raw = _meta(metadata, key, path)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        raise _damaged(path, f"{_META}{key} is not valid JSON: {raw[:60]!r}") from e
    if not isinstance(value, kind) or isinstance(value, bool):
        raise _damaged(path, f"{_META}{key} should be {described}, it is {raw[:60]!r}")
    return value


def _meta_int(metadata: dict[str, str], key: str, path: str) -> int:
    raw = _meta(metadata, key, path)
    try:
        value = int(raw)
    except ValueError as e:
        raise _damaged(path, f"{_META}{key} should be a whole number, it is {raw[:60]!r}") from e
    if value < 0:
        raise _damaged(path, f"{_META}{key} is negative ({value})")
    return value


def _tensor(tensors: dict[str, torch.Tensor], key: str, path: str) -> torch.Tensor:
    if key not in tensors:
        raise _damaged(path, f"it lacks the tensor {key}")
    return tensors[key]


def _read(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        return read_safetensors(path)
    except LoraFileError as e:
        reason = str(e)
        if reason.startswith(f"'{path}' "):
            reason = "the file " + reason[len(f"'{path}' "):]
        raise ResumeStateError(f"Cannot resume from '{path}': {reason.rstrip('.')}. {_NEW_RUN}", path=path) from e


def _refuse_foreign(path: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    found = metadata.get(f"{_META}format")
    if found == STATE_FORMAT:
        return
    if found is None and any(k.startswith(_META) for k in metadata):
        raise _damaged(path, f"it lacks the header entry {_META}format")
    if any(not k.startswith("lora::") and k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha"))
           for k in tensors) or any(k.startswith(("ss_", "modelspec.")) for k in metadata):
        what = "it is a LoRA file"
    elif found is not None:
        what = f"its format is {found!r}"
    else:
        what = "it holds no LoRA Lab resume metadata"
    raise ResumeStateError(f"'{path}' is not a LoRA Lab resume state ({what}). Select the run's "
                           "*_state.safetensors file, or turn resume off to start a new run.", path=path)


def _param_names(metadata: dict[str, str], tensors: dict[str, torch.Tensor], path: str) -> list[str]:
    names = _meta_json(metadata, "param_names", path, list, "a list of parameter names")
    if not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise _damaged(path, f"{_META}param_names is not a list of distinct names")
    missing = [n for n in names if f"lora::{n}" not in tensors]
    if missing:
        raise _damaged(path, f"it lacks the LoRA tensor of {len(missing)} trained parameters, "
                             f"e.g. 'lora::{missing[0]}'")
    return names


def _optimizer_from_file(path: str, tensors: dict[str, torch.Tensor], optim_json: dict[str, Any],
                         param_names: list[str]) -> dict[str, Any]:
    index = {name: i for i, name in enumerate(param_names)}

    def position(name: object, where: str) -> int:
        if not isinstance(name, str) or name not in index:
            raise _damaged(path, f"its optimizer state ({where}) names {name!r}, which is not a trained parameter")
        return index[name]

    per_param: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim::"):
            name, _, stat = key[len("optim::"):].rpartition("::")
            i = position(name, key)
            expected = tensors[f"lora::{name}"].shape
            if stat in _PARAM_SHAPED_STATS and value.shape != expected:
                raise _damaged(path, f"{key} has shape {tuple(value.shape)}, its parameter {tuple(expected)}")
            per_param.setdefault(i, {})[stat] = value
    scalars, groups_json = optim_json.get("scalars"), optim_json.get("param_groups")
    if not isinstance(scalars, dict) or not all(isinstance(s, dict) for s in scalars.values()):
        raise _damaged(path, f"{_META}optimizer lacks its per-parameter scalars")
    for name, stats in scalars.items():
        per_param.setdefault(position(name, "scalars"), {}).update(stats)
    if not isinstance(groups_json, list) or not groups_json or not all(
            isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups_json):
        raise _damaged(path, f"{_META}optimizer lacks its parameter groups")
    groups = []
    for group in groups_json:
        # JSON has no tuples: hyperparameters such as betas or Adafactor's eps were tuples when saved.
        entry = {k: tuple(v) if isinstance(v, list) else v for k, v in group.items()}
        entry["params"] = [position(name, "param_groups") for name in group["params"]]
        groups.append(entry)
    return {"state": per_param, "param_groups": groups}


def _generator_state(tensors: dict[str, torch.Tensor], path: str) -> torch.Tensor:
    value = _tensor(tensors, "rng::generator", path)
    expected = torch.Generator("cpu").get_state()
    if value.dtype != torch.uint8 or value.shape != expected.shape:
        raise _damaged(path, f"rng::generator is {value.dtype} {tuple(value.shape)}, a CPU generator's state is "
                             f"uint8 {tuple(expected.shape)}")
    return value


def _config(metadata: dict[str, str], path: str) -> TrainConfig:
    try:
        return TrainConfig.from_metadata(metadata)
    except (ValueError, TypeError) as e:  # config validation (ConfigError is a ValueError)
        raise _damaged(path, f"its saved training settings are unusable: {e}") from e


def _check_base_model(metadata: dict[str, str], path: str, expected: str | None) -> None:
    saved = metadata.get(f"{_META}base_model")
    if saved and expected and saved != expected:
        raise ResumeStateError(
            f"'{path}' was saved by a run on a {saved} model; the MODEL input now is {expected}. Connect the "
            "model the run was trained on, or turn resume off to start a new run.", path=path)


def load_state(path: str | os.PathLike[str], expected_config: TrainConfig | None = None,
               expected_base_model: str | None = None) -> TrainState:
    """Read a state written by save_state; with expected_config (and expected_base_model), also check that
    this run can continue it. Raises ResumeStateError naming the file for every problem."""
    path = os.fspath(path)
    tensors, metadata = _read(path)
    _refuse_foreign(path, tensors, metadata)
    version = _meta_int(metadata, "version", path)
    if version > STATE_VERSION:
        raise ResumeStateError(f"'{path}' was written by a newer LoRA Lab (state version {version}, this one "
                               f"reads up to {STATE_VERSION}); update LoRA Lab.", path=path)
    config = _config(metadata, path)
    step = _meta_int(metadata, "step", path)
    _check_base_model(metadata, path, expected_base_model)
    if expected_config is not None:
        check_resumable(config, expected_config, step, path)
    param_names = _param_names(metadata, tensors, path)
    history_tensor = _tensor(tensors, "history::loss", path)
    if history_tensor.dim() != 1:
        raise _damaged(path, f"history::loss has shape {tuple(history_tensor.shape)}, expected one value per step")
    history = history_tensor.tolist()
    if len(history) != step:
        raise _damaged(path, f"step {step} but {len(history)} loss values")
    optim_json = _meta_json(metadata, "optimizer", path, dict, "a JSON object")
    smoothed = _meta_json(metadata, "smoothed_loss", path, (int, float, type(None)), "a number or null")
    if smoothed is not None and not math.isfinite(smoothed):
        raise _damaged(path, f"{_META}smoothed_loss is {smoothed!r}, not a finite number")
    ema = {k[len("ema::"):]: v for k, v in tensors.items() if k.startswith("ema::")}
    if config.ema.enabled and set(ema) != set(param_names):
        raise _damaged(path, f"ema is on in its settings, but it holds the EMA of {len(ema)} of the "
                             f"{len(param_names)} trained parameters")
    optimizer_name = _meta(metadata, "optimizer_name", path)
    if optimizer_name not in OPTIMIZERS:
        raise _damaged(path, f"{_META}optimizer_name is {optimizer_name!r}, expected one of {', '.join(OPTIMIZERS)}")
    return TrainState(
        step=step,
        config=config,
        lora={k[len("lora::"):]: v for k, v in tensors.items() if k.startswith("lora::")},
        optimizer_state=_optimizer_from_file(path, tensors, optim_json, param_names),
        param_names=param_names,
        generator_state=_generator_state(tensors, path),
        loss_history=history,
        smoothed_loss=smoothed,
        optimizer_name=optimizer_name,
        scaler_state=_meta_json(metadata, "scaler", path, dict, "a JSON object"),
        source=path,
        ema=ema,
        world_size=_meta_int(metadata, "world_size", path) if f"{_META}world_size" in metadata else 1,  # older: 1
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
        raise ResumeStateError(f"{state_name(state)} holds optimizer state for other LoRA layers than this run's "
                               f"({differing[:3]}); resume with the same model, targets and text-encoder setting, "
                               "or turn resume off to start a new run.", path=state.source)
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
