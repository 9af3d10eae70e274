"""What every trainable adapter kind shares: the base layer's geometry, the parameters by file role, the forward.

An adapter's parameters are named by their role in the file (`hada_w1_a`, `lokr_w2`, `dora_scale`; LoRA's
`lora_down.weight`), so the set's state, the resume state and the exported file all use the same names. The
forward returns only what the adapter adds to the base layer's output, in fp32; kinds other than LoRA build
their weight delta and apply it with the layer's own op (LyCORIS' "rebuild" mode), recomputing it in backward
rather than keeping it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ...errors import LoraTargetError
from ..config import LoraShape

# Reads the base layer's weight in fp32 on a device (DoRA needs it); one layer at a time.
BaseWeight = Callable[[], torch.Tensor]


@dataclass(frozen=True)
class LayerGeometry:
    """The shape of the layer an adapter trains on, and how it applies a weight (Linear, or Conv2d's arguments)."""

    out_features: int
    in_features: int
    kernel_size: tuple[int, ...] = ()  # () for a linear layer
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] | str = ()
    dilation: tuple[int, ...] = ()
    padding_mode: str = "zeros"
    reversed_padding: tuple[int, ...] = ()  # F.pad's order, for padding modes other than zeros

    @classmethod
    def of(cls, base: nn.Module, name: str) -> LayerGeometry:
        """The geometry of an nn.Conv2d (groups = 1) or a linear layer (in_features / out_features)."""
        if isinstance(base, nn.Conv2d):
            if base.groups != 1:
                raise LoraTargetError(f"layer '{name}' is a grouped convolution (groups={base.groups}); "
                                      "adapters support only groups=1 convolutions.")
            return cls(base.out_channels, base.in_channels, tuple(base.kernel_size), tuple(base.stride),
                       base.padding if isinstance(base.padding, str) else tuple(base.padding),
                       tuple(base.dilation), base.padding_mode, tuple(base._reversed_padding_repeated_twice))
        return cls(int(cast(int, base.out_features)), int(cast(int, base.in_features)))

    @property
    def is_conv(self) -> bool:
        return bool(self.kernel_size)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """The base weight's shape: [out, in] or [out, in, kh, kw]."""
        return (self.out_features, self.in_features, *self.kernel_size)

    @property
    def flat_in(self) -> int:
        """Inputs per output: in * kh * kw."""
        return self.in_features * math.prod(self.kernel_size)

    def apply(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The layer's op with `weight` (its shape) and no bias: what a weight delta adds to the output."""
        if not self.is_conv:
            return F.linear(x, weight)
        if self.padding_mode != "zeros":
            x = F.pad(x, self.reversed_padding, mode=self.padding_mode)
            return F.conv2d(x, weight, None, self.stride, 0, self.dilation)
        return F.conv2d(x, weight, None, self.stride, self.padding, self.dilation)


def output_row_dropout(delta: torch.Tensor, p: float) -> torch.Tensor:
    """LyCORIS' rank dropout of a rebuilt delta: each output row kept with probability 1 - p, not rescaled.

    The draw comes from the global RNG of the delta's device, which the training loop seeds per step.
    """
    keep = (torch.rand(delta.shape[0], device=delta.device) > p).to(delta.dtype)
    return delta * keep.view(-1, *[1] * (delta.dim() - 1))


class TrainableAdapter(nn.Module):
    """One kind's trainable factors on one base layer; `forward(x, base_weight)` returns what it adds (fp32)."""

    kind: ClassVar[str]
    alpha: torch.Tensor

    def __init__(self, layer: LayerGeometry, shape: LoraShape, name: str) -> None:
        super().__init__()
        self.layer, self.name = layer, name
        self.rank = shape.rank
        self.dropout, self.rank_dropout, self.module_dropout = shape.dropout, shape.rank_dropout, shape.module_dropout
        for role, factor_shape in self.factor_shapes(layer, shape).items():
            if "." not in role:  # LoRA's `lora_down.weight` lives in its own submodules
                self.register_parameter(role, nn.Parameter(torch.empty(factor_shape)))
        alpha = self.file_alpha(layer, shape)
        self.register_buffer("alpha", torch.tensor(alpha))
        # A Python float, so the forward never reads the alpha buffer back from the device (a sync per layer
        # on a GPU); load_alpha keeps it in step with the buffer.
        self.scale = self.scale_for(alpha)

    @classmethod
    def factor_shapes(cls, layer: LayerGeometry, shape: LoraShape) -> dict[str, tuple[int, ...]]:
        """The trainable tensors' shapes by role (their names in the file), without building them."""
        raise NotImplementedError

    @classmethod
    def file_alpha(cls, layer: LayerGeometry, shape: LoraShape) -> float:
        """The alpha the file records for this layer (the configured one unless the kind fixes it)."""
        return float(shape.alpha)

    def scale_for(self, alpha: float) -> float:
        """The factor the delta is multiplied by, as loaders compute it from the file's alpha."""
        return alpha / self.rank

    def load_alpha(self, alpha: torch.Tensor) -> None:
        """Take a saved alpha (resume), keeping the Python scale in step."""
        self.alpha.copy_(alpha)
        self.scale = self.scale_for(float(alpha))

    def reset_parameters(self, generator: torch.Generator, base_weight: BaseWeight) -> None:
        """The kind's initialisation, drawn from `generator`, such that the layer is unchanged at step 0."""
        raise NotImplementedError

    def file_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors a file holds for this layer, by role (with `alpha`), fp32 copies: the factors as trained."""
        out = {role: param.detach().float().clone() for role, param in self.named_parameters()}
        out["alpha"] = self.alpha.detach().float().clone()
        return out

    def factors(self) -> dict[str, torch.Tensor]:
        """The trainable tensors by role (live parameters: differentiable)."""
        return dict(self.named_parameters())

    def scaled_delta(self) -> torch.Tensor:
        """The kind's low-rank delta x scale, fp32, in the base weight's shape (differentiable)."""
        raise NotImplementedError

    def training_delta(self, base_weight: BaseWeight) -> torch.Tensor:
        """W' - W as the forward applies it: with rank dropout while training (differentiable)."""
        delta = self.scaled_delta()
        if self.training and self.rank_dropout > 0:
            delta = output_row_dropout(delta, self.rank_dropout)
        return delta

    def forward(self, x: torch.Tensor, base_weight: BaseWeight) -> torch.Tensor:
        # Parameters stay fp32 for stable updates; the base may compute in fp16/bf16, so the input is cast here
        # (the set's hook casts the result back to the base layer's output dtype).
        x = x.to(torch.float32)
        if self.training and self.dropout > 0:
            x = F.dropout(x, p=self.dropout, training=True)
        if torch.is_grad_enabled():
            # Rebuilt again in backward (same RNG, so the same rank dropout): between forward and backward autograd
            # keeps no full-size weight of this layer, so only one layer's rebuilt weight exists at a time.
            return checkpoint(self._rebuilt_output, x, base_weight, use_reentrant=False)
        return self._rebuilt_output(x, base_weight)

    def _rebuilt_output(self, x: torch.Tensor, base_weight: BaseWeight) -> torch.Tensor:
        return self.layer.apply(x, self.training_delta(base_weight))

    def delta_weight(self, base_weight: BaseWeight) -> torch.Tensor:
        """The fp32 weight delta W' - W (base weight shape) this adapter adds, as a loader merges it."""
        with torch.no_grad():
            was_training = self.training
            self.train(False)
            try:
                return self.training_delta(base_weight).detach()
            finally:
                self.train(was_training)
