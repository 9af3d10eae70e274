"""Stack LoRAs node: unlimited rows with toggles and two strengths, LORA_STACK in and out, trigger words out."""
from __future__ import annotations

from ..trainer.lora.block_weights import parse_block_weights
from ..trainer.lora.stack import StackRowsError, entries_from_lora_stack, join_trigger_words, parse_rows
from .host.lora_files import check_lora_name
from .host.patching import apply_named_lora

ROWS_HELP = ('The rows, as JSON: [{"lora": "file.safetensors", "on": true, "strength_model": 1.0, '
             '"strength_clip": 1.0}, ...], each with an optional "block_weights" (per-block strengths as in Load '
             'LoRA, e.g. "INS" or "MID=0"). The graph editor shows them as a table.')


class LoraLabStackLoras:
    """Applies any number of LoRAs in order; rows can be switched off without losing their settings."""

    DESCRIPTION = "Applies a list of LoRAs, each with its own on/off switch and model and clip strengths."
    CATEGORY = "LoRA Lab"
    FUNCTION = "stack"
    RETURN_TYPES = ("MODEL", "CLIP", "LORA_STACK", "STRING")
    RETURN_NAMES = ("MODEL", "CLIP", "LORA_STACK", "trigger_words")
    OUTPUT_TOOLTIPS = ("The model with every enabled LoRA applied (None if no MODEL was connected).",
                       "The text encoder with every enabled LoRA applied (None if no CLIP was connected).",
                       "The enabled LoRAs as (name, strength_model, strength_clip) tuples, incoming stack first "
                       "(block weights reach a later Stack LoRAs node; other packs apply the whole LoRA).",
                       "The trigger words of the enabled LoRAs, comma-separated, each once.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"loras": ("STRING", {"default": "[]", "multiline": True, "tooltip": ROWS_HELP})},
            "optional": {
                "model": ("MODEL", {"tooltip": "The diffusion model to patch."}),
                "clip": ("CLIP", {"tooltip": "The text encoder to patch."}),
                "lora_stack": ("LORA_STACK", {"tooltip": "A stack from another node; its LoRAs are applied first."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, loras):
        try:
            entries = parse_rows(loras)
        except StackRowsError as e:
            return str(e)
        for entry in entries:
            problem = check_lora_name(entry.name)
            if problem:
                return problem
        return True

    def stack(self, loras, model=None, clip=None, lora_stack=None):
        entries = entries_from_lora_stack(lora_stack) + [e for e in parse_rows(loras) if e.on]
        words = []
        for entry in entries:
            model, clip, entry_words = apply_named_lora(model, clip, entry.name, entry.strength_model,
                                                        entry.strength_clip, parse_block_weights(entry.block_weights))
            words.append(entry_words)
        text = join_trigger_words(words)
        stack_out = [e.as_tuple() for e in entries]
        return {"ui": {"trigger_words": [text]}, "result": (model, clip, stack_out, text)}
