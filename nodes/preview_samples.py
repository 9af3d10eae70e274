"""Preview Samples node: prompts x LoRA strengths (or x a run's checkpoints) through the host's sampler, as a grid."""
from __future__ import annotations

import os
import re

import comfy.samplers
import folder_paths

from ..trainer.errors import SampleGridError
from ..trainer.sample_grid import label_grid, parse_prompts, parse_strengths
from .host.lora_files import lora_names
from .host.patching import apply_named_lora
from .host.run_files import RunFiles
from .host.sampling import SampleSettings, render, to_image_tensor, to_pil

NO_LORA = "(none)"


def run_checkpoints(run_name: str) -> list[tuple[str, str]]:
    """(label, LoRA name) of a training run's step checkpoints in step order, then its final file."""
    files = RunFiles.for_name(run_name)
    pattern = re.compile(re.escape(files.name) + r"-step(\d+)\.safetensors$")
    steps = sorted((int(m.group(1)), name) for name in os.listdir(files.folder) if (m := pattern.match(name)))
    found = [(f"step {step}", name) for step, name in steps]
    if os.path.exists(files.lora_path):
        found.append(("final", files.lora_name))
    if not found:
        raise SampleGridError(f"no checkpoints of the run '{files.name}' in {files.folder}")
    return found


def columns(compare: str, lora_name: str, strengths: str, run_name: str) -> list[tuple[str, str | None, float]]:
    """(column label, LoRA name or None, strength) for each column of the grid."""
    if compare == "checkpoints of a run":
        return [(label, name, 1.0) for label, name in run_checkpoints(run_name)]
    if lora_name == NO_LORA:
        return [("no LoRA", None, 0.0)]
    return [(f"strength {s:g}", lora_name, s) for s in parse_strengths(strengths)]


def save_grid(image, prefix: str = "loralab/samples") -> dict:
    """Writes the grid PNG to the output folder the way SaveImage does; returns its ui entry."""
    folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
        prefix, folder_paths.get_output_directory(), image.width, image.height)
    name = f"{filename}_{counter:05}_.png"
    image.save(os.path.join(folder, name), compress_level=4)
    return {"filename": name, "subfolder": subfolder, "type": "output"}


class LoraLabPreviewSamples:
    """Renders each prompt at each LoRA strength, or with each checkpoint of a training run, as one labelled grid."""

    DESCRIPTION = ("Compare a LoRA at several strengths, or the checkpoints of a training run, on the same prompts "
                   "and seed, rendered by the host's own sampler exactly like a KSampler.")
    CATEGORY = "LoRA Lab"
    FUNCTION = "preview"
    OUTPUT_NODE = True
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("grid",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL",), "clip": ("CLIP",), "vae": ("VAE",),
            "prompts": ("STRING", {
                "multiline": True,
                "default": "a photo of a cat",
                "tooltip": "One prompt per line: one grid row each.",
            }),
            "negative": ("STRING", {"default": "", "tooltip": "The negative prompt, as on a KSampler."}),
            "compare": (["lora strengths", "checkpoints of a run"],),
            "lora_name": ([NO_LORA] + lora_names(), {"tooltip": "The LoRA whose strengths are compared."}),
            "strengths": ("STRING", {
                "default": "0, 0.5, 1",
                "tooltip": "Comma-separated strengths: one grid column each.",
            }),
            "run_name": ("STRING", {"default": "", "tooltip": "For 'checkpoints of a run': the Train LoRA name."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
            "steps": ("INT", {"default": 20, "min": 1, "max": 1000}),
            "cfg": ("FLOAT", {"default": 7.0, "min": 0.0, "max": 100.0, "step": 0.1}),
            "sampler_name": (comfy.samplers.KSampler.SAMPLERS,),
            "scheduler": (comfy.samplers.KSampler.SCHEDULERS,),
            "width": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 8}),
            "height": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 8}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, lora_name):
        return True  # a LoRA written since the list was built is accepted; Load LoRA checks the name

    def preview(self, model, clip, vae, prompts, negative, compare, lora_name, strengths, run_name, seed, steps, cfg,
                sampler_name, scheduler, width, height):
        prompt_list = parse_prompts(prompts)
        if not prompt_list:
            raise SampleGridError("Preview Samples needs at least one prompt (one per line)")
        settings = SampleSettings(seed, steps, cfg, sampler_name, scheduler, negative, width, height)
        grid_columns = columns(compare, lora_name, strengths, run_name)
        tiles: list[list] = [[] for _ in prompt_list]
        for _, name, strength in grid_columns:
            patched_model, patched_clip = model, clip
            if name is not None:
                patched_model, patched_clip, _ = apply_named_lora(model, clip, name, strength, strength)
            for row, prompt in enumerate(prompt_list):
                tiles[row].append(to_pil(render(patched_model, patched_clip, vae, prompt, settings)))
        grid = label_grid(tiles, prompt_list, [label for label, _, _ in grid_columns])
        return {"ui": {"images": [save_grid(grid)]}, "result": (to_image_tensor(grid),)}
