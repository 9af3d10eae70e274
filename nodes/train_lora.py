"""Train LoRA node: trains on the MODEL already in the graph, inside the host."""
from __future__ import annotations

from typing import Any

import torch

from ..trainer.data.spec import DatasetSpec
from ..trainer.training.config import Evaluation, RunStart, Sampling, Workers
from .config_inputs import build_config, input_types, section_from_inputs
from .dataset import DATASET_TYPE
from .host.run_files import RunFiles
from .host.sampling import SampleSettings
from .host.training_run import run_training
from .host.training_samples import SamplePlan, default_prompts
from .host.worker_run import run_on_workers
from .train_options import OPTIONS_TYPE

LOSS_TYPE = "LORALAB_LOSS_HISTORY"
CONFIG_INPUTS = ("steps", "learning_rate", "rank", "alpha", "batch_size", "seed")


def build_sample_plan(dataset: DatasetSpec, seed: int, sampling: Sampling) -> SamplePlan:
    """The samples of a run: the sampling settings, at the dataset's resolution, with the training seed."""
    settings = SampleSettings(seed=seed, steps=sampling.steps, cfg=sampling.cfg, sampler_name=sampling.sampler,
                              scheduler=sampling.scheduler, width=dataset.resolution, height=dataset.resolution)
    return SamplePlan(default_prompts([i.caption for i in dataset.items], sampling.prompts), settings,
                      sampling.every_n_steps)


class LoraLabTrainLora:
    """Trains a LoRA on the connected MODEL itself (no second copy) and saves it to the loras folder."""

    DESCRIPTION = ("Trains a LoRA on the model already loaded in the graph (and optionally on its text encoder). "
                   "The images are encoded once with this VAE. Saves <name>.safetensors (kohya format, loads "
                   "everywhere) into the loras folder, checkpoints every N steps, and a resume state. Cancel keeps "
                   "the work done so far.")
    CATEGORY = "LoRA Lab"
    FUNCTION = "train"
    OUTPUT_NODE = True
    RETURN_TYPES = ("MODEL", "CLIP", "STRING", LOSS_TYPE)
    RETURN_NAMES = ("MODEL", "CLIP", "lora_name", "loss_history")
    OUTPUT_TOOLTIPS = ("The model with the trained LoRA applied.", "The text encoder (with the LoRA where trained).",
                       "The saved LoRA's file name in the loras folder.", "The loss of every step.")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, dict[str, tuple]]:
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model to train on; it is not copied."}),
                "clip": ("CLIP", {"tooltip": "Encodes the captions: once, or at every step when the text encoder "
                                             "trains too."}),
                "vae": ("VAE", {"tooltip": "Encodes the images once."}),
                "dataset": (DATASET_TYPE, {"tooltip": "From a LoRA Dataset node."}),
                "name": ("STRING", {"default": "my_lora",
                                    "tooltip": "File name of the LoRA in the loras folder (no folders)."}),
                **input_types(CONFIG_INPUTS),
            },
            "optional": {"options": (OPTIONS_TYPE, {"tooltip": "From a Train LoRA Options node."})},
            "hidden": {"node_id": "UNIQUE_ID", "prompt": "PROMPT"},  # the queued graph: the workers run it
        }

    def train(self, model, clip, vae, dataset: DatasetSpec, name: str, steps: int, learning_rate: float, rank: int,
              alpha: float, batch_size: int, seed: int, options: dict[str, Any] | None = None,
              node_id: str | None = None, prompt: dict[str, Any] | None = None) -> dict[str, Any]:
        values = {**(options or {}), "steps": steps, "learning_rate": learning_rate, "rank": rank, "alpha": alpha,
                  "batch_size": batch_size, "seed": seed}
        config = build_config(values)
        plan = build_sample_plan(dataset, seed, section_from_inputs(Sampling, values))
        resume = section_from_inputs(RunStart, values).resume
        files = RunFiles.for_name(name)
        workers = section_from_inputs(Workers, values).request
        if workers is not None:  # torchrun workers train it; the graph's MODEL gets the LoRA they wrote
            done = run_on_workers(model, clip, workers, prompt, node_id, files, config.optimisation)
            return {"ui": done.ui, "result": (done.model, done.clip, done.lora_name, done.loss_history)}
        with torch.inference_mode(False):
            run = run_training(model, clip, vae, dataset, files, config, resume, node_id, plan,
                               section_from_inputs(Evaluation, values))
        measured = (f"; loss at fixed noise {run.eval_loss_start:.4f} -> {run.eval_loss_end:.4f}"
                    if run.eval_loss_start is not None and run.eval_loss_end is not None else "")
        summary = (f"saved {run.lora_name} after {run.steps_completed} steps{measured}"
                   + (f"; validation loss {run.validation_loss:.4f}" if run.validation_loss is not None else "")
                   + (f"; stopped early: {run.stopped}" if run.stopped else ""))
        ui = {"text": [summary], "lora_name": [run.lora_name], "eval_loss": [run.eval_loss_start, run.eval_loss_end],
              "validation_loss": [run.validation_loss], "loss_history": run.loss_history}
        return {"ui": ui, "result": (run.model, run.clip, run.lora_name, run.loss_history)}
