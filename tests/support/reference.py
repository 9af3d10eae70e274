"""Reference oracles the tests compare against: a full weight merge (with DoRA) and the bias delta, in fp32.

The host merges LoRAs itself; these restate what it computes, so tests can check deltas, exports and
DoRA handling without the host. They are no part of the engine (nothing in `trainer/` merges weights).
"""

from __future__ import annotations

import torch

from trainer.adapters.base import Roles
from trainer.adapters.delta import delta_weight
from trainer.adapters.dora import dora_scale
from trainer.errors import LoraValueError


def bias_delta(roles: Roles) -> torch.Tensor | None:
    """The fp32 bias delta (`diff_b`, or LyCORIS `b_norm`), or None."""
    bias = roles.get("diff_b", roles.get("b_norm"))
    return None if bias is None else bias.float()


def module_bias_numel(roles: Roles) -> int | None:
    """Number of bias elements the module changes (`diff_b` / `b_norm`), or None."""
    bias = roles.get("diff_b", roles.get("b_norm"))
    return None if bias is None else bias.numel()


def merge_weight(weight: torch.Tensor, roles: Roles, strength: float = 1.0) -> torch.Tensor:
    """`weight + strength * delta` in fp32 (DoRA per ComfyUI's `weight_decompose`); refuses NaN/Inf."""
    w = weight.float()
    delta = delta_weight(roles, w.shape)
    scale = dora_scale(roles, w.dim())
    if scale is None:
        merged = w + strength * delta
    else:
        merged = _dora_merge(w, delta, scale.float(), strength)
    if not torch.isfinite(merged).all():
        raise LoraValueError("Merging the LoRA gave NaN/Inf values (strength or alpha too large, or a damaged "
                             "file); lower the strength or export the LoRA again.")
    return merged


def _dora_merge(w: torch.Tensor, delta: torch.Tensor, scale: torch.Tensor, strength: float) -> torch.Tensor:
    weight_calc = w + delta
    rest = [1] * (w.dim() - 1)
    if scale.shape[0] == w.shape[0]:
        # ComfyUI normalises rows of the *original* weight on the output axis.
        norm = w.reshape(w.shape[0], -1).norm(dim=1, keepdim=True).reshape(w.shape[0], *rest)
    else:
        norm = (weight_calc.transpose(0, 1).reshape(w.shape[1], -1).norm(dim=1, keepdim=True)
                .reshape(w.shape[1], *rest).transpose(0, 1))
    weight_calc = weight_calc * (scale / (norm + torch.finfo(torch.float32).eps))
    return w + strength * (weight_calc - w)
