"""Bake LoRAs node: MODEL + CLIP + VAE with LoRAs applied -> one checkpoint file in the checkpoints folder."""
from __future__ import annotations

import json

import comfy.model_management
import comfy.utils
from comfy.cli_args import args

from ..trainer.lora.stack import entries_from_lora_stack
from ..trainer.tools.metadata import bake_metadata
from ..trainer.tools.sources import file_sha256
from .host.checkpoint_files import SAVE_DTYPES, checkpoint_target, save_checkpoint
from .host.lora_files import resolve_lora_path

STAGES = 2  # weights patched and gathered; file written


def _baked_loras(lora_stack) -> list[dict]:
    loras = []
    for e in entries_from_lora_stack(lora_stack):
        lora = {"name": e.name, "strength_model": e.strength_model, "strength_clip": e.strength_clip,
                "sha256": file_sha256(resolve_lora_path(e.name))}
        if e.block_weights:
            lora["block_weights"] = e.block_weights
        loras.append(lora)
    return loras


class LoraLabBakeLoras:
    """Saves the connected MODEL, CLIP and VAE, with every LoRA applied to them, as one checkpoint."""

    DESCRIPTION = ("Bakes the LoRAs applied to MODEL and CLIP into a new checkpoint (.safetensors) in the "
                   "checkpoints folder, through the host's own checkpoint layout, at the precision asked. Connect "
                   "the LORA_STACK of Stack LoRAs to record which LoRAs were baked.")
    CATEGORY = "LoRA Lab"
    FUNCTION = "bake"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("ckpt_name",)
    OUTPUT_TOOLTIPS = ("The new file's name in the checkpoints folder (for Load Checkpoint).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model with the LoRAs applied."}),
                "clip": ("CLIP", {"tooltip": "The text encoder with the LoRAs applied."}),
                "vae": ("VAE", {"tooltip": "The VAE to put in the checkpoint."}),
                "output_name": ("STRING", {"default": "baked", "tooltip": "File name in the checkpoints folder "
                                "(.safetensors is added); an existing file is never overwritten."}),
                "precision": (list(SAVE_DTYPES), {"default": "fp16", "tooltip":
                              "Precision of the saved weights (fp8 weights are kept as they are)."}),
            },
            "optional": {
                "lora_stack": ("LORA_STACK", {"tooltip": "The stack that was applied: its LoRAs, strengths and "
                               "file hashes go into the checkpoint's metadata (nothing is applied from it)."}),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    def bake(self, model, clip, vae, output_name, precision, lora_stack=None, prompt=None, extra_pnginfo=None):
        name, path = checkpoint_target(output_name)
        patched = {"model": len(model.patches), "clip": len(clip.patcher.patches)}
        metadata = bake_metadata(name.removesuffix(".safetensors"), precision, _baked_loras(lora_stack), patched)
        if not args.disable_metadata:  # as the host's CheckpointSave: the workflow travels with the file
            metadata["prompt"] = json.dumps(prompt) if prompt is not None else ""
            metadata.update({k: json.dumps(v) for k, v in (extra_pnginfo or {}).items()})
        bar = comfy.utils.ProgressBar(STAGES)

        def before_write() -> None:
            bar.update_absolute(1, STAGES)
            comfy.model_management.throw_exception_if_processing_interrupted()

        save_checkpoint(path, model, clip, vae, precision, metadata, before_write)
        bar.update_absolute(STAGES, STAGES)
        text = f"{name}: {patched['model']} model and {patched['clip']} text-encoder weights patched, {precision}"
        return {"ui": {"text": [text]}, "result": (name,)}
