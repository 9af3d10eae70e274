"""Train LoRA node (and its options node): trains on the MODEL already in the graph, inside the host."""
from __future__ import annotations

import torch

from ..trainer.training.config import Checkpointing, LoraShape, Optimisation, TrainConfig, field_help
from .dataset import DATASET_TYPE
import comfy.samplers

from .host.run_files import RunFiles
from .host.sampling import SampleSettings
from .host.training_run import run_training
from .host.training_samples import SamplePlan, default_prompts

OPTIONS_TYPE = "LORALAB_TRAIN_OPTIONS"
LOSS_TYPE = "LORALAB_LOSS_HISTORY"


def _tip(cls: type, name: str) -> dict:
    return {"tooltip": field_help(cls, name)}


class LoraLabTrainOptions:
    """The less common training settings, so the Train LoRA node stays readable."""

    DESCRIPTION = "Advanced settings for Train LoRA: layers, schedule, regularisation, precision, checkpoints, resume."
    CATEGORY = "LoRA Lab"
    FUNCTION = "options"
    RETURN_TYPES = (OPTIONS_TYPE,)
    RETURN_NAMES = ("options",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "targets": (["attention", "attention_ff", "attention_ff_conv"], _tip(LoraShape, "targets")),
            "dropout": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 0.9, "step": 0.01, **_tip(LoraShape, "dropout")}),
            "schedule": (["constant", "linear", "cosine"], _tip(Optimisation, "schedule")),
            "warmup_steps": ("INT", {"default": 0, "min": 0, "max": 100000, **_tip(Optimisation, "warmup_steps")}),
            "grad_accumulation": ("INT", {"default": 1, "min": 1, "max": 1024, **_tip(Optimisation, "grad_accumulation")}),
            "max_grad_norm": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1000.0, "step": 0.1, **_tip(Optimisation, "max_grad_norm")}),
            "min_snr_gamma": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 100.0, "step": 0.5, "tooltip": field_help(Optimisation, "min_snr_gamma") + " 0 = off."}),
            "noise_offset": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01, **_tip(Optimisation, "noise_offset")}),
            "optimizer": (["adamw", "adamw8bit"], _tip(Optimisation, "optimizer")),
            "weight_decay": ("FLOAT", {"default": 0.01, "min": 0.0, "max": 1.0, "step": 0.001, **_tip(Optimisation, "weight_decay")}),
            "mixed_precision": (["bf16", "fp16", "no"], _tip(Optimisation, "mixed_precision")),
            "gradient_checkpointing": ("BOOLEAN", {"default": False, **_tip(Optimisation, "gradient_checkpointing")}),
            "checkpoint_every": ("INT", {"default": 0, "min": 0, "max": 1000000, **_tip(Checkpointing, "every_n_steps")}),
            "resume": ("BOOLEAN", {"default": False, "tooltip": "Continue the run saved under the same name from its last checkpoint."}),
            "sample_every": ("INT", {"default": 0, "min": 0, "max": 1000000, "tooltip": "Render samples every N steps, plus a step-0 baseline (0 = only on request)."}),
            "sample_prompts": ("STRING", {"multiline": True, "default": "", "tooltip": "One prompt per line; empty = the first dataset captions (with the trigger word)."}),
            "sample_steps": ("INT", {"default": 20, "min": 1, "max": 200, "tooltip": "Sampler steps of each sample, as on a KSampler."}),
            "sample_cfg": ("FLOAT", {"default": 7.0, "min": 0.0, "max": 100.0, "step": 0.1}),
            "sample_sampler": (comfy.samplers.KSampler.SAMPLERS,),
            "sample_scheduler": (comfy.samplers.KSampler.SCHEDULERS,),
        }, "optional": {  # optional: workflows and API prompts saved before these existed keep working
            "train_text_encoder": ("BOOLEAN", {"default": False, **_tip(LoraShape, "train_text_encoder")}),
            "text_encoder_lr": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 1e-5, "round": 1e-7,
                                          "tooltip": field_help(LoraShape, "text_encoder_lr") + " 0 = the main learning rate."}),
        }}

    def options(self, **options):
        return (options,)


DEFAULT_OPTIONS = {"targets": "attention", "dropout": 0.0, "schedule": "constant", "warmup_steps": 0,
                   "grad_accumulation": 1, "max_grad_norm": 1.0, "min_snr_gamma": 0.0, "noise_offset": 0.0,
                   "optimizer": "adamw", "weight_decay": 0.01, "mixed_precision": "bf16",
                   "gradient_checkpointing": False, "checkpoint_every": 0, "resume": False,
                   "sample_every": 0, "sample_prompts": "", "sample_steps": 20, "sample_cfg": 7.0,
                   "sample_sampler": "euler", "sample_scheduler": "normal",
                   "train_text_encoder": False, "text_encoder_lr": 0.0}


