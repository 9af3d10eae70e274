"""Periodic samples of a training run, rendered by the same code path as Preview Samples (the host's sampler)."""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ...trainer.jobs import Job
from ...trainer.sample_grid import label_grid
from ...trainer.training.trainable_lora import LoraAdapterSet
from .sampling import SampleSettings, render, to_pil

DEFAULT_PROMPT_COUNT = 2
PREVIEW_MAX_SIDE = 512


@dataclass(frozen=True)
class SamplePlan:
    """Which prompts to render, how, and every how many steps (0 = only when asked)."""
    prompts: tuple[str, ...]
    settings: SampleSettings
    every_n_steps: int = 0

    def due(self, step: int) -> bool:
        return self.every_n_steps > 0 and step % self.every_n_steps == 0


def default_prompts(captions: list[str], given: str) -> tuple[str, ...]:
    """The user's prompts (one per line), or the first dataset captions, which carry the trigger word."""
    prompts = [line.strip() for line in given.splitlines() if line.strip()]
    return tuple(prompts or list(dict.fromkeys(captions))[:DEFAULT_PROMPT_COUNT])


class TrainingSamples:
    """Renders the plan's prompts with the LoRA as trained so far, saves a strip per step into the job's folder."""

    def __init__(self, plan: SamplePlan, model, clip, vae, adapters: LoraAdapterSet, job: Job, folder: str) -> None:
        self.plan, self.model, self.clip, self.vae = plan, model, clip, vae
        self.adapters, self.job, self.folder = adapters, job, folder

    def render(self, step: int, before_each: Callable[[], None]):
        """The strip image of this step (prompts side by side), saved and announced.

        before_each() runs before each prompt (it raises to stop the run); a Cancel inside the host's sampler
        raises the host's InterruptProcessingException.
        """
        was_training = self.adapters.training
        self.adapters.train(False)  # samples show the LoRA as it would be used: no dropout
        try:
            tiles = []
            with torch.no_grad():
                for prompt in self.plan.prompts:
                    before_each()
                    tiles.append(to_pil(render(self.model, self.clip, self.vae, prompt, self.plan.settings,
                                               with_preview=False)))
        finally:
            self.adapters.train(was_training)
        strip = label_grid([tiles], [f"step {step}"], list(self.plan.prompts))
        name = f"step{step:06d}.png"
        strip.save(os.path.join(self.folder, name))
        self.job.add_sample(step, name, f"step {step}")
        return strip


def preview_of(strip) -> tuple[str, object, int]:
    """The (format, image, max side) a host progress bar shows as the node's preview."""
    return ("JPEG", strip, PREVIEW_MAX_SIDE)
