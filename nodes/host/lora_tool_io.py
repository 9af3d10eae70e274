"""What the LoRA tool nodes (Merge, Resize, Extract) share: their common inputs, a per-layer progress bar that
honours Cancel, the connected model as the base of DoRA inputs, and writing the result into the loras folder."""
from __future__ import annotations

import comfy.model_management
import comfy.utils
import torch

from ...trainer.tools.chart_data import chart_data
from ...trainer.tools.merge import SAVE_DTYPES, ToolResult
from ...trainer.tools.rank import FIXED, MAX_RANK, RANK_METHODS, RankRule
from ...trainer.tools.save import save_result
from .model_dora_base import ModelDoraBase
from .run_files import RunFiles

RANK = {"default": 16, "min": 1, "max": MAX_RANK, "step": 1}
ALPHA = {"default": 0.0, "min": 0.0, "max": 4096.0, "step": 0.5,
         "tooltip": "alpha written to the file; 0 writes alpha = rank (scale 1). The change is the same either way."}
PRECISION = (list(SAVE_DTYPES), {"default": "fp16", "tooltip": "Precision of the saved weights."})
# How Resize and Extract choose each layer's rank (sd-scripts' dynamic methods, `rank` as the cap).
RANK_METHOD = (list(RANK_METHODS), {"default": "fixed", "tooltip":
               "fixed; sv_ratio: keep values above S_max / param; sv_fro: keep a Frobenius share "
               "param; sv_cumulative: keep a share param of the sum of singular values."})
RANK_PARAM = ("FLOAT", {"default": 0.9, "min": 0.0, "max": 1000.0, "step": 0.01, "tooltip":
              "sv_ratio: a ratio >= 1 (e.g. 8); sv_fro / sv_cumulative: a share in (0, 1]."})

# Optional, appended after every other input so that saved workflows keep their widget positions.
CONV_RANK = ("INT", {"default": 0, "min": 0, "max": MAX_RANK, "step": 1, "tooltip":
             "Conv layers with a 3x3 (or larger) kernel: their rank (fixed) or cap (dynamic methods), as "
             "sd-scripts --conv_dim / --new_conv_rank. 0: the same as rank."})
# Merge and Resize, after conv_rank: the model a DoRA's change is taken against (nodes/host/model_dora_base.py).
DORA_MODEL = ("MODEL", {"tooltip": "For DoRA inputs (svd): the model they are applied to, before any LoRA (the "
                        "checkpoint's MODEL). A DoRA's change depends on its weights; without it a DoRA is refused."})
DORA_CLIP = ("CLIP", {"tooltip": "For DoRA inputs with text-encoder layers: the CLIP they are applied to, before "
                      "any LoRA."})


def rank_rule(rank: int, method: str = FIXED, param: float = 0.0, conv_rank: int = 0) -> RankRule:
    """The engine's rank rule from the node inputs (param is ignored by 'fixed'; conv_rank 0: as rank)."""
    return RankRule(rank, method, param if method != FIXED else 0.0, conv_rank or None)


def dora_base(model, clip) -> ModelDoraBase | None:
    """The base DoRA inputs' changes are taken against: the connected MODEL and CLIP, or None (a DoRA is refused)."""
    if model is None and clip is None:
        return None
    return ModelDoraBase(model, clip, compute_device())


def compute_device() -> torch.device:
    """Where the tools form and factorise each layer: the host's torch device."""
    return comfy.model_management.get_torch_device()


def output_name_input(default: str) -> tuple[str, dict]:
    """The output_name input: a file name in the loras folder, never written over."""
    return ("STRING", {"default": default, "tooltip":
                       "File name in the loras folder (.safetensors is added); an existing file is kept."})


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
    """Write the result atomically into the loras folder (never over a file) -> the node's return value, with the
    chart of ranks, kept shares and spectra per layer for the editor (js/tool_chart.js)."""
    save_result(files.lora_path, result)
    report = result.summary()
    chart = chart_data(result.layers, result.metadata["loralab.tool.rank_rule"])
    return {"ui": {"text": [f"{files.lora_name}\n{report}"], "loralab_chart": [chart]},
            "result": (files.lora_name, report)}
