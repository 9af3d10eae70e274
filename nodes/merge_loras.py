"""Merge LoRAs node: a LORA_STACK -> one new LoRA file in the loras folder (concat: exact; svd: to a rank)."""
from __future__ import annotations

from ..trainer.lora.stack import entries_from_lora_stack
from ..trainer.tools.merge import merge_loras
from ..trainer.tools.sources import Source, file_sha256
from .host.lora_files import parsed_loras, resolve_lora_path
from .host.lora_tool_io import (
    ALPHA,
    CONV_RANK,
    DORA_CLIP,
    DORA_MODEL,
    PRECISION,
    RANK,
    compute_device,
    dora_base,
    layer_progress,
    output_name_input,
    rank_rule,
    write_result,
)
from .host.run_files import RunFiles


class LoraLabMergeLoras:
    """Merges the LoRAs of a stack, with their strengths, into one plain kohya LoRA/LoCon file."""

    DESCRIPTION = ("Merges a stack of LoRAs into one file. concat keeps every rank (exact: the file equals the "
                   "stack); svd sums each layer's change and keeps the best `rank` directions (any LoRA kind; a DoRA "
                   "with the model connected).")
    CATEGORY = "LoRA Lab"
    FUNCTION = "merge"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("lora_name", "report")
    OUTPUT_TOOLTIPS = ("The new file's name in the loras folder (for Load LoRA).",
                       "Per layer: ranks and the share of the change kept.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "lora_stack": ("LORA_STACK", {"tooltip": "The LoRAs to merge, with model and clip strengths."}),
                "mode": (["concat", "svd"], {"default": "concat", "tooltip":
                         "concat: exact, the ranks add up. svd: re-factorised to `rank`; takes LoHa/LoKr too, and "
                         "DoRA with the model connected."}),
                "rank": ("INT", {**RANK, "tooltip": "svd: the rank of every layer of the result."}),
                "output_name": output_name_input("merged"),
                "precision": PRECISION,
                "alpha": ("FLOAT", ALPHA),
            },
            "optional": {"conv_rank": CONV_RANK, "model": DORA_MODEL, "clip": DORA_CLIP},
        }

    def merge(self, lora_stack, mode, rank, output_name, precision, alpha, conv_rank=0, model=None, clip=None):
        files = RunFiles.for_name(output_name)
        sources = [Source(parsed_loras.get(e.name), e.strength_model, e.strength_clip,
                          file_sha256(resolve_lora_path(e.name))) for e in entries_from_lora_stack(lora_stack)]
        rule = rank_rule(rank, conv_rank=conv_rank) if mode == "svd" else None
        result = merge_loras(sources, mode, rule, output_name=files.name,
                             alpha=alpha or None, save_dtype=precision, device=compute_device(),
                             on_layer=layer_progress(), dora_base=dora_base(model, clip))
        return write_result(files, result)
