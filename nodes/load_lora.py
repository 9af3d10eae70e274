"""Load LoRA node: one file from the loras folders, any format, applied through the host's own patches."""
from __future__ import annotations

from ..trainer.errors import BlockWeightsError
from ..trainer.lora.block_weights import HELP as BLOCK_WEIGHTS_HELP
from ..trainer.lora.block_weights import parse_block_weights
from .host.lora_files import check_lora_name, lora_names
from .host.patching import apply_named_lora

STRENGTH = {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}


class LoraLabLoadLora:
    """Applies one LoRA file (kohya, LyCORIS, PEFT/diffusers, DoRA, ComfyUI-trained) to MODEL and CLIP."""

    DESCRIPTION = ("Applies a LoRA from the loras folders to the model (and text encoder). Reads every common "
                   "format, including PEFT/diffusers attention layers, and outputs the file's trigger words.")
    CATEGORY = "LoRA Lab"
    FUNCTION = "load"
    RETURN_TYPES = ("MODEL", "CLIP", "STRING")
    RETURN_NAMES = ("MODEL", "CLIP", "trigger_words")
    OUTPUT_TOOLTIPS = ("The model with the LoRA applied.",
                       "The text encoder with the LoRA applied (None if not connected).",
                       "Trigger words from the file's training metadata, comma-separated; empty if it has none.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model to apply the LoRA to."}),
                "lora_name": (lora_names(), {"tooltip": "A .safetensors LoRA in the loras folders."}),
                "strength_model": ("FLOAT", {
                    **STRENGTH,
                    "tooltip": "How strongly the LoRA changes the diffusion model.",
                }),
                "strength_clip": ("FLOAT", {**STRENGTH, "tooltip": "How strongly the LoRA changes the text encoder."}),
            },
            "optional": {
                "clip": ("CLIP", {"tooltip": "The text encoder; leave unconnected to patch only the model."}),
                "block_weights": ("STRING", {"default": "", "tooltip": BLOCK_WEIGHTS_HELP}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, lora_name, block_weights=None):
        # Named here so a LoRA written since the list was built is accepted; the name is checked instead.
        problem = check_lora_name(lora_name)
        if problem:
            return problem
        if isinstance(block_weights, str):  # None when the input is linked: checked when the node runs
            try:
                parse_block_weights(block_weights)
            except BlockWeightsError as e:
                return str(e)
        return True

    def load(self, model, lora_name, strength_model, strength_clip, clip=None, block_weights=""):
        new_model, new_clip, words = apply_named_lora(model, clip, lora_name, strength_model, strength_clip,
                                                      parse_block_weights(block_weights))
        text = ", ".join(words)
        return {"ui": {"trigger_words": [text]}, "result": (new_model, new_clip, text)}
