"""API-format graphs (txt2img on the small model, LoRA nodes in between) for the tests, benchmarks and demo."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from scripts.comfy_host import TINY_CHECKPOINT_NAME


class Graph:
    """Builds an API-format prompt node by node; `add` returns the new node's id."""

    def __init__(self) -> None:
        self.nodes: dict[str, dict] = {}

    def add(self, class_type: str, **inputs) -> str:
        node_id = str(len(self.nodes) + 1)
        self.nodes[node_id] = {"class_type": class_type, "inputs": inputs}
        return node_id


def out(node_id: str, index: int = 0) -> list:
    return [node_id, index]


def checkpoint(g: Graph, name: str = TINY_CHECKPOINT_NAME) -> str:
    return g.add("CheckpointLoaderSimple", ckpt_name=name)


def render(g: Graph, model: list, clip: list, vae: list, prefix: str, seed: int = 7,
           prompt: str = "a photo of a red cube", size: int = 64, steps: int = 3) -> str:
    """KSampler -> VAEDecode -> SaveImage on the given MODEL/CLIP; returns the SaveImage node id."""
    pos = g.add("CLIPTextEncode", text=prompt, clip=clip)
    neg = g.add("CLIPTextEncode", text="blurry", clip=clip)
    latent = g.add("EmptyLatentImage", width=size, height=size, batch_size=1)
    sampled = g.add("KSampler", model=model, seed=seed, steps=steps, cfg=5.0, sampler_name="euler",
                    scheduler="normal", positive=out(pos), negative=out(neg), latent_image=out(latent), denoise=1.0)
    decoded = g.add("VAEDecode", samples=out(sampled), vae=vae)
    return g.add("SaveImage", images=out(decoded), filename_prefix=prefix)


def saved_images(host, entry: dict, node_id: str) -> list[np.ndarray]:
    """The images a SaveImage node wrote in a finished prompt, as uint8 arrays."""
    return [np.asarray(Image.open(io.BytesIO(host.view(img)))) for img in entry["outputs"][node_id]["images"]]
