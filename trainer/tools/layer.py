"""One layer of a merge or resize: its contributions joined (concat) or summed and re-factorised (SVD).

Out comes plain kohya LoRA/LoCon: `lora_up` [out, k(,1,1)], `lora_down` [k, in(,kh,kw)], `.alpha`; a change no
LoRA pair can hold (a 1-D norm weight) as `.diff`, bias changes as `.diff_b` — the host reads all of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..adapters.registry import adapter_kind
from ..errors import LoraShapeError, LoraToolError
from .rank import RankRule
from .sources import Contribution, bias_delta, product_factors
from .svd import Spectrum, matrix_spectrum, product_spectrum

CONCAT = "concat"
SVD = "svd"
MERGE_MODES = (CONCAT, SVD)


@dataclass(frozen=True)
class LayerReport:
    """What happened to one layer: input rank (sum of the sources'), output rank, kept share and error."""

    prefix: str
    input_rank: int | None  # None when a source is not a LoRA (LoHa, LoKr, full diff)
    rank: int  # 0 for a layer written as a full diff or bias only
    kept_share: float  # ||kept||_F / ||delta||_F of the summed change
    error: float  # ||delta - kept||_F
    norm: float  # ||delta||_F
    spectrum: tuple[float, ...] = ()  # leading singular values (at most SPECTRUM_VALUES)
    conv: bool = False  # a conv layer with a kernel larger than 1x1 (kohya's conv_dim)


SPECTRUM_VALUES = 64


@dataclass(frozen=True)
class LayerPlan:
    """How a layer's change is written: alpha (None: alpha = rank) and the compute settings."""

    mode: str
    rule: RankRule | None
    alpha: float | None
    device: torch.device
    svd_method: str = "auto"


def _delta_shape(prefix: str, contributions: list[Contribution]) -> tuple[int, ...] | None:
    shapes = [c.delta_shape for c in contributions if c.delta_shape is not None]
    if not shapes:
        return None
    first = shapes[0]
    for c, shape in zip([c for c in contributions if c.delta_shape is not None], shapes, strict=True):
        if math.prod(shape) != math.prod(first):
            raise LoraShapeError(f"Layer {prefix}: '{c.source}' changes a weight of shape {list(shape)} but "
                                 f"'{contributions[0].source}' one of shape {list(first)}; the LoRAs were made "
                                 "for different models and cannot be merged.", key=prefix)
    # A 4-D shape (kernels kept) is the most informative; a file that flattened its conv kernels says less.
    return max(shapes, key=len)


def _full_delta(contributions: list[Contribution], rows: int) -> torch.Tensor:
    total: torch.Tensor | None = None
    for c in contributions:
        delta = adapter_kind(c.kind).delta(c.roles)
        if delta is None:
            continue
        delta = delta.float().reshape(rows, -1) * c.coefficient
        total = delta if total is None else total + delta
    assert total is not None  # only called when some contribution changes the weight
    return total


def _bias(contributions: list[Contribution]) -> torch.Tensor | None:
    total = None
    for c in contributions:
        delta = bias_delta(c)
        if delta is not None:
            total = delta if total is None else total + delta.reshape(total.shape)
    return total


def _is_conv(shape: tuple[int, ...]) -> bool:
    return len(shape) == 4 and shape[2] * shape[3] > 1


def _lora_tensors(prefix: str, up: torch.Tensor, down: torch.Tensor, shape: tuple[int, ...],
                  alpha: float | None) -> dict[str, torch.Tensor]:
    rank = int(down.shape[0])
    alpha = float(rank) if alpha is None else alpha
    up = up * (rank / alpha)  # the host applies alpha / rank; keep the change as computed
    if len(shape) == 4:  # kohya LoCon: up [out, k, 1, 1], down [k, in, kh, kw]
        up, down = up.reshape(shape[0], rank, 1, 1), down.reshape(rank, *shape[1:])
    return {f"{prefix}.lora_down.weight": down.contiguous(), f"{prefix}.lora_up.weight": up.contiguous(),
            f"{prefix}.alpha": torch.tensor(alpha, dtype=torch.float32)}


def _spectrum(contributions: list[Contribution], rows: int, plan: LayerPlan, conv: bool) -> Spectrum:
    if all(c.is_factored for c in contributions):
        ups, downs = zip(*(product_factors(c) for c in contributions), strict=True)
        return product_spectrum(torch.cat(ups, 1), torch.cat(downs, 0), plan.device)
    cap = plan.rule.cap(conv) if plan.rule else rows
    return matrix_spectrum(_full_delta(contributions, rows), cap, plan.device, plan.svd_method)


def merge_layer(prefix: str, contributions: list[Contribution],
                plan: LayerPlan) -> tuple[dict[str, torch.Tensor], LayerReport]:
    """The output tensors of one layer and what was kept; see the module docstring."""
    shape = _delta_shape(prefix, contributions)
    out: dict[str, torch.Tensor] = {}
    bias = _bias(contributions)
    if bias is not None:
        out[f"{prefix}.diff_b"] = bias.contiguous()
    weighted = [c for c in contributions if c.delta_shape is not None]
    factored = all(c.is_factored for c in weighted)
    input_rank = sum(int(c.roles["down"].shape[0]) for c in weighted) if factored else None
    if shape is None:
        return out, LayerReport(prefix, input_rank, 0, 1.0, 0.0, 0.0)
    if len(shape) < 2:  # a norm weight: no low-rank form, summed whole
        out[f"{prefix}.diff"] = _full_delta(weighted, 1).reshape(shape).contiguous()
        return out, LayerReport(prefix, None, 0, 1.0, 0.0, float(out[f"{prefix}.diff"].norm()))
    if plan.mode == CONCAT:
        if not factored:
            other = next(c for c in weighted if not c.is_factored)
            raise LoraToolError(f"Layer {prefix} of '{other.source}' is {other.kind.upper()}, not LoRA/LoCon: concat "
                                "joins LoRA factors exactly and cannot hold it. Choose mode 'svd' with a rank.")
        ups, downs = zip(*(product_factors(c) for c in weighted), strict=True)
        up, down = torch.cat(ups, 1), torch.cat(downs, 0)
        norm = float(torch.linalg.matrix_norm(up @ down))
        out.update(_lora_tensors(prefix, up, down, shape, plan.alpha))
        return out, LayerReport(prefix, input_rank, int(down.shape[0]), 1.0, 0.0, norm, conv=_is_conv(shape))
    if plan.rule is None:
        raise LoraToolError("mode 'svd' needs a rank rule (a rank, or a dynamic method with a cap).")
    conv = _is_conv(shape)
    spectrum = _spectrum(weighted, shape[0], plan, conv)
    rank = min(plan.rule.choose(spectrum.S, spectrum.length, conv), int(spectrum.S.shape[0]))
    up, down = spectrum.factors(rank)
    out.update(_lora_tensors(prefix, up, down, shape, plan.alpha))
    values = tuple(float(v) for v in spectrum.S[:SPECTRUM_VALUES].cpu())
    return out, LayerReport(prefix, input_rank, rank, spectrum.kept_share(rank), spectrum.error(rank),
                            spectrum.norm, values, conv=conv)
