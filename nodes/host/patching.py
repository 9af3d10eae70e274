"""Applies a parsed LoRA to the host's MODEL and CLIP through the host's own patch mechanism, after checking it fits."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import comfy.lora

from ...trainer.errors import LoraMismatchError, LoraShapeError
from ...trainer.lora.block_weights import BlockWeights, block_of
from ...trainer.lora.file import LoraFile
from ...trainer.lora.host_keys import host_modules, module_delta_numel
from ...trainer.lora.info import base_model_hint, base_model_label, trigger_words
from .lora_files import parsed_loras

log = logging.getLogger(__name__)

# Below this share of matching layers a file is treated as made for another base model.
MIN_MATCHED_SHARE = 0.5
TEXT_ENCODER_PREFIXES = ("lora_te", "text_encoder", "text_encoders.", "lora_prior_te")


@dataclass(frozen=True)
class PatchReport:
    """How many of the file's layers were applied, and which did not match the model."""
    applied: int
    considered: int
    unmatched: tuple[str, ...]


def _is_text_encoder(prefix: str) -> bool:
    return prefix.startswith(TEXT_ENCODER_PREFIXES)


HOST_MODEL_LABELS = {"SD15": "SD1.5", "SD20": "SD2.x", "SDXL": "SDXL", "SDXLRefiner": "SDXL refiner",
                     "SD3": "SD3", "Flux": "Flux"}


def _model_family(model, clip) -> str:
    if model is not None:
        name = type(model.model.model_config).__name__
    else:
        name = type(clip.cond_stage_model).__name__
    return HOST_MODEL_LABELS.get(name, name)


def _target_shape(patcher, key) -> tuple[int, ...] | None:
    if not isinstance(key, str):  # (key, offset, ...) narrows a fused weight; the host checks those itself
        return None
    try:
        return tuple(patcher.get_model_object(key).shape)
    except AttributeError:
        return None


def _check_shapes(lora: LoraFile, modules: dict, key_map: dict, model, clip) -> None:
    for prefix, tensors in modules.items():
        delta = module_delta_numel(tensors)
        patcher = clip.patcher if _is_text_encoder(prefix) and clip is not None else model
        shape = _target_shape(patcher, key_map[prefix]) if patcher is not None else None
        if delta is None or shape is None:
            continue
        if delta != math.prod(shape):
            raise LoraShapeError(
                f"LoRA '{lora.source_name}': layer {prefix} does not fit the model: its change has "
                f"{delta} values, the model's weight {key_map[prefix]} has shape {list(shape)} "
                f"({math.prod(shape)} values). The file was made for a different model.",
                path=lora.source_name, key=prefix)


def _target_key(patch_key) -> str:
    return patch_key if isinstance(patch_key, str) else patch_key[0]  # (key, offset[, function]) of a fused weight


def _by_block_weight(patches: dict, weights: BlockWeights, lora: LoraFile) -> dict[float, dict]:
    """The host patches grouped by their layer's block multiplier (one `add_patches` call per group)."""
    blocks = {key: block_of(_target_key(key)) for key in patches}
    weights.check_fits(set(blocks.values()))
    present = set(blocks.values())
    hits = (set(weights.blocks) & present) | {b for b in present if b and any(b.startswith(k) for k in weights.groups)}
    if weights.layout is None and (weights.blocks or weights.groups) and not hits:
        log.warning("LoRA Lab: %s: the block weights '%s' name no block this LoRA has layers in (%s)",
                    lora.source_name, weights.text, ", ".join(sorted(b for b in present if b)))
    groups: dict[float, dict] = {}
    for key, patch in patches.items():
        groups.setdefault(weights.weight(blocks[key]), {})[key] = patch
    return groups


def patch_model_and_clip(model, clip, lora: LoraFile, strength_model: float, strength_clip: float,
                         block_weights: BlockWeights | None = None):
    """(patched MODEL, patched CLIP, PatchReport): clones carry the LoRA as host patches; the inputs stay untouched.

    With `block_weights`, each layer's strength is multiplied by its block's weight: the host patches are
    added once per distinct weight (a weight of 0 adds none), so the host computes
    `W + strength * weight * delta`, as if those layers had been scaled in the file.
    """
    modules = host_modules(lora)
    considered = {p: t for p, t in modules.items()
                  if (clip is not None if _is_text_encoder(p) else model is not None)}
    key_map: dict = {}
    if model is not None:
        key_map = comfy.lora.model_lora_keys_unet(model.model, key_map)
    if clip is not None:
        key_map = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, key_map)
    matched = {p: t for p, t in considered.items() if p in key_map}
    unmatched = tuple(sorted(set(considered) - set(matched)))
    if not considered or len(matched) < MIN_MATCHED_SHARE * len(considered):
        hint = base_model_hint(lora)
        connected = " and ".join(n for n, v in (("MODEL", model), ("CLIP", clip)) if v is not None)
        raise LoraMismatchError(
            f"LoRA '{lora.source_name}' does not fit this model: {len(matched)} of {len(considered)} of its "
            f"layers match the connected {connected} ({_model_family(model, clip)}). "
            + (f"It looks like a LoRA for {base_model_label(hint)}. " if hint else "")
            + "Use a LoRA trained for this base model.", path=lora.source_name)
    _check_shapes(lora, matched, key_map, model, clip)
    if unmatched:
        log.warning("LoRA Lab: %s: %d of %d layers do not match this model and were skipped (first: %s)",
                    lora.source_name, len(unmatched), len(considered), unmatched[0])
    flat = {k: v for tensors in matched.values() for k, v in tensors.items()}
    patches = comfy.lora.load_lora(flat, {p: key_map[p] for p in matched})
    new_model = model.clone() if model is not None else None
    new_clip = clip.clone() if clip is not None else None
    groups = {1.0: patches}
    if block_weights is not None and not block_weights.is_identity:
        groups = _by_block_weight(patches, block_weights, lora)
    for weight, group in groups.items():
        if weight == 0:
            continue
        # add_patches keeps only the keys the patcher's model has: the UNet's for MODEL, the encoders' for CLIP.
        if new_model is not None:
            new_model.add_patches(group, strength_model * weight)
        if new_clip is not None:
            new_clip.add_patches(group, strength_clip * weight)
    return new_model, new_clip, PatchReport(applied=len(matched), considered=len(considered), unmatched=unmatched)


def apply_named_lora(model, clip, name: str, strength_model: float, strength_clip: float,
                     block_weights: BlockWeights | None = None):
    """(MODEL, CLIP, trigger words): the named LoRA applied (each block's layers scaled by `block_weights`).

    The inputs come back as they are when both strengths are 0 or nothing is connected (a stack that
    only collects names and trigger words).
    """
    lora = parsed_loras.get(name)
    words = trigger_words(lora.metadata)
    if (strength_model == 0 and strength_clip == 0) or (model is None and clip is None):
        return model, clip, words
    new_model, new_clip, _ = patch_model_and_clip(model, clip, lora, strength_model, strength_clip, block_weights)
    return new_model, new_clip, words
