"""DoRA: a LoRA whose changed weight is rescaled to a trained magnitude, W' = m * (W + s * up @ down) / ||W + ...||.

The norm is taken per input column (over the outputs and the kernel), the DoRA paper's ||.||_c and LyCORIS'
wd_on_output=False: the orientation that the host's `weight_decompose` normalises with the changed weight (its
per-output branch divides by the norm of W alone). `dora_scale` is stored as the host reads it, [1, in(, 1, 1)];
it starts at the base weight's column norms, computed as the forward computes them, so W' = W exactly at step 0.
The base weight is read in fp32 one layer at a time, in the forward and once at init; it is never kept.
Rank dropout (LyCORIS): output rows of s * up @ down dropped before the rescaling.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import LoraShape
from .base import BaseWeight, LayerGeometry, TrainableAdapter
from .lora import LoraKind


def column_norm(weight: torch.Tensor) -> torch.Tensor:
    """Per input column norms of `weight` [out, in(, kh, kw)] over outputs and kernel, + fp32 eps, shaped
    [1, in(, 1, 1)]: as the host's weight_decompose computes them (fp32)."""
    per_input = weight.transpose(0, 1).reshape(weight.shape[1], -1).norm(dim=1, keepdim=True)
    shaped = per_input.reshape(weight.shape[1], *[1] * (weight.dim() - 1)).transpose(0, 1)
    return shaped + torch.finfo(torch.float32).eps


def decomposed_weight(weight: torch.Tensor, delta: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """W' = magnitude * (W + delta) / column_norm(W + delta), fp32."""
    changed = weight + delta
    return changed * (magnitude / column_norm(changed))


class DoraKind(LoraKind):
    """A LoRA pair plus the magnitude `dora_scale` of one base layer."""

    kind = "dora"
    dora_scale: nn.Parameter  # registered from factor_shapes by TrainableAdapter

    @classmethod
    def factor_shapes(cls, layer: LayerGeometry, shape: LoraShape) -> dict[str, tuple[int, ...]]:
        ones = (1,) * len(layer.kernel_size)
        return {**super().factor_shapes(layer, shape), "dora_scale": (1, layer.in_features, *ones)}

    def reset_parameters(self, generator: torch.Generator, base_weight: BaseWeight) -> None:
        super().reset_parameters(generator, base_weight)
        with torch.no_grad():
            self.dora_scale.copy_(column_norm(base_weight()))

    # The rescaling acts on the whole weight, so the forward applies the rebuilt W' - W (not LoRA's activations).
    forward = TrainableAdapter.forward

    def training_delta(self, base_weight: BaseWeight) -> torch.Tensor:
        delta = TrainableAdapter.training_delta(self, base_weight)  # with LyCORIS' output-row dropout
        weight = base_weight()
        return decomposed_weight(weight, delta, self.dora_scale) - weight
