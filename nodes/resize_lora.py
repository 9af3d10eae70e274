"""Resize LoRA node: one LoRA -> a new file at a smaller rank, fixed or chosen per layer (sd-scripts' methods)."""
from __future__ import annotations

from ..trainer.tools.resize import resize_lora
from ..trainer.tools.sources import file_sha256
from .host.lora_files import check_lora_name, lora_names, parsed_loras, resolve_lora_path
from .host.lora_tool_io import (
    ALPHA,
    CONV_RANK,
    DORA_CLIP,
    DORA_MODEL,
    PRECISION,
    RANK,
    RANK_METHOD,
    RANK_PARAM,
    compute_device,
    dora_base,
    layer_progress,
    output_name_input,
    rank_rule,
    write_result,
)
from .host.run_files import RunFiles


class LoraLabResizeLora:
    """Re-factorises every layer of a LoRA by SVD to a smaller rank; writes the achieved ranks and errors."""

    DESCRIPTION = ("Shrinks a LoRA to a smaller rank. fixed keeps `rank` per layer; sv_ratio, sv_fro and "
                   "sv_cumulative (as sd-scripts resize_lora) choose each layer's rank from its singular values, "
                   "with `rank` as the cap. A DoRA needs the model it is applied to connected.")
    CATEGORY = "LoRA Lab"
    FUNCTION = "resize"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("lora_name", "report")
    OUTPUT_TOOLTIPS = ("The new file's name in the loras folder (for Load LoRA).",
                       "Per layer: old and new rank and the share of the change kept.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "lora_name": (lora_names(), {"tooltip": "The LoRA to resize."}),
                "rank": ("INT", {**RANK, "tooltip": "fixed: the new rank. Dynamic methods: the most any layer keeps."}),
                "method": RANK_METHOD,
                "param": RANK_PARAM,
                "output_name": output_name_input("resized"),
                "precision": PRECISION,
                "alpha": ("FLOAT", ALPHA),
            },
            "optional": {"conv_rank": CONV_RANK, "model": DORA_MODEL, "clip": DORA_CLIP},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, lora_name):
        return check_lora_name(lora_name) or True

    def resize(self, lora_name, rank, method, param, output_name, precision, alpha, conv_rank=0, model=None,
               clip=None):
        files = RunFiles.for_name(output_name)
        rule = rank_rule(rank, method, param, conv_rank)
        result = resize_lora(parsed_loras.get(lora_name), rule, output_name=files.name,
                             sha256=file_sha256(resolve_lora_path(lora_name)), alpha=alpha or None,
                             save_dtype=precision, device=compute_device(), on_layer=layer_progress(),
                             dora_base=dora_base(model, clip))
        return write_result(files, result)
