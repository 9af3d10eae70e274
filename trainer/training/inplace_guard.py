"""Lets autograd run through host code that adds to its residual stream in place (`x += attn(norm(x))`).

Such code is fine without gradients; with them, the in-place add changes the tensor a normalisation layer
saved for its backward pass, and backward fails ("modified by an inplace operation"). Feeding every
normalisation layer a copy of its input keeps what it saved intact; the copies cost one activation each.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

NORMALISATIONS = (nn.LayerNorm, nn.GroupNorm)


def _copy_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    if args and isinstance(args[0], torch.Tensor) and args[0].requires_grad:
        return (args[0].clone(), *args[1:])
    return None  # no gradient flows through this input: nothing to protect


@contextlib.contextmanager
def normalisation_inputs_copied(*models: nn.Module) -> Iterator[int]:
    """While inside, every LayerNorm/GroupNorm of `models` works on a copy of its input; yields their count."""
    handles = [m.register_forward_pre_hook(_copy_input)
               for model in models for m in model.modules() if isinstance(m, NORMALISATIONS)]
    try:
        yield len(handles)
    finally:
        for handle in handles:
            handle.remove()