def build_sample_plan(dataset, seed: int, options: dict) -> SamplePlan:
    o = {**DEFAULT_OPTIONS, **(options or {})}
    settings = SampleSettings(seed=seed, steps=o["sample_steps"], cfg=o["sample_cfg"], sampler_name=o["sample_sampler"],
                              scheduler=o["sample_scheduler"], width=dataset.resolution, height=dataset.resolution)
    return SamplePlan(default_prompts([i.caption for i in dataset.items], o["sample_prompts"]), settings,
                      o["sample_every"])


def build_config(steps: int, learning_rate: float, rank: int, alpha: float, batch_size: int, seed: int,
                 options: dict) -> TrainConfig:
    o = {**DEFAULT_OPTIONS, **(options or {})}
    return TrainConfig(
        lora=LoraShape(rank=rank, alpha=alpha, dropout=o["dropout"], targets=o["targets"],
                       train_text_encoder=o["train_text_encoder"], text_encoder_lr=o["text_encoder_lr"] or None),
        optimisation=Optimisation(steps=steps, learning_rate=learning_rate, batch_size=batch_size,
                                  grad_accumulation=o["grad_accumulation"], max_grad_norm=o["max_grad_norm"],
                                  schedule=o["schedule"], warmup_steps=o["warmup_steps"], optimizer=o["optimizer"],
                                  weight_decay=o["weight_decay"], min_snr_gamma=o["min_snr_gamma"] or None,
                                  noise_offset=o["noise_offset"], mixed_precision=o["mixed_precision"],
                                  gradient_checkpointing=o["gradient_checkpointing"], seed=seed),
        checkpointing=Checkpointing(every_n_steps=o["checkpoint_every"]))


class LoraLabTrainLora:
    """Trains a LoRA on the connected MODEL itself (no second copy) and saves it to the loras folder."""

    DESCRIPTION = ("Trains a LoRA on the model already loaded in the graph (and optionally on its text encoder). "
                   "The images are encoded once with this VAE. Saves <name>.safetensors (kohya format, loads everywhere) into the loras folder, "
                   "checkpoints every N steps, and a resume state. Cancel keeps the work done so far.")
    CATEGORY = "LoRA Lab"
    FUNCTION = "train"
    OUTPUT_NODE = True
    RETURN_TYPES = ("MODEL", "CLIP", "STRING", LOSS_TYPE)
    RETURN_NAMES = ("MODEL", "CLIP", "lora_name", "loss_history")
    OUTPUT_TOOLTIPS = ("The model with the trained LoRA applied.", "The text encoder (with the LoRA where trained).",
                       "The saved LoRA's file name in the loras folder.", "The loss of every step.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model to train on; it is not copied."}),
                "clip": ("CLIP", {"tooltip": "Encodes the captions: once, or at every step when the text encoder trains too."}),
                "vae": ("VAE", {"tooltip": "Encodes the images once."}),
                "dataset": (DATASET_TYPE, {"tooltip": "From a LoRA Dataset node."}),
                "name": ("STRING", {"default": "my_lora", "tooltip": "File name of the LoRA in the loras folder (no folders)."}),
                "steps": ("INT", {"default": 500, "min": 1, "max": 1000000, **_tip(Optimisation, "steps")}),
                "learning_rate": ("FLOAT", {"default": 1e-4, "min": 0.0, "max": 1.0, "step": 1e-5, "round": 1e-7, **_tip(Optimisation, "learning_rate")}),
                "rank": ("INT", {"default": 16, "min": 1, "max": 1024, **_tip(LoraShape, "rank")}),
                "alpha": ("FLOAT", {"default": 16.0, "min": 0.01, "max": 1024.0, "step": 0.5, **_tip(LoraShape, "alpha")}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 256, **_tip(Optimisation, "batch_size")}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1, **_tip(Optimisation, "seed")}),
            },
            "optional": {"options": (OPTIONS_TYPE, {"tooltip": "From a Train LoRA Options node."})},
            "hidden": {"node_id": "UNIQUE_ID"},
        }

    def train(self, model, clip, vae, dataset, name, steps, learning_rate, rank, alpha, batch_size, seed,
              options=None, node_id=None):
        config = build_config(steps, learning_rate, rank, alpha, batch_size, seed, options)
        files = RunFiles.for_name(name)
        with torch.inference_mode(False):
            run = run_training(model, clip, vae, dataset, files, config, bool((options or {}).get("resume")), node_id,
                               build_sample_plan(dataset, seed, options))
        summary = (f"saved {run.lora_name} after {run.steps_completed} steps; loss at fixed noise "
                   f"{run.eval_loss_start:.4f} -> {run.eval_loss_end:.4f}"
                   + (f"; validation loss {run.validation_loss:.4f}" if run.validation_loss is not None else "")
                   + (f"; stopped early: {run.stopped}" if run.stopped else ""))
        ui = {"text": [summary], "lora_name": [run.lora_name], "eval_loss": [run.eval_loss_start, run.eval_loss_end],
              "validation_loss": [run.validation_loss], "loss_history": run.loss_history}
        return {"ui": ui, "result": (run.model, run.clip, run.lora_name, run.loss_history)}
