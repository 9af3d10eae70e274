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


def check_memory(model, config: TrainConfig, resolution: int, trainable_params: int,
                 trained: list[tuple[nn.Module, list[str]]]) -> tuple[TrainConfig, MemoryPlan]:
    """The config to train with and how it fits (memory_mode auto may have turned gradient checkpointing on);
    refuses a run that will not fit, with the figure and the options that fit. `model` is the graph's MODEL,
    `trained` each module (the UNet first) with its selected layers."""
    unet = trained[0][0]
    params_bytes = sum(p.numel() * p.element_size() for p in unet.parameters())
    opt = config.optimisation
    on_gpu = comfy.model_management.get_torch_device().type == "cuda"
    shapes = [s for module, layers in trained for s in adapter_parameter_shapes(module, layers, config.lora)]
    estimate = estimate_training_memory(params_bytes, trainable_params, opt.batch_size, resolution,
                                        gradient_checkpointing=opt.gradient_checkpointing,
                                        mixed_precision=opt.mixed_precision if on_gpu else "no",
                                        optimizer=opt.optimizer, rank=config.lora.rank,
                                        parameter_shapes=shapes, optimizer_args=opt.optimizer_kwargs())
    available = host_model.free_memory_bytes() + model.loaded_size()  # what the model holds counts
    plan = plan_memory(estimate, available, automatic=opt.memory_mode == "auto")
    if plan is not None:
        optimisation = dataclasses.replace(opt, gradient_checkpointing=plan.gradient_checkpointing)
        return dataclasses.replace(config, optimisation=optimisation), plan
    _, options = fits(estimate, available, eight_bit=on_gpu)
    raise TrainingStopped(f"This run needs about {estimate.total_bytes / 2**30:.1f} GiB but "
                          f"{available / 2**30:.1f} GiB are available. Options that fit: "
                          + ("; ".join(options) if options else "a smaller resolution or rank"))
