"""The connected MODEL (and CLIP) as the base a DoRA's change is taken against, in Merge LoRAs and Resize LoRA.

For one layer: the weight as the patcher computes with it (`model_weights.patched_weight`: its own patches and
weight wrappers), and the same with the DoRA module alone appended at the row's strength, as the host's own
`comfy.lora.load_lora` builds it and `calculate_weight` applies it (`weight_decompose`); the change is their
difference, fp32 on the compute device. Only that layer is formed. The base weights read are hashed (sha256 of
their fp32 bytes, in the order read), so the output file records what its DoRA changes were taken against.
"""
from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import comfy.lora
import torch

from ...trainer.errors import LoraMismatchError, LoraShapeError, LoraToolError
from ...trainer.lora.host_keys import module_delta_numel
from ...trainer.tools.sources import is_text_encoder
from .model import base_model_version, model_family
from .model_weights import patched_weight

logger = logging.getLogger(__name__)


@dataclass
class _Part:
    """One patcher (the MODEL's, or the CLIP's) with the host's kohya key map and its weights' patch lists."""

    label: str  # "MODEL" or "CLIP", as the node's inputs say
    input_name: str  # the node input that connects it
    patcher: object
    key_map: dict  # kohya prefix -> host weight key, or (key, offset[, function]) for a slice of a fused weight
    patches: dict  # host weight key -> [(weight, convert), patch, ...] (ModelPatcher.get_key_patches)


def _target(target) -> tuple[str, tuple | None, object]:
    """(host weight key, offset or None, function or None) of a key-map value, as ModelPatcher.add_patches reads it."""
    if isinstance(target, str):
        return target, None, None
    return target[0], target[1], target[2] if len(target) > 2 else None


class ModelDoraBase:
    """A `trainer.tools.dora_base.DoraBase` over the connected MODEL and CLIP (either may be None)."""

    def __init__(self, model, clip, device: torch.device) -> None:
        self.model, self.clip, self.device = model, clip, device
        self.parts: dict[str, _Part] = {}
        if model is not None:
            self.parts["model"] = _Part("MODEL", "model", model, comfy.lora.model_lora_keys_unet(model.model, {}),
                                        model.get_key_patches())
        if clip is not None:
            self.parts["clip"] = _Part("CLIP", "clip", clip.patcher,
                                       comfy.lora.model_lora_keys_clip(clip.cond_stage_model, {}),
                                       clip.patcher.get_key_patches())
        self._digest = hashlib.sha256()
        self._read = 0
        self._patched: set[str] = set()

    def _part(self, prefix: str) -> _Part | None:
        return self.parts.get("clip" if is_text_encoder(prefix) else "model")

    def check(self, source: str, prefix: str, entries: Mapping[str, torch.Tensor]) -> None:
        part = self._part(prefix)
        if part is None:
            which, name, strength = (("text-encoder", "CLIP to `clip`", "clip") if is_text_encoder(prefix)
                                     else ("diffusion-model", "MODEL to `model`", "model"))
            raise LoraToolError(f"'{source}' is a DoRA with {which} layers (e.g. {prefix}), and its change needs "
                                f"their weights: connect the {name} too (the one it is applied to), or set its "
                                f"{strength} strength to 0.")
        target = part.key_map.get(prefix)
        if target is None:
            raise LoraMismatchError(f"'{source}': its DoRA layer {prefix} matches no weight of the connected "
                                    f"{part.label} ({self._family()}); connect the model the DoRA was made for.",
                                    path=source, key=prefix)
        key, offset, _ = _target(target)
        shape = part.patches[key][0][0].shape
        numel = math.prod(shape) if offset is None else math.prod(shape) // shape[offset[0]] * offset[2]
        if module_delta_numel(entries) not in (None, numel):
            raise LoraShapeError(f"'{source}': its DoRA layer {prefix} changes {module_delta_numel(entries)} values "
                                 f"but the connected {part.label}'s weight {key} has {numel}; the DoRA was made for "
                                 "another model.", path=source, key=prefix)
        if len(part.patches[key]) > 1:  # e.g. the stack's own LoRAs applied: they become part of the base
            if not self._patched:
                logger.warning("LoRA Lab: the connected %s already carries patches (e.g. on %s); the DoRA's change "
                               "is taken against its weights with them. Connect the checkpoint's own %s to take it "
                               "against the base.", part.label, key, part.label)
            self._patched.add(key)

    def delta(self, prefix: str, entries: Mapping[str, torch.Tensor], strength: float) -> torch.Tensor:
        part = self._part(prefix)
        assert part is not None  # check() ran for every DoRA layer before any delta
        key, offset, function = _target(part.key_map[prefix])
        patches = comfy.lora.load_lora(dict(entries), {prefix: part.key_map[prefix]})
        if part.key_map[prefix] not in patches:
            raise LoraToolError(f"The host did not load DoRA layer {prefix} (see the log); its change cannot be taken.")
        entry = part.patches[key]
        base = patched_weight(part.patcher, entry, key, self.device)
        patched = patched_weight(part.patcher, [*entry, (strength, patches[part.key_map[prefix]], 1.0, offset,
                                                         function)], key, self.device)
        self._digest.update(base.cpu().numpy().tobytes())
        self._read += 1
        change = patched - base
        if offset is not None:
            change = change.narrow(*offset)
        if not bool(torch.isfinite(change).all()):
            raise LoraToolError(f"The DoRA's change of layer {prefix} against the connected {part.label} holds "
                                "NaN/Inf; the DoRA or the model is damaged.")
        return change.contiguous()

    def _family(self) -> str:
        return model_family(self.model) if self.model is not None else type(self.clip.cond_stage_model).__name__

    def record(self) -> dict[str, object]:
        record: dict[str, object] = {"against": "the connected " + " and ".join(p.label for p in self.parts.values()),
                                     "family": self._family(), "layers_read": self._read,
                                     "weights_sha256": self._digest.hexdigest(),
                                     "patched_layers": len(self._patched)}
        if self.model is not None:
            record["ss_base_model_version"] = base_model_version(self.model)[0]
        return record
