"""Export a trained LoRA as a kohya-format file: kohya keys, chosen dtype, ss_* / modelspec.* metadata, hashes."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from dataclasses import dataclass, field

import safetensors.torch
import torch

from ..errors import LoraExportError, LoraValueError
from ..safetensors_io import write_safetensors_atomic
from .config import TrainConfig
from .distributed import effective_batch_size
from .optimizers import OPTIMIZER_KINDS, kind_for, optimizer_kwargs
from .trainable_lora import LoraAdapterSet

SAVE_DTYPES: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}

# ss_base_model_version -> (modelspec architecture, modelspec implementation), from kohya's sai_model_spec.py.
_ARCHITECTURES: dict[str, tuple[str, str]] = {
    "sd_v1": ("stable-diffusion-v1", "diffusers"),
    "sd_v2": ("stable-diffusion-v2-512", "diffusers"),
    "sd_v2_v": ("stable-diffusion-v2-768-v", "diffusers"),
    "sdxl_base_v1-0": ("stable-diffusion-xl-v1-base", "https://github.com/Stability-AI/generative-models"),
    "sd3": ("stable-diffusion-v3-medium", "https://github.com/Stability-AI/sd3.5"),
    "flux1": ("flux-1-dev", "https://github.com/black-forest-labs/flux"),
}


def export_lora(adapters: LoraAdapterSet, name_map: dict[str, str],
                dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """The file's tensors `{prefix}.{role}` (in `dtype`) and `{prefix}.alpha` (fp32 0-dim), by the adapter kind:

    LoRA kohya's `.lora_down.weight` / `.lora_up.weight` (4-D for convs); LoHa LyCORIS' `.hada_w1_a`, `.hada_w1_b`,
    `.hada_w2_a`, `.hada_w2_b` (+ `.hada_t1`, `.hada_t2` with Tucker); LoKr `.lokr_w1`, `.lokr_w2` or
    `.lokr_w2_a` / `.lokr_w2_b` (+ `.lokr_t2`); DoRA LoRA's pair + `.dora_scale` [1, in(, 1, 1)].
    `name_map` maps each adapter key (engine module name) to its kohya prefix, e.g.
    `input_blocks.1.1.transformer_blocks.0.attn1.to_q`
    -> `lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q`.
    Values are checked finite in fp32 and again after the cast, since fp16 turns values above 65504 into inf.
    """
    missing = [k for k in adapters.keys() if k not in name_map]
    if missing:
        raise LoraExportError(f"{len(missing)} trained layers have no kohya name, e.g. '{missing[0]}'; "
                              "the name map does not cover this model's layers.")
    prefixes = [name_map[k] for k in adapters.keys()]
    if len(set(prefixes)) != len(prefixes):
        duplicate = next(p for p in prefixes if prefixes.count(p) > 1)
        raise LoraExportError(f"two trained layers map to the same kohya name '{duplicate}'.")
    out: dict[str, torch.Tensor] = {}
    for key in adapters.keys():
        prefix = name_map[key]
        for role, value in adapters.file_tensors(key).items():
            if role == "alpha":
                # alpha stays fp32: loaders read it with .item(), and fp16 would round alphas such as 0.3.
                out[f"{prefix}.alpha"] = value.reshape(())
                continue
            if not bool(torch.isfinite(value).all()):
                raise LoraValueError(f"layer '{key}' holds NaN/Inf values ({role}); the training diverged. "
                                     "Use an earlier checkpoint or a lower learning rate.", key=f"{prefix}.{role}")
            converted = value.to(dtype).contiguous()
            if not bool(torch.isfinite(converted).all()):
                raise LoraValueError(f"layer '{key}' has values too large for {dtype} ({role}, max "
                                     f"{value.abs().max().item():.3g}); save as bf16 or fp32.",
                                     key=f"{prefix}.{role}")
            out[f"{prefix}.{role}"] = converted
    return out


def model_hashes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[str, str]:
    """(sshs_model_hash, sshs_legacy_hash) as kohya's train_util.precalculate_safetensors_hashes computes them.

    The model hash is the sha256 of the data section (after the header) of a serialisation with only the
    ss_* metadata; the data section does not depend on the metadata, so it equals A1111's addnet hash of
    the saved file. The legacy hash reads 0x10000 bytes at offset 0x100000 of that serialisation.
    """
    ss_only = {k: v for k, v in metadata.items() if k.startswith("ss_")}
    blob = safetensors.torch.save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, ss_only)
    header_len = int.from_bytes(blob[:8], "little")
    model_hash = hashlib.sha256(blob[8 + header_len:]).hexdigest()
    legacy_hash = hashlib.sha256(blob[0x100000:0x110000]).hexdigest()[:8]
    return model_hash, legacy_hash


def save_lora(path: str | os.PathLike[str], tensors: dict[str, torch.Tensor],
              metadata: dict[str, str]) -> dict[str, str]:
    """Write the LoRA atomically with `metadata` plus sshs_* hashes; returns the metadata written."""
    model_hash, legacy_hash = model_hashes(tensors, metadata)
    written = {**metadata, "sshs_model_hash": model_hash, "sshs_legacy_hash": legacy_hash}
    write_safetensors_atomic(path, tensors, written)
    return written


@dataclass(frozen=True)
class TrainingSummary:
    """Facts about the run and its data that the metadata records (the config holds the rest)."""

    output_name: str
    num_train_images: int
    resolution: tuple[int, int]  # (width, height)
    steps_completed: int
    tag_frequency: dict[str, dict[str, int]] = field(default_factory=dict)  # {image dir: {tag: count}}
    dataset_dirs: dict[str, dict[str, int]] = field(default_factory=dict)  # {image dir: {n_repeats, img_count}}
    trigger_phrase: str = ""
    comment: str = ""
    base_model_name: str = ""
    started_at: float | None = None  # epoch seconds
    finished_at: float | None = None
    title: str | None = None
    world_size: int = 1  # training processes (torchrun); batch_size is per process


# LyCORIS' `algo` network argument of each kind trained through lycoris.kohya (DoRA: a LoRA with dora_wd).
_LYCORIS_ALGOS = {"loha": "loha", "lokr": "lokr", "dora": "lora"}


def _network_module(config: TrainConfig) -> str:
    """ss_network_module: sd-scripts' own LoRA, or LyCORIS' kohya entry point for LoHa, LoKr and DoRA."""
    return "networks.lora" if config.lora.adapter == "lora" else "lycoris.kohya"


def _network_args(config: TrainConfig) -> dict[str, str]:
    """ss_network_args as sd-scripts writes --network_args (text values), with LyCORIS' names for its kinds."""
    lora = config.lora
    args: dict[str, str] = {}
    if lora.adapter in _LYCORIS_ALGOS:
        args["algo"] = _LYCORIS_ALGOS[lora.adapter]
    # kohya records LoCon ranks as conv_dim/conv_alpha; our conv layers share the linear rank and alpha.
    if lora.targets == "attention_ff_conv":
        args.update(conv_dim=str(lora.rank), conv_alpha=str(lora.alpha))
    if lora.adapter in ("loha", "lokr") and lora.use_tucker:
        args["use_tucker"] = "True"
    if lora.adapter == "lokr":
        args["factor"] = str(lora.lokr_factor)
    if lora.adapter == "dora":
        args.update(dora_wd="True", wd_on_output="False")  # magnitude per input column
    if lora.rank_dropout > 0:
        args["rank_dropout"] = str(lora.rank_dropout)
    if lora.module_dropout > 0:
        args["module_dropout"] = str(lora.module_dropout)
    # sd-scripts takes these as network arguments too (LoRA+; its layer patterns are regular expressions as ours).
    if config.optimisation.loraplus_lr_ratio > 0:
        args["loraplus_lr_ratio"] = str(config.optimisation.loraplus_lr_ratio)
    if lora.include_layers:
        args["include_patterns"] = lora.include_layers
    if lora.exclude_layers:
        args["exclude_patterns"] = lora.exclude_layers
    return args


