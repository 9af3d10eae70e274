"""The memory a run needs, against what the host has free, before anything is encoded."""
from __future__ import annotations

import dataclasses

import comfy.model_management
from torch import nn

from ...trainer.errors import TrainingStopped
from ...trainer.training.config import TrainConfig
from ...trainer.training.memory import (
    MemoryPlan,
    adapter_parameter_shapes,
    estimate_training_memory,
    fits,
    plan_memory,
)
from . import model as host_model


def largest_layer_bytes(module: nn.Module) -> int:
    """The largest weights of one layer: what the host's partial loading streams at a time."""
    return max((sum(p.numel() * p.element_size() for p in m.parameters(recurse=False)) for m in module.modules()),
               default=0)


def cast_weights_bytes(model, unet: nn.Module) -> int:
    """The diffusion model's weights that its layers cast to the host's compute dtype as they run (stored in fp8,
    or in bf16 where the host computes in fp32), at that dtype; 0 where the host computes in the stored dtype."""
    compute = host_model.compute_dtype(model)
    return sum(p.numel() * compute.itemsize for p in unet.parameters() if p.dtype != compute)


def available_device_bytes(model, limit_gb: float) -> int:
    """The device memory the run may plan with: what the host reports free plus what the model already holds
    there, capped at `limit_gb` (device_memory_limit_gb; 0 = no cap)."""
    available = host_model.free_memory_bytes() + model.loaded_size()
    return min(available, int(limit_gb * 2**30)) if limit_gb > 0 else available


def check_memory(model, config: TrainConfig, resolution: int, trainable_params: int,
                 trained: list[tuple[nn.Module, list[str]]], latent_frames: int = 1) -> tuple[TrainConfig, MemoryPlan]:
    """The config to train with and how it fits (memory_mode auto may have turned gradient checkpointing on, or
    offloaded a share of the weights); refuses a run that will not fit, with the figure and the options that fit.
    `model` is the graph's MODEL, `trained` each module (the UNet first) with its selected layers,
    `latent_frames` the latent frames of the dataset's longest item (1 for images).

    Offloading frees device memory only where the device is not the CPU memory the weights are streamed from (a
    GPU), or where device_memory_limit_gb sets the device's budget apart from it (how it is exercised without a
    GPU: the weights then take the host's lowvram path, cast per layer, but stay in the same memory)."""
    unet = trained[0][0]
    params_bytes = sum(p.numel() * p.element_size() for p in unet.parameters())
    opt = config.optimisation
    on_gpu = comfy.model_management.get_torch_device().type == "cuda"
    can_offload = on_gpu or opt.device_memory_limit_gb > 0
    shapes = [s for module, layers in trained for s in adapter_parameter_shapes(module, layers, config.lora)]
    estimate = estimate_training_memory(params_bytes, trainable_params, opt.batch_size, resolution,
                                        gradient_checkpointing=opt.gradient_checkpointing,
                                        mixed_precision=opt.mixed_precision if on_gpu else "no",
                                        optimizer=opt.optimizer, rank=config.lora.rank,
                                        parameter_shapes=shapes, optimizer_args=opt.optimizer_kwargs(),
                                        offload_fraction=opt.offload_fraction,
                                        largest_layer_bytes=largest_layer_bytes(unet), latent_frames=latent_frames,
                                        latent_channels=model.model.latent_format.latent_channels,
                                        cast_weights_bytes=cast_weights_bytes(model, unet))
    available = available_device_bytes(model, opt.device_memory_limit_gb)
    plan = plan_memory(estimate, available, automatic=opt.memory_mode == "auto", can_offload=can_offload)
    if plan is not None:
        optimisation = dataclasses.replace(opt, gradient_checkpointing=plan.gradient_checkpointing,
                                           offload_fraction=plan.offload_fraction)
        return dataclasses.replace(config, optimisation=optimisation), plan
    _, options = fits(estimate, available, eight_bit=on_gpu, can_offload=can_offload)
    raise TrainingStopped(f"This run needs about {estimate.total_bytes / 2**30:.1f} GiB but "
                          f"{available / 2**30:.1f} GiB are available. Options that fit: "
                          + ("; ".join(options) if options else "a smaller resolution or rank"))
