"""Sample images through the host's own sampler: the conditioning, noise and sampler path a KSampler uses."""
from __future__ import annotations

from dataclasses import dataclass

import comfy.sample
import numpy as np
import torch
from PIL import Image

import nodes as host_nodes  # the host's nodes.py: CLIPTextEncode and EmptyLatentImage as a KSampler graph uses them

from .model import decode_latents


@dataclass(frozen=True)
class SampleSettings:
    """What a KSampler would be given; the same values render the same image."""
    seed: int = 0
    steps: int = 20
    cfg: float = 7.0
    sampler_name: str = "euler"
    scheduler: str = "normal"
    negative: str = ""
    width: int = 512
    height: int = 512


def render(model, clip, vae, prompt: str, settings: SampleSettings, with_preview: bool = True) -> torch.Tensor:
    """One image [1, H, W, 3] in 0..1, as CLIPTextEncode -> KSampler -> VAEDecode would make it (a video model
    samples a one-frame video: its empty latent gets the model's frame axis, as the host's sampler adds it)."""
    positive = host_nodes.CLIPTextEncode().encode(clip, prompt)[0]
    negative = host_nodes.CLIPTextEncode().encode(clip, settings.negative)[0]
    latent = host_nodes.EmptyLatentImage().generate(settings.width, settings.height, 1)[0]
    if with_preview:
        samples = host_nodes.common_ksampler(model, settings.seed, settings.steps, settings.cfg, settings.sampler_name,
                                             settings.scheduler, positive, negative, latent)[0]["samples"]
    else:  # inside a training run: the node's progress bar shows training steps, not sampler steps
        latent_image = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
        noise = comfy.sample.prepare_noise(latent_image, settings.seed)
        samples = comfy.sample.sample(model, noise, settings.steps, settings.cfg, settings.sampler_name,
                                      settings.scheduler, positive, negative, latent_image, disable_pbar=True,
                                      seed=settings.seed)
    return decode_latents(vae, samples)


def to_pil(image: torch.Tensor) -> Image.Image:
    """[1, H, W, 3] or [H, W, 3] in 0..1 -> an RGB PIL image, quantised exactly as the host's SaveImage does."""
    array = image[0] if image.ndim == 4 else image
    return Image.fromarray(np.clip(255.0 * array.float().cpu().numpy(), 0, 255).astype(np.uint8))


def to_image_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image -> the host's IMAGE layout [1, H, W, 3] in 0..1."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)[None]
