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
            pair = {"w{i}_a": (r, layer.out_features), "w{i}_b": (r, layer.in_features)}
            core = (r, r, *layer.kernel_size)
            return {**{f"hada_t{i}": core for i in (1, 2)},
                    **{f"hada_{k.format(i=i)}": v for i in (1, 2) for k, v in pair.items()}}
        return {f"hada_w{i}_{side}": ((layer.out_features, r) if side == "a" else (r, layer.flat_in))
                for i in (1, 2) for side in ("a", "b")}

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
