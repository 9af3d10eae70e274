"""LyCORIS LoKr: delta = scale * kron(w1, w2), w1 a small full factor, w2 full or a rank-r product (or Tucker).

Sizes as LyCORIS' LokrModule (decompose_both and full_matrix off): out = a * b and in = c * d split by
`factorization` (lokr_factor); w1 [a, c] full; w2 [b, d(, kh, kw)] as lokr_w2_a [b, r] @ lokr_w2_b [r, d * kh * kw]
when r < max(b, d) / 2, else full (lokr_w2); with use_tucker on a kernel larger than 1x1 the decomposed w2 is a
Tucker core lokr_t2 [r, r, kh, kw] with lokr_w2_a [r, b], lokr_w2_b [r, d]. scale = alpha / r with a decomposed
w2; with both factors full it is 1 (and the file's alpha is r, as LyCORIS writes it). Init: w1, w2_a and the core
Kaiming-uniform, lokr_w2_b (or the full lokr_w2) zero, so the product is zero at step 0.

A Tucker w2 is written to the file rebuilt in full (lokr_w2 = scale * t2 x w2_a x w2_b, alpha = r, scale 1): the
host's LoKr loader (ComfyUI 0.3.75) fails on a lokr_t2 core (kron of its non-contiguous rebuild), leaving the layer
unpatched. The trained factors (and the resume state) stay Tucker.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ...adapters.base import tucker
from ...adapters.lokr import lokr_delta
from ..config import LoraShape
from .base import BaseWeight, LayerGeometry, TrainableAdapter
from .loha import uses_tucker


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """LyCORIS' split of `dimension` into (m, n), m <= n, m * n = dimension.

    A `factor` that divides the dimension is taken as one side; otherwise m is the divisor reached by walking the
    divisors upwards while they stay <= factor (-1: no bound), stopping at the first that is at least its
    cofactor: with -1 the most even split.
    """
    if factor > 0 and dimension % factor == 0:
        return min(factor, dimension // factor), max(factor, dimension // factor)
    bound = dimension if factor < 0 else factor
    m = 1
    for divisor in range(2, dimension + 1):
        if dimension % divisor:
            continue
        if divisor > bound:
            break
        m = divisor
        if divisor >= dimension // divisor:
            break
    return min(m, dimension // m), max(m, dimension // m)


def _split(layer: LayerGeometry, shape: LoraShape) -> tuple[tuple[int, int], tuple[int, int]]:
    """((a, b), (c, d)): out = a * b, in = c * d; w1 is [a, c], w2 is [b, d]."""
    return factorization(layer.out_features, shape.lokr_factor), factorization(layer.in_features, shape.lokr_factor)


def decomposes_w2(layer: LayerGeometry, shape: LoraShape) -> bool:
    """LyCORIS' rule: w2 is a rank-r product when the rank is below half its larger side, else full."""
    (_, b), (_, d) = _split(layer, shape)
    return shape.rank < max(b, d) / 2


class LokrKind(TrainableAdapter):
    """The Kronecker factors of one base layer."""

    kind = "lokr"

    @classmethod
    def factor_shapes(cls, layer: LayerGeometry, shape: LoraShape) -> dict[str, tuple[int, ...]]:
        (a, b), (c, d) = _split(layer, shape)
        r, kernel = shape.rank, layer.kernel_size
        shapes: dict[str, tuple[int, ...]] = {"lokr_w1": (a, c)}
        if not decomposes_w2(layer, shape):
            shapes["lokr_w2"] = (b, d, *kernel)
        elif uses_tucker(layer, shape):
            shapes.update(lokr_t2=(r, r, *kernel), lokr_w2_a=(r, b), lokr_w2_b=(r, d))
        else:
            shapes.update(lokr_w2_a=(b, r), lokr_w2_b=(r, d * math.prod(kernel)))
        return shapes

    @classmethod
    def file_alpha(cls, layer: LayerGeometry, shape: LoraShape) -> float:
        return float(shape.alpha) if decomposes_w2(layer, shape) else float(shape.rank)

    def scale_for(self, alpha: float) -> float:
        # Loaders divide alpha by the decomposed factor's rank; with both factors full there is none: scale 1.
        return alpha / self.rank if "lokr_w2_b" in self._parameters else 1.0

    def reset_parameters(self, generator: torch.Generator, base_weight: BaseWeight) -> None:
        factors = self.factors()
        if "lokr_w2" in factors:
            nn.init.zeros_(factors["lokr_w2"])
        else:
            if "lokr_t2" in factors:
                nn.init.kaiming_uniform_(factors["lokr_t2"], a=math.sqrt(5), generator=generator)
            nn.init.kaiming_uniform_(factors["lokr_w2_a"], a=math.sqrt(5), generator=generator)
            nn.init.zeros_(factors["lokr_w2_b"])
        nn.init.kaiming_uniform_(factors["lokr_w1"], a=math.sqrt(5), generator=generator)

    def scaled_delta(self) -> torch.Tensor:
        return (lokr_delta(self.factors()) * self.scale).reshape(self.layer.weight_shape)

    def file_tensors(self) -> dict[str, torch.Tensor]:
        if "lokr_t2" not in self._parameters:
            return super().file_tensors()
        with torch.no_grad():
            factors = {role: param.detach().float() for role, param in self.named_parameters()}
            w2 = tucker(factors["lokr_t2"], factors["lokr_w2_b"], factors["lokr_w2_a"]) * self.scale
        return {"lokr_w1": factors["lokr_w1"].clone(), "lokr_w2": w2.contiguous(),
                "alpha": torch.tensor(float(self.rank))}
