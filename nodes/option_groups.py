"""Option nodes grouped by concern: adapter, optimizer, objective, run. Each passes the settings of its concern on,
by input name, after those of the option node chained into it; Train LoRA builds the configs from them.

They chain in any order, with each other and with the older Train LoRA Options node: where two set the same
setting, the node nearer Train LoRA wins. Input names are the same as on Train LoRA Options.
"""
from __future__ import annotations

from typing import Any, ClassVar

from .train_options import OPTIONS_TYPE, option_inputs

ADAPTER = ("targets", "dropout", "train_text_encoder", "text_encoder_lr", "adapter", "lokr_factor", "use_tucker",
           "rank_dropout", "module_dropout", "include_layers", "exclude_layers")
OPTIMIZER = ("optimizer", "optimizer_class", "optimizer_args", "optimizer_fallback", "weight_decay", "schedule",
             "warmup_steps", "lr_cycles", "lr_power", "decay_steps", "min_lr_ratio", "grad_accumulation",
             "max_grad_norm", "loraplus_lr_ratio", "ema", "ema_decay", "ema_every", "ema_for_samples", "ema_for_final",
             "mixed_precision", "gradient_checkpointing", "memory_mode", "offload_fraction",
             "device_memory_limit_gb")
OBJECTIVE = ("timestep_sampling", "min_timestep", "max_timestep", "sigmoid_scale", "logit_mean", "logit_std",
             "discrete_flow_shift", "min_snr_gamma", "loss_type", "huber_schedule", "huber_c", "debiased_estimation",
             "noise_offset", "noise_offset_random_strength", "multires_noise_iterations", "multires_noise_discount",
             "ip_noise_gamma", "ip_noise_gamma_random_strength", "zero_terminal_snr")
RUN = ("checkpoint_every", "keep_last", "resume", "sample_every", "sample_prompts", "sample_steps", "sample_cfg",
       "sample_sampler", "sample_scheduler", "eval_images", "workers")


class _OptionGroup:
    """The settings named in SETTINGS (widgets, in that order: new ones go at the end), and a chain input."""

    SETTINGS: ClassVar[tuple[str, ...]] = ()
    CATEGORY = "LoRA Lab/options"
    FUNCTION = "options"
    RETURN_TYPES = (OPTIONS_TYPE,)
    RETURN_NAMES = ("options",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, dict[str, tuple]]:
        return {"required": option_inputs(cls.SETTINGS),
                "optional": {"options": (OPTIONS_TYPE, {"tooltip": "More options, from another LoRA Lab options "
                                                                   "node; this node's settings win where both "
                                                                   "set one."})}}

    def options(self, options: dict[str, Any] | None = None, **values: Any) -> tuple[dict[str, Any]]:
        return ({**(options or {}), **values},)


class LoraLabAdapterOptions(_OptionGroup):
    DESCRIPTION = "What is trained: which layers get an adapter, its kind and dropouts, and the text encoder."
    SETTINGS = ADAPTER


class LoraLabOptimizerOptions(_OptionGroup):
    DESCRIPTION = "How it is trained: optimizer, learning-rate schedule, accumulation, clipping, EMA, precision."
    SETTINGS = OPTIMIZER


class LoraLabObjectiveOptions(_OptionGroup):
    DESCRIPTION = "What the loss measures: timestep sampling, loss kind and weighting, noise options."
    SETTINGS = OBJECTIVE


class LoraLabRunOptions(_OptionGroup):
    DESCRIPTION = "Around the training: checkpoints, resume, samples, the loss at fixed noise, worker processes."
    SETTINGS = RUN
