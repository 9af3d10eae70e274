"""Extract LoRA node: two MODELs (base and fine-tuned, or one with LoRAs applied) -> a LoRA file of their difference."""
from __future__ import annotations

import itertools

import comfy.model_management

from ..trainer.errors import LoraToolError
from ..trainer.tools.extract import extract_lora
from .host.lora_tool_io import (
    ALPHA,
    CONV_RANK,
    PRECISION,
    RANK,
    RANK_METHOD,
    RANK_PARAM,
    layer_progress,
    output_name_input,
    rank_rule,
    write_result,
)
from .host.model import base_model_version, model_family
from .host.model_weights import clip_pairs, unet_pairs
from .host.run_files import RunFiles


def _describe(pairs, which: str) -> dict:
    return {"patched_layers": pairs.patched_layers(which)}


class LoraLabExtractLora:
    """Writes the difference of two models as a kohya LoRA/LoCon, layer by layer, by SVD to a rank."""

    DESCRIPTION = ("Extracts a LoRA from two models: the fine-tuned (or LoRA-patched) model minus the base, each "
                   "layer cut to `rank` by SVD (fixed, or sd-scripts' dynamic methods with `rank` as the cap), "
                   "with sd-scripts' quantile clamp. Connect both CLIPs to extract the text encoder too.")
    CATEGORY = "LoRA Lab"
    FUNCTION = "extract"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("lora_name", "report")
    OUTPUT_TOOLTIPS = ("The new file's name in the loras folder (for Load LoRA).",
                       "Per layer: the rank kept and the share of the change kept.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "base_model": ("MODEL", {"tooltip": "The model before: e.g. the checkpoint a fine-tune started from."}),
                "tuned_model": ("MODEL", {"tooltip": "The model after: a fine-tune of it, or it with LoRAs applied."}),
                "rank": ("INT", {**RANK, "tooltip": "fixed: the rank of every layer. Dynamic methods: the cap."}),
                "method": RANK_METHOD,
                "param": RANK_PARAM,
                "clamp_quantile": ("FLOAT", {"default": 0.99, "min": 0.01, "max": 1.0, "step": 0.001, "tooltip":
                                   "As sd-scripts: the factors' entries are clamped to this quantile of their "
                                   "values (trims outliers). 1 clamps nothing (exact at full rank)."}),
                "min_diff": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 10.0, "step": 0.001, "tooltip":
                             "A layer whose largest change is at most this is left out. 0: only equal layers."}),
                "output_name": output_name_input("extracted"),
                "precision": PRECISION,
                "alpha": ("FLOAT", ALPHA),
            },
            "optional": {
                "base_clip": ("CLIP", {"tooltip": "The base text encoder (with tuned_clip: extract it too)."}),
                "tuned_clip": ("CLIP", {"tooltip": "The tuned text encoder (with base_clip: extract it too)."}),
                "conv_rank": CONV_RANK,
            },
        }

    def extract(self, base_model, tuned_model, rank, method, param, clamp_quantile, min_diff, output_name,
                precision, alpha, base_clip=None, tuned_clip=None, conv_rank=0):
        files = RunFiles.for_name(output_name)
        if (base_clip is None) != (tuned_clip is None):
            raise LoraToolError("Connect both base_clip and tuned_clip to extract the text encoder, or neither.")
        if model_family(base_model) != model_family(tuned_model):
            raise LoraToolError(f"base_model is {model_family(base_model)} but tuned_model is "
                                f"{model_family(tuned_model)}; connect two models of one architecture.")
        device = comfy.model_management.get_torch_device()
        groups = {"model": unet_pairs(base_model, tuned_model, device)}
        if base_clip is not None:
            groups["clip"] = clip_pairs(base_model, base_clip, tuned_clip, device)
        version, architecture = base_model_version(base_model)
        sources = {f"{side}_{part}": _describe(pairs, side) for part, pairs in groups.items()
                   for side in ("base", "tuned")}
        sources.update({f"{part}_layers_compared": len(pairs) for part, pairs in groups.items()})
        sources["family"] = model_family(base_model)
        rule = rank_rule(rank, method, param, conv_rank)
        result = extract_lora(itertools.chain(*groups.values()), rule, total=sum(map(len, groups.values())),
                              clamp_quantile=clamp_quantile, min_diff=min_diff, output_name=files.name,
                              alpha=alpha or None, save_dtype=precision, device=device, sources=sources,
                              base_metadata={"ss_base_model_version": version, "modelspec.architecture": architecture},
                              on_layer=layer_progress())
        return write_result(files, result)
