"""Train LoRA Options node: the less common training settings, so the Train LoRA node stays readable."""
from __future__ import annotations

from typing import Any

import comfy.samplers

from .config_inputs import input_types

OPTIONS_TYPE = "LORALAB_TRAIN_OPTIONS"

# In the order saved workflows store their widget values: new inputs go at the end of OPTIONAL.
REQUIRED = ("targets", "dropout", "schedule", "warmup_steps", "grad_accumulation", "max_grad_norm", "min_snr_gamma",
            "noise_offset", "optimizer", "weight_decay", "mixed_precision", "gradient_checkpointing",
            "checkpoint_every", "resume", "sample_every", "sample_prompts", "sample_steps", "sample_cfg",
            "sample_sampler", "sample_scheduler")
# Optional: workflows and API prompts saved before these existed keep working, with the defaults.
OPTIONAL = ("train_text_encoder", "text_encoder_lr", "keep_last", "optimizer_class", "optimizer_args",
            "optimizer_fallback", "lr_cycles", "lr_power", "decay_steps", "min_lr_ratio", "timestep_sampling",
            "min_timestep", "max_timestep", "sigmoid_scale", "logit_mean", "logit_std", "discrete_flow_shift", "ema",
            "ema_decay", "ema_every", "ema_for_samples", "ema_for_final", "eval_images",
            "workers")


def option_inputs(names: tuple[str, ...]) -> dict[str, tuple]:
    """INPUT_TYPES entries of these settings, in this order. The sampler and scheduler names are the host's: the
    engine cannot import it to list them."""
    host_choices = {"sample_sampler": comfy.samplers.KSampler.SAMPLERS,
                    "sample_scheduler": comfy.samplers.KSampler.SCHEDULERS}
    return input_types(names, host_choices)


class LoraLabTrainOptions:
    """Passes its input values on, by input name; Train LoRA builds the configs from them."""

    DESCRIPTION = "Advanced settings for Train LoRA: layers, schedule, regularisation, precision, checkpoints, resume."
    CATEGORY = "LoRA Lab"
    FUNCTION = "options"
    RETURN_TYPES = (OPTIONS_TYPE,)
    RETURN_NAMES = ("options",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, dict[str, tuple]]:
        return {"required": option_inputs(REQUIRED), "optional": option_inputs(OPTIONAL)}

    def options(self, **options: Any) -> tuple[dict[str, Any]]:
        return (options,)
