"""LyCORIS LoHa: delta = (alpha / rank) * (w1_a @ w1_b) * (w2_a @ w2_b), a Hadamard product of two rank-r pairs.

Layout and init as LyCORIS' LohaModule: w?_a [out, r], w?_b [r, in * kh * kw]; with use_tucker on a kernel
larger than 1x1, cores hada_t? [r, r, kh, kw] with w?_a [r, out], w?_b [r, in]. w1_b, w2_b ~ N(0, 1),
w1_a ~ N(0, 0.1), cores ~ N(0, 0.1), and w2_a = 0, so the product is zero at step 0.
"""

from __future__ import annotations

import torch
from torch import nn

from ...adapters.loha import loha_delta
from ..config import LoraShape
from .base import BaseWeight, LayerGeometry, TrainableAdapter


def uses_tucker(layer: LayerGeometry, shape: LoraShape) -> bool:
    """LyCORIS' rule: a Tucker core only where asked and the kernel is larger than 1x1."""
    return shape.use_tucker and any(k != 1 for k in layer.kernel_size)


class LohaKind(TrainableAdapter):
    """The two factor pairs (and Tucker cores) of one base layer."""

    kind = "loha"

    @classmethod
    def factor_shapes(cls, layer: LayerGeometry, shape: LoraShape) -> dict[str, tuple[int, ...]]:
        r = shape.rank
        if uses_tucker(layer, shape):
            core, side_a, side_b = (r, r, *layer.kernel_size), (r, layer.out_features), (r, layer.in_features)
            return {"hada_t1": core, "hada_t2": core, "hada_w1_a": side_a, "hada_w1_b": side_b,
                    "hada_w2_a": side_a, "hada_w2_b": side_b}
        side_a, side_b = (layer.out_features, r), (r, layer.flat_in)
        return {"hada_w1_a": side_a, "hada_w1_b": side_b, "hada_w2_a": side_a, "hada_w2_b": side_b}

    def reset_parameters(self, generator: torch.Generator, base_weight: BaseWeight) -> None:
        factors = self.factors()
        for core in ("hada_t1", "hada_t2"):
            if core in factors:
                nn.init.normal_(factors[core], std=0.1, generator=generator)
        nn.init.normal_(factors["hada_w1_b"], std=1.0, generator=generator)
        nn.init.normal_(factors["hada_w1_a"], std=0.1, generator=generator)
        nn.init.normal_(factors["hada_w2_b"], std=1.0, generator=generator)
        nn.init.zeros_(factors["hada_w2_a"])  # one factor zero: the delta is zero at step 0

    def scaled_delta(self) -> torch.Tensor:
        return (loha_delta(self.factors()) * self.scale).reshape(self.layer.weight_shape)
