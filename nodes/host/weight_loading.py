"""How the graph's model is loaded for training: fully, or with a share of its frozen weights offloaded.

Offloading is the host's own partial loading (its lowvram mode): the modules left off the device keep their weights
in CPU memory and cast them to the device layer by layer as they run (`comfy.ops.cast_bias_weight`), LoRA patches
already on the model included (the host's LowVramPatch). The run trains with gradient checkpointing then, so that
only one block's streamed weights are alive at a time. The host's model management keeps track of it as of any
partially loaded model: the next sampler loads it the way it would after a low-memory inference run.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import comfy.model_management

from .host_compat import is_dynamic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedWeights:
    """What a load left on the device, in bytes of the diffusion model's weights."""

    on_device_bytes: int
    total_bytes: int
    host_streams: bool = False  # 0.33's dynamic VRAM: the host streams the weights itself and takes no budget

    @property
    def offloaded_bytes(self) -> int:
        return self.total_bytes - self.on_device_bytes

    def describe(self) -> str:
        mib = 2**20
        if self.host_streams:
            return (f"{self.on_device_bytes / mib:.0f} of {self.total_bytes / mib:.0f} MiB of weights on the device "
                    "now; the host streams them itself (dynamic VRAM), so offload_fraction has no effect")
        if self.offloaded_bytes <= 0:
            return f"all {self.total_bytes / mib:.0f} MiB of weights on the device"
        return (f"{self.on_device_bytes / mib:.0f} of {self.total_bytes / mib:.0f} MiB of weights on the device, "
                f"{self.offloaded_bytes / mib:.0f} MiB offloaded and streamed per layer")


def load_for_training(model, clip=None, offload_fraction: float = 0.0) -> LoadedWeights:
    """Loads the model (and the CLIP, when it trains or encodes every step) with their patches onto the compute
    device: fully, or with `offload_fraction` of the model's weights left in CPU memory (the CLIP always loads fully:
    loading it on demand could offload the model being trained). Called again after each sample the host renders
    mid-run, since its sampler loads the model its own way."""
    patchers = [model] + ([clip.patcher] if clip is not None else [])
    host_streams = is_dynamic(model)
    if host_streams:  # ComfyUI 0.33 on a GPU: its loads ignore budgets and stream each weight as it runs
        comfy.model_management.load_models_gpu(patchers)
    elif offload_fraction <= 0:
        comfy.model_management.load_models_gpu(patchers, force_full_load=True)
    else:
        comfy.model_management.load_models_gpu(patchers)
        budget = int(model.model_size() * (1 - offload_fraction))
        excess = model.loaded_size() - budget
        if excess > 0:  # (the host may have kept even more off the device for its own margin: that stands)
            model.partially_unload(model.offload_device, excess)
    loaded = LoadedWeights(model.loaded_size(), model.model_size(), host_streams=host_streams)
    log.info("LoRA Lab: %s", loaded.describe())
    return loaded
