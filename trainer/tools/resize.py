"""Resize a LoRA: one file -> a smaller rank, fixed or chosen per layer (sd-scripts' `sv_ratio`, `sv_fro`,
`sv_cumulative`, with the rank as a cap), re-factorised by SVD layer by layer.

For LoRA/LoCon layers the SVD is exact and cheap (of the r x r core of up @ down, `svd.product_spectrum`);
other kinds (LoHa, LoKr, full diffs) are factorised from their full change. A layer never grows: at or above
its own rank it comes back unchanged (up to rounding). A DoRA is resized given the model's weights (`dora_base`):
its change against them, factorised from the full change.
"""

from __future__ import annotations

import logging

import torch

from ..lora.file import LoraFile
from .dora_base import DoraBase
from .layer import SVD, LayerPlan
from .merge import SAVE_DTYPES, LayerCallback, ToolResult, check_output_settings, run_layers
from .metadata import mean_kept_share, tool_metadata
from .rank import RankRule
from .sources import Source
from .svd import compute_device

logger = logging.getLogger(__name__)


def resize_lora(lora: LoraFile, rule: RankRule, *, output_name: str = "resized", sha256: str | None = None,
                alpha: float | None = None, save_dtype: str = "fp16", device: str | torch.device | None = None,
                svd_method: str = "auto", on_layer: LayerCallback | None = None,
                dora_base: DoraBase | None = None) -> ToolResult:
    """`lora` at the ranks `rule` chooses; `alpha` None writes alpha = rank (scale 1), else that alpha;
    `dora_base`: the weights a DoRA's change is taken against (without it a DoRA is refused)."""
    check_output_settings(svd_method, save_dtype, alpha)
    sources = [Source(lora, 1.0, 1.0, sha256)]
    plan = LayerPlan(mode=SVD, rule=rule, alpha=alpha, device=compute_device(device), svd_method=svd_method)
    tensors, reports, dora_fields = run_layers(sources, plan, on_layer, SAVE_DTYPES[save_dtype], dora_base)
    old = lora.ranks
    old_text = str(old[0]) if len(old) == 1 else (f"{old[0]}-{old[-1]}" if old else "full")
    comment = f"resized by LoRA Lab from {lora.source_name} (rank {old_text}) with {rule.label}"
    previous = lora.metadata.get("ss_training_comment", "")
    metadata = tool_metadata("resize", output_name, sources, reports, rule.label, alpha,
                             f"{comment}; {previous}" if previous else comment)
    for key in ("ss_tag_frequency", "ss_dataset_dirs", "ss_datasets", "ss_num_train_images", "ss_steps",
                "ss_seed", "ss_learning_rate"):
        if key in lora.metadata:  # the training the file came from stays on record
            metadata[key] = lora.metadata[key]
    metadata["loralab.tool.source_ranks"] = old_text
    metadata.update(dora_fields)
    logger.info("resized %s with %s: mean kept share %.4f", lora.source_name, rule.label, mean_kept_share(reports))
    return ToolResult(tensors, metadata, reports)
