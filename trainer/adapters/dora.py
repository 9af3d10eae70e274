"""DoRA: the magnitude that rides on a LoRA module (`dora_scale`, or PEFT's `lora_magnitude_vector`).

The host applies it (ComfyUI's `weight_decompose`); here it is only brought into the layout the host expects.
"""

from __future__ import annotations

import torch

from .base import Roles

DORA_ROLES = frozenset({"dora_scale", "magnitude"})


def is_dora(roles: Roles) -> bool:
    """True when a DoRA magnitude (`dora_scale` or PEFT `lora_magnitude_vector`) is present."""
    return not DORA_ROLES.isdisjoint(roles)


def dora_scale(roles: Roles, weight_ndim: int) -> torch.Tensor | None:
    """The DoRA magnitude as ComfyUI expects it: `dora_scale`, or PEFT's 1-D magnitude as [out, 1, …]."""
    if "dora_scale" in roles:
        return roles["dora_scale"]
    magnitude = roles.get("magnitude")
    if magnitude is None:
        return None
    return magnitude.reshape(magnitude.numel(), *([1] * (weight_ndim - 1)))
