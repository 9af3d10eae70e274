"""A module's weight delta, whatever its kind: rank, alpha/rank scale, delta shape and the scaled fp32 delta.

A module is its tensors keyed by role (`down`, `up`, `alpha`, `hada_w1_a`, …, see `lora.keys`); pass a
parsed `LoraModule`'s `.tensors`. Semantics follow ComfyUI's `comfy/weight_adapter` (FORMATS.md §2.1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..errors import LoraShapeError
from .base import Roles
from .registry import adapter_kind, module_kind


def module_rank(roles: Roles) -> int | None:
    """The rank that divides alpha: down rows (LoRA), hada_w1_b rows (LoHa), the decomposed factor (LoKr)."""
    return adapter_kind(module_kind(roles)).rank(roles)


def module_scale(roles: Roles) -> float:
    """The factor ComfyUI multiplies the delta by: alpha / rank when both exist, else 1.0."""
    alpha = roles.get("alpha")
    rank = module_rank(roles)
    if alpha is None or not rank:
        return 1.0
    return float(alpha.float().item()) / rank


def module_delta_shape(roles: Roles) -> tuple[int, ...] | None:
    """Shape of the weight delta from tensor shapes only; None for a bias-only (`diff_b`) module.

    Shapes of conv deltas are 4-D when the file keeps kernels ([out, in, kh, kw]) and 2-D when it
    stores them flattened (ComfyUI trainer: [out, in*kh*kw]); compare numels with the model weight.
    """
    return adapter_kind(module_kind(roles)).delta_shape(roles)


def delta_weight(roles: Roles, weight_shape: Sequence[int]) -> torch.Tensor:
    """The scaled fp32 weight delta (alpha/rank applied, strength not), reshaped to `weight_shape`."""
    delta = adapter_kind(module_kind(roles)).delta(roles)
    if delta is None:
        return torch.zeros(tuple(weight_shape), dtype=torch.float32)
    if delta.numel() != math.prod(weight_shape):
        raise LoraShapeError(f"The LoRA delta has shape {list(module_delta_shape(roles) or [])} "
                             f"({delta.numel()} values); the model weight has shape {list(weight_shape)} "
                             f"({math.prod(weight_shape)} values). The LoRA was made for a different model.")
    return (delta * module_scale(roles)).reshape(tuple(weight_shape))
