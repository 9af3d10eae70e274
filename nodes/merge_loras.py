"""Merge LoRAs node: a LORA_STACK -> one new LoRA file in the loras folder (concat: exact; svd: to a rank)."""
from __future__ import annotations

import comfy.model_management
import comfy.utils

from ..trainer.lora.stack import entries_from_lora_stack
from ..trainer.tools.merge import SAVE_DTYPES, ToolResult, merge_loras
from ..trainer.tools.rank import MAX_RANK, RankRule
from ..trainer.tools.save import save_result
from ..trainer.tools.sources import Source, file_sha256
from .host.lora_files import parsed_loras, resolve_lora_path
from .host.run_files import RunFiles

RANK = {"default": 16, "min": 1, "max": MAX_RANK, "step": 1}
ALPHA = {"default": 0.0, "min": 0.0, "max": 4096.0, "step": 0.5,
         "tooltip": "alpha written to the file; 0 writes alpha = rank (scale 1). The change is the same either way."}
PRECISION = (list(SAVE_DTYPES), {"default": "fp16", "tooltip": "Precision of the saved weights."})


def layer_progress():
    """An on_layer callback that moves the node's progress bar and ends the job on Cancel (nothing is written)."""
    bar = None

    def on_layer(done: int, total: int, prefix: str) -> None:
        nonlocal bar
        if bar is None:
            bar = comfy.utils.ProgressBar(total)
        bar.update_absolute(done, total)
        comfy.model_management.throw_exception_if_processing_interrupted()

    return on_layer


def write_result(files: RunFiles, result: ToolResult) -> dict:
    """Write the result atomically into the loras folder (never over a file) -> the node's return value."""
    save_result(files.lora_path, result)
    report = result.summary()
    return {"ui": {"text": [f"{files.lora_name}\n{report}"]}, "result": (files.lora_name, report)}


class LoraLabMergeLoras:
    """Merges the LoRAs of a stack, with their strengths, into one plain kohya LoRA/LoCon file."""

    DESCRIPTION = ("Merges a stack of LoRAs into one file. concat keeps every rank (exact: the file equals the "
                   "stack); svd sums each layer's change and keeps the best `rank` directions (any LoRA kind).")
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
                         "concat: exact, the ranks add up. svd: re-factorised to `rank`; takes LoHa/LoKr too."}),
                "rank": ("INT", {**RANK, "tooltip": "svd: the rank of every layer of the result."}),
                "output_name": ("STRING", {"default": "merged", "tooltip":
                                "File name in the loras folder (.safetensors is added); an existing file is kept."}),
                "precision": PRECISION,
                "alpha": ("FLOAT", ALPHA),
            },
        }

    def merge(self, lora_stack, mode, rank, output_name, precision, alpha):
        files = RunFiles.for_name(output_name)
        sources = [Source(parsed_loras.get(e.name), e.strength_model, e.strength_clip,
                          file_sha256(resolve_lora_path(e.name))) for e in entries_from_lora_stack(lora_stack)]
        result = merge_loras(sources, mode, RankRule(rank) if mode == "svd" else None, output_name=files.name,
                             alpha=alpha or None, save_dtype=precision,
                             device=comfy.model_management.get_torch_device(), on_layer=layer_progress())
        return write_result(files, result)