def _kohya_optimizer(config: TrainConfig, optimizer_name: str | None) -> str:
    """kohya's ss_optimizer: the class path, then the keyword arguments it was built with, e.g.
    `torch.optim.adamw.AdamW(weight_decay=0.01)`. `optimizer_name` is the kind actually used (after a fallback)."""
    opt = config.optimisation
    kind = kind_for(opt) if optimizer_name in (None, opt.optimizer) else OPTIMIZER_KINDS[optimizer_name]
    kwargs = optimizer_kwargs(kind, opt) if kind.name == opt.optimizer else {"weight_decay": opt.weight_decay}
    return f"{kind.recorded_class}({','.join(f'{k}={v}' for k, v in kwargs.items())})"


def kohya_metadata(config: TrainConfig, summary: TrainingSummary, base_model_version: str,
                   prediction_type: str = "epsilon", optimizer_name: str | None = None,
                   now: datetime.datetime | None = None) -> dict[str, str]:
    """`ss_*` (kohya train_network.py) and `modelspec.*` (SAI model spec) metadata, plus the loralab.* config.

    `base_model_version` uses kohya's values: sd_v1, sd_v2, sd_v2_v, sdxl_base_v1-0, flux1, ...
    `optimizer_name` is the optimizer the run used (TrainResult.optimizer_name); None = the configured one.
    """
    lora, opt = config.lora, config.optimisation
    width, height = summary.resolution
    now = now or datetime.datetime.now()
    metadata = {
        "ss_output_name": summary.output_name,
        "ss_training_comment": summary.comment,
        "ss_network_module": _network_module(config),
        "ss_network_dim": str(lora.rank),
        "ss_network_alpha": str(float(lora.alpha)),
        "ss_network_dropout": str(lora.dropout),
        "ss_network_args": json.dumps(_network_args(config)),
        "ss_base_model_version": base_model_version,
        "ss_v2": str(base_model_version.startswith("sd_v2")),
        "ss_sd_model_name": summary.base_model_name,
        "ss_learning_rate": str(opt.learning_rate),
        "ss_unet_lr": str(opt.learning_rate),
        "ss_text_encoder_lr": str(lora.text_encoder_lr or opt.learning_rate) if lora.train_text_encoder else "None",
        "ss_network_train_unet_only": str(not lora.train_text_encoder),
        "ss_steps": str(summary.steps_completed),
        "ss_max_train_steps": str(opt.steps),
        "ss_lr_scheduler": opt.schedule,
        "ss_lr_warmup_steps": str(opt.warmup_steps),
        "ss_lr_scheduler_num_cycles": str(opt.lr_cycles),
        "ss_lr_scheduler_power": str(opt.lr_power),
        "ss_optimizer": _kohya_optimizer(config, optimizer_name),
        "ss_optimizer_args": opt.optimizer_args,
        "ss_max_grad_norm": str(opt.max_grad_norm),
        "ss_batch_size_per_device": str(opt.batch_size),
        "ss_total_batch_size": str(effective_batch_size(opt, summary.world_size)),  # kohya: x accum x procs
        "loralab.world_size": str(summary.world_size),  # training processes (torchrun); batch_size is per process
        "ss_gradient_accumulation_steps": str(opt.grad_accumulation),
        "ss_gradient_checkpointing": str(opt.gradient_checkpointing),
        "ss_mixed_precision": opt.mixed_precision,
        "ss_full_fp16": "False",
        "ss_seed": str(opt.seed),
        "ss_noise_offset": str(opt.noise_offset) if opt.noise_offset > 0 else "None",
        "ss_min_snr_gamma": str(opt.min_snr_gamma) if opt.min_snr_gamma else "None",  # kohya writes None when off
        "ss_loss_type": opt.loss_type,
        "ss_huber_schedule": opt.huber_schedule,
        "ss_huber_c": str(opt.huber_c),
        "ss_debiased_estimation": str(opt.debiased_estimation),
        "ss_noise_offset_random_strength": str(opt.noise_offset_random_strength),
        "ss_multires_noise_iterations": str(opt.multires_noise_iterations or None),  # kohya: None when off
        "ss_multires_noise_discount": str(opt.multires_noise_discount),
        "ss_ip_noise_gamma": str(opt.ip_noise_gamma or None),
        "ss_ip_noise_gamma_random_strength": str(opt.ip_noise_gamma_random_strength),
        "ss_zero_terminal_snr": str(opt.zero_terminal_snr),
        "ss_timestep_sampling": opt.timestep_sampling,
        "ss_min_timestep": str(opt.min_timestep),
        "ss_max_timestep": str(opt.max_timestep),
        "ss_sigmoid_scale": str(opt.sigmoid_scale),
        "ss_discrete_flow_shift": str(opt.discrete_flow_shift),
        "ss_logit_mean": str(opt.logit_mean),
        "ss_logit_std": str(opt.logit_std),
        "ss_cache_latents": "True",
        "ss_num_train_images": str(summary.num_train_images),
        "ss_num_reg_images": "0",
        "ss_resolution": str((width, height)),
        "ss_tag_frequency": json.dumps(summary.tag_frequency),
        "ss_dataset_dirs": json.dumps(summary.dataset_dirs),
        # Lora-Manager and civitai read the trigger word from the first subset's class_tokens.
        "ss_datasets": json.dumps([{"num_train_images": summary.num_train_images, "resolution": [width, height],
                                    "subsets": [{"class_tokens": summary.trigger_phrase or None}]}]),
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": _ARCHITECTURES.get(base_model_version, (base_model_version, ""))[0] + "/lora",
        "modelspec.implementation": _ARCHITECTURES.get(base_model_version, ("", "diffusers"))[1],
        "modelspec.title": summary.title or summary.output_name,
        "modelspec.resolution": f"{width}x{height}",
        "modelspec.date": now.replace(microsecond=0).isoformat(),
        "modelspec.prediction_type": prediction_type,
    }
    if summary.trigger_phrase:
        metadata["modelspec.trigger_phrase"] = summary.trigger_phrase
    if summary.started_at is not None:
        metadata["ss_training_started_at"] = str(summary.started_at)
    if summary.finished_at is not None:
        metadata["ss_training_finished_at"] = str(summary.finished_at)
    metadata.update(config.to_metadata())
    return metadata
