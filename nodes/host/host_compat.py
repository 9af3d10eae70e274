"""The host APIs LoRA Lab calls whose behaviour differs between ComfyUI 0.3.75 (CI) and 0.33 (what users run).

Each function works on both, by feature (an attribute or a keyword the newer host has), never by version number.
Everything else the pack calls on the host has the same signature and behaviour in both trees.

- `training_mode`: 0.33's `comfy.model_management.in_training` / `training_fp8_bwd` flags, read by its ops and
  models (absent in 0.3.75).
- `is_dynamic`: 0.33's dynamic-VRAM patcher (`ModelPatcherDynamic`) streams weights itself and takes no budget.
- `checkpoint_state_dict`: 0.33 moved the patched state dict for saving onto the patcher and changed
  `BaseModel.state_dict_for_saving`'s arguments.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import comfy.model_management
import torch

TRAINING_FLAGS = ("in_training", "training_fp8_bwd")  # comfy.model_management globals of 0.33's trainer


@contextlib.contextmanager
def training_mode(enabled: bool = True, fp8_backward: bool = False) -> Iterator[bool]:
    """Tells the host's ops that a training step runs (or, `enabled=False`, that inference runs inside a training
    run, e.g. a mid-run sample), restoring the flags as they were on exit, also on an exception. Yields whether the
    host has the flags.

    - ComfyUI 0.3.75: no such flags (`comfy.model_management` has neither); its ops take the same path in training
      and inference. A no-op that creates nothing.
    - ComfyUI 0.33: `comfy.model_management.in_training` (set to True by its own TrainLoraNode around its training
      loop, `comfy_extras/nodes_train.py`) makes its models take their differentiable eager paths: `comfy.ops.
      linear_input_act` (the FFN down-projection of Wan, LTX, MiniMax) calls the Linear's own forward instead of its
      fused INT8 kernel, which would bypass a hook on that Linear; Flux's `apply_rope` uses torch ops instead of
      comfy-kitchen's fused kernel; LTX, SeedVR, Lumina, Ernie avoid their in-place / fused inference code.
      `comfy.model_management.training_fp8_bwd` makes the host's quantized Linear (`QuantLinearFunc`) run its
      backward in fp8; 0.33's trainer sets it from its `quantized_backward` input and never resets it, so it is
      set explicitly here (`fp8_backward`, default off: gradients through full-precision dequantized weights).
    """
    mm = comfy.model_management
    saved = {name: getattr(mm, name) for name in TRAINING_FLAGS if hasattr(mm, name)}
    values = {"in_training": bool(enabled), "training_fp8_bwd": bool(enabled and fp8_backward)}
    for name in saved:
        setattr(mm, name, values[name])
    try:
        yield bool(saved)
    finally:
        for name, value in saved.items():
            setattr(mm, name, value)


def is_dynamic(model_patcher) -> bool:
    """Whether the MODEL's patcher is 0.33's dynamic-VRAM `ModelPatcherDynamic`.

    - ComfyUI 0.3.75: every patcher is a `comfy.model_patcher.ModelPatcher`, which has no `is_dynamic`: False.
    - ComfyUI 0.33: `main.py` makes `comfy.model_patcher.CoreModelPatcher` = `ModelPatcherDynamic` when comfy-aimdo
      starts (NVIDIA, or AMD ROCm >= 7.14, torch >= 2.8, none of --cpu / --disable-dynamic-vram / --highvram /
      --gpu-only / --novram), so checkpoints load into it; `ModelPatcherDynamic(...)` on a CPU load device returns a
      plain `ModelPatcher` instead. Its `load` streams every weight to the device as the layer runs (the
      comfy-aimdo VBAR) and takes no weight budget; its `partially_unload` only evicts what is resident now."""
    method = getattr(model_patcher, "is_dynamic", None)
    return bool(method()) if callable(method) else False


def checkpoint_state_dict(model, clip=None, vae=None) -> dict[str, torch.Tensor]:
    """The checkpoint state dict of MODEL (+ CLIP + VAE) with their LoRA patches applied, as the host's own
    `comfy.sd.save_checkpoint` builds it, every value a plain CPU-or-device tensor (nothing lazy).

    - ComfyUI 0.3.75: `load_models_gpu([model, clip.load_model()], force_patch_weights=True)` writes the patches
      into the weights, then `model.model.state_dict_for_saving(clip_sd, vae_sd, clip_vision_sd)` (BaseModel) reads
      them, with `clip.get_sd()`.
    - ComfyUI 0.33: `BaseModel.state_dict_for_saving(unet_state_dict, clip_sd, vae_sd, clip_vision_sd)` takes the
      UNet's state dict first (the 0.3.75 call would pass the CLIP's as the UNet's); the patched dicts come from
      `ModelPatcher.state_dict_for_saving(clip_sd, vae_sd, clip_vision_sd)` and `CLIP.state_dict_for_saving()`,
      whose weights not patched in place are `LazyCastingParam`s computing the patched weight on `.to()` (they
      ignore a dtype there, so they are materialised here). `force_patch_weights` is not passed: the dynamic-VRAM
      patcher asserts against it.
    """
    loading = [model] + ([clip.load_model()] if clip is not None else [])
    vae_sd = vae.get_sd() if vae is not None else None
    if not hasattr(model, "state_dict_for_saving"):  # 0.3.75
        clip_sd = clip.get_sd() if clip is not None else None
        comfy.model_management.load_models_gpu(loading, force_patch_weights=True)
        return model.model.state_dict_for_saving(clip_sd, vae_sd, None)
    clip_sd = clip.state_dict_for_saving() if clip is not None else None
    comfy.model_management.load_models_gpu(loading)
    sd = model.state_dict_for_saving(clip_sd, vae_sd, None)
    return {key: _materialised(value) for key, value in sd.items()}


def _materialised(value):
    """A 0.33 lazy patched weight (its device is the host's fake "comfy-lazy-caster") as a plain tensor."""
    if isinstance(value, torch.Tensor) and not isinstance(getattr(value, "device", None), torch.device):
        value = value.to("cpu")  # LazyCastingParam(Piece).to computes the patched weight on the CPU
        return value.data if isinstance(value, torch.nn.Parameter) else value
    return value
