"""The weights a host MODEL or CLIP computes with, one layer at a time, named as kohya LoRA layers.

A layer's weight is the stored one with the patcher's patches (a LoRA stack, a model merge) applied by the
host's own `comfy.lora.calculate_weight`, fed from `ModelPatcher.get_key_patches` (which also finds the
original weight while a patched copy is loaded), then the patcher's weight wrappers. Nothing in the model is
changed, and only the layer being compared is ever formed, in fp32 on the compute device.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import comfy.lora
import comfy.model_management
import torch

from ...trainer.errors import LoraToolError, UnsupportedModelError
from .model import clip_kohya_names, model_family, unet_kohya_names

UNET_PREFIX = "diffusion_model."
WEIGHT_SUFFIX = ".weight"
LORA_DIMS = (2, 4)  # Linear [out, in] and Conv2d [out, in, kh, kw]: the weights a LoRA layer can change


def patched_weight(patcher, entry: list, key: str, device: torch.device) -> torch.Tensor:
    """One weight as `patcher` computes with it, fp32 on `device`; `entry` is get_key_patches()[key]."""
    weight, convert = entry[0]
    out = convert(comfy.model_management.cast_to_device(weight, device, torch.float32, copy=True), inplace=True)
    if len(entry) > 1:
        out = comfy.lora.calculate_weight(entry[1:], out, key, intermediate_dtype=torch.float32)
    for wrapper in patcher.weight_wrapper_patches.get(key, []):
        out = wrapper(out)
    return out.float()


def _same_weight(base: list, tuned: list, base_patcher, tuned_patcher, key: str) -> bool:
    # The same stored tensor with no patch and no wrapper on either side: equal without computing anything.
    return (base[0][0] is tuned[0][0] and len(base) == len(tuned) == 1
            and not base_patcher.weight_wrapper_patches.get(key) and not tuned_patcher.weight_wrapper_patches.get(key))


def unet_layer_names(model, keys: list[str]) -> dict[str, str]:
    """Host UNet weight key -> the kohya prefix the trainer writes (diffusers names for SD1/SD2), falling back to
    the LDM name (`lora_unet_` + key with '_') where the host does not map the former to that weight."""
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    modules = [k[len(UNET_PREFIX):-len(WEIGHT_SUFFIX)] for k in keys]
    kohya = unet_kohya_names(model, modules)
    names = {}
    for key, module in zip(keys, modules, strict=True):
        name = kohya[module]
        if key_map.get(name) != key:
            name = "lora_unet_" + module.replace(".", "_")
        if key_map.get(name) != key:
            raise LoraToolError(f"UNet layer {key} has no kohya LoRA name the host loads; it cannot be extracted.")
        names[key] = name
    return names


def clip_layer_names(model, clip) -> dict[str, str]:
    """Host CLIP weight key -> kohya prefix (lora_te_, lora_te1_, lora_te2_), for the text-encoder layers a kohya
    LoRA holds (attention and MLP projections of the encoder layers)."""
    key_map = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, {})
    keys = sorted({v for k, v in key_map.items() if k.startswith("lora_te")})
    try:
        kohya = clip_kohya_names(model, [k[:-len(WEIGHT_SUFFIX)] for k in keys], "")
    except UnsupportedModelError as e:
        raise LoraToolError(f"Extracting the text encoder of a {model_family(model)} model is not supported yet "
                            "(supported: SD1.x, SD2.x, SDXL). Disconnect base_clip and tuned_clip to extract "
                            "the diffusion model alone.") from e
    # Only the layers whose kohya name the host maps back to them: the encoder layers' projections. The
    # others it maps for other trainers' formats (e.g. OneTrainer's lora_te1_text_projection) are not kohya layers.
    return {key: kohya[key[:-len(WEIGHT_SUFFIX)]] for key in keys
            if key_map.get(kohya[key[:-len(WEIGHT_SUFFIX)]]) == key}


@dataclass
class WeightPairs:
    """The layers of a base and a tuned patcher that may differ, iterated as (kohya prefix, base, tuned).

    Layers that are provably equal (one stored tensor, no patch on either side) are counted in `identical`
    and never formed.
    """

    base: object  # ModelPatcher
    tuned: object
    names: dict[str, str]  # host weight key -> kohya prefix
    device: torch.device

    def __post_init__(self) -> None:
        self._base = self.base.get_key_patches()
        self._tuned = self.tuned.get_key_patches()
        missing = [k for k in self.names if k not in self._base or k not in self._tuned]
        if missing:
            raise LoraToolError(f"the base and tuned models do not have the same layers (e.g. {missing[0]}); "
                                "connect two models of one architecture.")
        self.keys = [k for k in self.names if self._base[k][0][0].dim() in LORA_DIMS
                     and not _same_weight(self._base[k], self._tuned[k], self.base, self.tuned, k)]
        self.identical = len(self.names) - len(self.keys)

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
        for key in self.keys:
            yield (self.names[key], patched_weight(self.base, self._base[key], key, self.device),
                   patched_weight(self.tuned, self._tuned[key], key, self.device))

    def patched_layers(self, which: str) -> int:
        """How many weights of the 'base' or 'tuned' patcher carry patches (for the file's record)."""
        entries = self._base if which == "base" else self._tuned
        return sum(1 for entry in entries.values() if len(entry) > 1)


def unet_pairs(base_model, tuned_model, device: torch.device) -> WeightPairs:
    keys = [k for k, v in base_model.model_state_dict(filter_prefix=UNET_PREFIX).items()
            if k.endswith(WEIGHT_SUFFIX) and v.dim() in LORA_DIMS]
    return WeightPairs(base_model, tuned_model, unet_layer_names(base_model, keys), device)


def clip_pairs(model, base_clip, tuned_clip, device: torch.device) -> WeightPairs:
    return WeightPairs(base_clip.patcher, tuned_clip.patcher, clip_layer_names(model, base_clip), device)
