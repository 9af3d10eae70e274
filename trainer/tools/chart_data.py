"""What a LoRA tool node shows in its chart after a run: per layer the rank kept and the share of the change kept,
and the leading singular values (the spectrum) the rank was cut from. Plain JSON types, rounded, bounded."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .layer import LayerReport

CHART_VALUES = 32  # leading singular values sent per layer (the report keeps up to 64)
SIGNIFICANT = 4


def _round(value: float) -> float:
    return float(f"{value:.{SIGNIFICANT}g}")


def chart_data(reports: Sequence[LayerReport], rank_rule: str) -> dict[str, Any]:
    """{"rule", "layers": [{"prefix", "rank", "input_rank", "kept_share", "spectrum"}]} for the factorised
    layers, in file order; the spectrum holds the leading CHART_VALUES singular values, descending."""
    layers = [{"prefix": r.prefix, "rank": r.rank, "input_rank": r.input_rank, "kept_share": _round(r.kept_share),
               "spectrum": [_round(v) for v in r.spectrum[:CHART_VALUES]]} for r in reports if r.rank]
    return {"rule": rank_rule, "layers": layers}
