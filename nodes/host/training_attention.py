"""The attention the denoiser computes while training: the host's own choice where it trains well, else the
host's own PyTorch attention (scaled_dot_product_attention), through the host's override hook.

The host picks its attention for inference. Some choices do not suit training: SageAttention's kernels have
no backward pass, and the basic, split and sub-quadratic paths (the host's pick on a CPU) keep every
query chunk's attention probabilities for backward, where PyTorch's fused attention keeps only a
log-sum-exp per query. Samples rendered during a run still go through the host's own choice.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import comfy.ldm.modules.attention as attention

# The host's attention functions (comfy.ldm.modules.attention) replaced by attention_pytorch while training.
REPLACED_WHILE_TRAINING = frozenset({"attention_sage", "attention_basic", "attention_split", "attention_sub_quad"})


def trains_with(host_function: Callable[..., Any]) -> Callable[..., Any]:
    """The attention function training uses where the host would call `host_function`."""
    if getattr(host_function, "__name__", "") in REPLACED_WHILE_TRAINING:
        return attention.attention_pytorch
    return host_function


def _override(host_function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return trains_with(host_function)(*args, **kwargs)


def training_transformer_options() -> dict[str, Any]:
    """transformer_options for one training forward (a new dict each call: the host's models write into it).
    Empty on a host without the override hook (comfy.ldm.modules.attention.wrap_attn, ComfyUI 0.3.6x on)."""
    if not hasattr(attention, "wrap_attn"):
        return {}
    return {"optimized_attention_override": _override}
