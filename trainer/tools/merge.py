"""Merge LoRAs: a stack of sources with strengths -> one plain kohya LoRA/LoCon, by concat (exact) or SVD to a rank.

`concat` stacks each layer's factors (ranks add up), so the file applied equals the stack applied, to fp32
rounding. `svd` sums each layer's changes and keeps the leading singular directions (a rank or a dynamic
rule, see `rank.RankRule`); it takes any adapter kind, and DoRA given the model's weights (`dora_base`). Layers
are done one at a time, so only one layer's change is ever formed; `on_layer` is called after each (for
progress, and to cancel by raising).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..errors import LoraToolError, LoraValueError
from .dora_base import DoraBase, check_doras, dense_doras, dora_metadata, dora_names
from .layer import CONCAT, MERGE_MODES, SVD, LayerPlan, LayerReport, merge_layer
from .metadata import mean_kept_share, tool_metadata
from .rank import RankRule
from .sources import Source, gather_layers
from .svd import METHODS, compute_device

logger = logging.getLogger(__name__)

SAVE_DTYPES: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# on_layer(done, total, prefix): called after each layer; raise to stop (nothing has been written then).
LayerCallback = Callable[[int, int, str], None]


@dataclass(frozen=True)
class ToolResult:
    """The output file's tensors and metadata (not yet written), and what happened to each layer."""

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    layers: tuple[LayerReport, ...]

    @property
    def mean_kept_share(self) -> float:
        return mean_kept_share(self.layers)

    def summary(self) -> str:
        """One line per factorised layer: rank and kept share, worst first."""
        rows = sorted((r for r in self.layers if r.rank), key=lambda r: r.kept_share)
        lines = [f"{len(rows)} layers, mean kept share {self.mean_kept_share:.2%}"]
        lines += [f"{r.prefix}: rank {r.input_rank or '-'} -> {r.rank}, kept {r.kept_share:.2%}" for r in rows]
        return "\n".join(lines)


def check_output_settings(svd_method: str, save_dtype: str | None, alpha: float | None) -> None:
    """Refuses an unknown SVD method or precision, or a non-positive alpha, before any layer is read."""
    if svd_method not in METHODS:
        raise LoraToolError(f"SVD method {svd_method!r} is unknown; use one of {', '.join(METHODS)}.")
    if save_dtype is not None and save_dtype not in SAVE_DTYPES:
        raise LoraToolError(f"precision {save_dtype!r} is unknown; use one of {', '.join(SAVE_DTYPES)}.")
    if alpha is not None and not alpha > 0:
        raise LoraToolError(f"alpha must be a positive number, got {alpha}.")


def _cast(tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in tensors.items():
        if not bool(torch.isfinite(value).all()):
            raise LoraValueError(f"The result holds NaN/Inf at {key}; a source LoRA is damaged.", key=key)
        if key.endswith(".alpha"):
            out[key] = value.float()  # loaders read alpha with .item(); fp16 would round it
            continue
        converted = value.to(dtype).contiguous()
        if not bool(torch.isfinite(converted).all()):
            raise LoraValueError(f"{key} has values too large for {dtype} (max {value.abs().max().item():.3g}); "
                                 "save as bf16 or fp32.", key=key)
        out[key] = converted
    return out


def run_layers(sources: Sequence[Source], plan: LayerPlan, on_layer: LayerCallback | None = None,
               dtype: torch.dtype = torch.float16, dora_base: DoraBase | None = None,
               ) -> tuple[dict[str, torch.Tensor], tuple[LayerReport, ...], dict[str, str]]:
    """Every layer of the sources merged by `plan`, one layer at a time (the loop the tools share): the tensors,
    the reports, and the metadata of the DoRA sources' base (empty without DoRAs).

    A DoRA's change is taken against `dora_base` just before its layer is merged; without one it is refused."""
    if not sources:
        raise LoraToolError("No LoRAs to work on: connect a LORA_STACK with at least one enabled LoRA.")
    layers = gather_layers(list(sources))
    if not layers:
        raise LoraToolError("Every LoRA of the stack has strength 0 for all its layers; nothing to write.")
    check_doras(layers, plan.mode, dora_base)
    tensors: dict[str, torch.Tensor] = {}
    reports = []
    with torch.no_grad():
        for done, (prefix, contributions) in enumerate(layers.items(), start=1):
            out, report = merge_layer(prefix, dense_doras(prefix, contributions, dora_base), plan)
            tensors.update(_cast(out, dtype))
            reports.append(report)
            if on_layer is not None:
                on_layer(done, len(layers), prefix)
    return tensors, tuple(reports), dora_metadata(dora_names(layers), dora_base)


def merge_loras(sources: Sequence[Source], mode: str = CONCAT, rule: RankRule | None = None, *,
                output_name: str = "merged", alpha: float | None = None, save_dtype: str = "fp16",
                device: str | torch.device | None = None, svd_method: str = "auto",
                on_layer: LayerCallback | None = None, dora_base: DoraBase | None = None) -> ToolResult:
    """Merge `sources` into one LoRA; see the module docstring. `alpha` None writes alpha = rank (scale 1);
    `dora_base`: the weights DoRA sources' changes are taken against (svd only; without it a DoRA is refused)."""
    if mode not in MERGE_MODES:
        raise LoraToolError(f"merge mode {mode!r} is unknown; use 'concat' (exact) or 'svd' (to a rank).")
    if mode == SVD and rule is None:
        raise LoraToolError("mode 'svd' needs a rank.")
    check_output_settings(svd_method, save_dtype, alpha)
    plan = LayerPlan(mode=mode, rule=rule if mode == SVD else None, alpha=alpha, device=compute_device(device),
                     svd_method=svd_method)
    tensors, reports, dora_fields = run_layers(sources, plan, on_layer, SAVE_DTYPES[save_dtype], dora_base)
    names = ", ".join(f"{s.name} ({s.strength_model:g}/{s.strength_clip:g})" for s in sources)
    rank_label = "concat (sum of ranks)" if mode == CONCAT else rule.label  # type: ignore[union-attr]
    comment = f"merged by LoRA Lab ({mode}, {rank_label}) from {names}"
    metadata = tool_metadata(f"merge_{mode}", output_name, sources, reports, rank_label, alpha, comment)
    metadata.update(dora_fields)
    logger.info("merged %d LoRAs into %d layers (%s), mean kept share %.4f", len(sources), len(reports), mode,
                mean_kept_share(reports))
    return ToolResult(tensors, metadata, reports)
