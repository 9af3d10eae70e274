"""LoRA (LoCon on convolutions): `base(x) + (alpha / rank) * up(down(dropout(x)))`, kohya's layout and init.

A = down, B = up: `down` maps the layer input to `rank` channels (Linear(in, r), or a Conv2d with the layer's
kernel/stride/padding/dilation), `up` maps back to the output (Linear(r, out), or a 1x1 Conv2d). It runs on
the activations (the weight delta is never built in training). Rank dropout as sd-scripts' LoRAModule: a mask
per image over the rank channels, the kept ones scaled by 1 / (1 - p).
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from ...adapters.lora import lora_delta
from ...errors import LoraTargetError
from ..config import LoraShape
from .base import BaseWeight, LayerGeometry, TrainableAdapter


def rank_dropout_mask(lx: torch.Tensor, rank: int, p: float, is_conv: bool) -> torch.Tensor:
    """sd-scripts' rank dropout mask for `down`'s output `lx`: one draw per image and rank channel (kept when the
    draw is above p), shaped to broadcast over tokens ([B, ..., r]) or pixels ([B, r, H, W])."""
    keep = torch.rand((lx.shape[0], rank), device=lx.device) > p
    if is_conv:
        return keep.view(lx.shape[0], rank, *[1] * (lx.dim() - 2))
    return keep.view(lx.shape[0], *[1] * (lx.dim() - 2), rank)


def check_rank(layer: LayerGeometry, rank: int, name: str) -> None:
    """A LoRA's rank cannot exceed the layer's smaller side."""
    if rank > min(layer.flat_in, layer.out_features):
        raise LoraTargetError(
            f"rank = {rank} is larger than layer '{name}' allows: it maps {layer.flat_in} inputs to "
            f"{layer.out_features} outputs, so rank can be at most {min(layer.flat_in, layer.out_features)}. "
            "Lower the rank.")


class LoraKind(TrainableAdapter):
    """The down/up pair and alpha for one base layer."""

    kind = "lora"
    lora_down: nn.Linear | nn.Conv2d
    lora_up: nn.Linear | nn.Conv2d

    def __init__(self, layer: LayerGeometry, shape: LoraShape, name: str) -> None:
        check_rank(layer, shape.rank, name)
        super().__init__(layer, shape, name)
        rank = shape.rank
        # Built on "meta" so torch's default init does not consume the host's global RNG.
        if layer.is_conv:
            kernel = cast(tuple[int, int], layer.kernel_size)
            self.lora_down = nn.Conv2d(
                layer.in_features, rank, kernel, cast(tuple[int, int], layer.stride),
                cast("str | tuple[int, int]", layer.padding), cast(tuple[int, int], layer.dilation),
                bias=False, padding_mode=layer.padding_mode, device="meta")
            self.lora_up = nn.Conv2d(rank, layer.out_features, (1, 1), bias=False, device="meta")
        else:
            self.lora_down = nn.Linear(layer.in_features, rank, bias=False, device="meta")
            self.lora_up = nn.Linear(rank, layer.out_features, bias=False, device="meta")
        self.lora_down.to_empty(device="cpu")
        self.lora_up.to_empty(device="cpu")

    @classmethod
    def factor_shapes(cls, layer: LayerGeometry, shape: LoraShape) -> dict[str, tuple[int, ...]]:
        ones = (1,) * len(layer.kernel_size)
        return {"lora_down.weight": (shape.rank, layer.in_features, *layer.kernel_size),
                "lora_up.weight": (layer.out_features, shape.rank, *ones)}

    def reset_parameters(self, generator: torch.Generator, base_weight: BaseWeight) -> None:
        # kohya's init: down random, up zero, so up @ down == 0 and the model is unchanged at step 0.
        nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5), generator=generator)
        nn.init.zeros_(self.lora_up.weight)

    def scaled_delta(self) -> torch.Tensor:
        down, up = self.lora_down.weight, self.lora_up.weight
        # up is 1x1 for convs, so the combined kernel is a channel mix of down's kernel.
        return (lora_delta(up, down) * self.scale).reshape(self.layer.weight_shape)

    def forward(self, x: torch.Tensor, base_weight: BaseWeight) -> torch.Tensor:
        x = x.to(self.lora_down.weight.dtype)  # under CUDA autocast the matmuls still run in the autocast dtype
        if self.training and self.dropout > 0:
            x = F.dropout(x, p=self.dropout, training=True)
        lx = self.lora_down(x)
        scale = self.scale
        if self.training and self.rank_dropout > 0:
            lx = lx * rank_dropout_mask(lx, self.rank, self.rank_dropout, self.layer.is_conv)
            scale = scale / (1.0 - self.rank_dropout)  # as if the rank were smaller
        return self.lora_up(lx * scale)  # scaled at rank width: the cheapest place

    def training_delta(self, base_weight: BaseWeight) -> torch.Tensor:
        return self.scaled_delta()  # rank dropout acts on the activations (forward), never on a built delta
