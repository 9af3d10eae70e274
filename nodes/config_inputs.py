"""Node inputs generated from the engine's config fields, and the engine's configs built back from input values."""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

from ..trainer.training.config import (
    Checkpointing,
    Ema,
    Evaluation,
    LoraShape,
    Optimisation,
    RunStart,
    Sampling,
    TrainConfig,
    Workers,
)
from ..trainer.training.settings import config_field, field_help, field_type

_T = TypeVar("_T")

# Every setting is declared once, as a field in trainer/training/config.py (type, default, range, choices, help).
# Input name -> (config section, field). Input names are permanent (saved workflows and API prompts use them),
# so they differ from fields where the input predates the field; an input a prompt lacks takes the default.
INPUT_FIELDS: dict[str, tuple[type, str]] = {
    "steps": (Optimisation, "steps"),
    "learning_rate": (Optimisation, "learning_rate"),
    "rank": (LoraShape, "rank"),
    "alpha": (LoraShape, "alpha"),
    "batch_size": (Optimisation, "batch_size"),
    "seed": (Optimisation, "seed"),
    "targets": (LoraShape, "targets"),
    "dropout": (LoraShape, "dropout"),
    "schedule": (Optimisation, "schedule"),
    "warmup_steps": (Optimisation, "warmup_steps"),
    "grad_accumulation": (Optimisation, "grad_accumulation"),
    "max_grad_norm": (Optimisation, "max_grad_norm"),
    "min_snr_gamma": (Optimisation, "min_snr_gamma"),
    "noise_offset": (Optimisation, "noise_offset"),
    "optimizer": (Optimisation, "optimizer"),
    "weight_decay": (Optimisation, "weight_decay"),
    "mixed_precision": (Optimisation, "mixed_precision"),
    "gradient_checkpointing": (Optimisation, "gradient_checkpointing"),
    "checkpoint_every": (Checkpointing, "every_n_steps"),
    "keep_last": (Checkpointing, "keep_last"),
    "resume": (RunStart, "resume"),
    "sample_every": (Sampling, "every_n_steps"),
    "sample_prompts": (Sampling, "prompts"),
    "sample_steps": (Sampling, "steps"),
    "sample_cfg": (Sampling, "cfg"),
    "sample_sampler": (Sampling, "sampler"),
    "sample_scheduler": (Sampling, "scheduler"),
    "train_text_encoder": (LoraShape, "train_text_encoder"),
    "text_encoder_lr": (LoraShape, "text_encoder_lr"),
    "optimizer_class": (Optimisation, "optimizer_class"),
    "optimizer_args": (Optimisation, "optimizer_args"),
    "optimizer_fallback": (Optimisation, "optimizer_fallback"),
    "lr_cycles": (Optimisation, "lr_cycles"),
    "lr_power": (Optimisation, "lr_power"),
    "decay_steps": (Optimisation, "decay_steps"),
    "min_lr_ratio": (Optimisation, "min_lr_ratio"),
    "timestep_sampling": (Optimisation, "timestep_sampling"),
    "min_timestep": (Optimisation, "min_timestep"),
    "max_timestep": (Optimisation, "max_timestep"),
    "sigmoid_scale": (Optimisation, "sigmoid_scale"),
    "logit_mean": (Optimisation, "logit_mean"),
    "logit_std": (Optimisation, "logit_std"),
    "discrete_flow_shift": (Optimisation, "discrete_flow_shift"),
    "ema": (Ema, "enabled"),
    "ema_decay": (Ema, "decay"),
    "ema_every": (Ema, "every_n_steps"),
    "ema_for_samples": (Ema, "for_samples"),
    "ema_for_final": (Ema, "for_final"),
    "eval_images": (Evaluation, "images"),
    "workers": (Workers, "workers"),
    "loss_type": (Optimisation, "loss_type"),
    "huber_schedule": (Optimisation, "huber_schedule"),
    "huber_c": (Optimisation, "huber_c"),
    "debiased_estimation": (Optimisation, "debiased_estimation"),
    "noise_offset_random_strength": (Optimisation, "noise_offset_random_strength"),
    "multires_noise_iterations": (Optimisation, "multires_noise_iterations"),
    "multires_noise_discount": (Optimisation, "multires_noise_discount"),
    "ip_noise_gamma": (Optimisation, "ip_noise_gamma"),
    "ip_noise_gamma_random_strength": (Optimisation, "ip_noise_gamma_random_strength"),
    "zero_terminal_snr": (Optimisation, "zero_terminal_snr"),
    "adapter": (LoraShape, "adapter"),
    "lokr_factor": (LoraShape, "lokr_factor"),
    "use_tucker": (LoraShape, "use_tucker"),
    "rank_dropout": (LoraShape, "rank_dropout"),
    "module_dropout": (LoraShape, "module_dropout"),
    "include_layers": (LoraShape, "include_layers"),
    "exclude_layers": (LoraShape, "exclude_layers"),
    "loraplus_lr_ratio": (Optimisation, "loraplus_lr_ratio"),
    "memory_mode": (Optimisation, "memory_mode"),
    "offload_fraction": (Optimisation, "offload_fraction"),
    "device_memory_limit_gb": (Optimisation, "device_memory_limit_gb"),
}

_KINDS: dict[type, str] = {int: "INT", float: "FLOAT", bool: "BOOLEAN", str: "STRING"}


def input_spec(name: str, choices: Sequence[str] | None = None) -> tuple[Any, dict[str, Any]]:
    """The INPUT_TYPES entry of one input: (kind or choice list, {default, min, max, step, ..., tooltip}).

    `choices` is for a text field whose choices only the host knows (sampler and scheduler names).
    """
    section, field_name = INPUT_FIELDS[name]
    return field_input(section, field_name, choices)


def field_input(section: type, field_name: str, choices: Sequence[str] | None = None) -> tuple[Any, dict[str, Any]]:
    """The INPUT_TYPES entry of one config field, for a node whose inputs are named as the fields."""
    f = config_field(section, field_name)
    options: dict[str, Any] = {"default": f.default, **f.metadata.get("ui", {}),
                              "tooltip": field_help(section, field_name)}
    listed = choices if choices is not None else f.metadata.get("choices")
    if listed is not None:
        return list(listed), options
    return _KINDS[field_type(section, field_name)], options


def input_types(names: Iterable[str], choices: Mapping[str, Sequence[str]] | None = None) -> dict[str, tuple]:
    """INPUT_TYPES entries of `names`, in that order (a saved workflow's widget values are by position)."""
    return {name: input_spec(name, (choices or {}).get(name)) for name in names}


def section_from_inputs(section: type[_T], values: Mapping[str, Any]) -> _T:
    """One config section from node input values by input name; fields without an input value keep defaults."""
    return section(**{field_name: values[name] for name, (cls, field_name) in INPUT_FIELDS.items()
                      if cls is section and name in values})


def build_config(values: Mapping[str, Any]) -> TrainConfig:
    """The TrainConfig of Train LoRA's inputs and its options' inputs (by input name); build_config({}) is
    TrainConfig() by construction."""
    return TrainConfig(lora=section_from_inputs(LoraShape, values),
                       optimisation=section_from_inputs(Optimisation, values),
                       checkpointing=section_from_inputs(Checkpointing, values),
                       ema=section_from_inputs(Ema, values))
