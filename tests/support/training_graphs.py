"""Training graphs and polling helpers shared by the end-to-end tests of Train LoRA and its samples."""
from __future__ import annotations

import time

from scripts.graphs import Graph, checkpoint, out

TRIGGER = "lrlring"
DEFAULT_OPTIONS = {"targets": "attention_ff", "dropout": 0.0, "schedule": "constant", "warmup_steps": 0,
                   "grad_accumulation": 1, "max_grad_norm": 1.0, "min_snr_gamma": 0.0, "noise_offset": 0.0,
                   "optimizer": "adamw", "weight_decay": 0.0, "mixed_precision": "no",
                   "gradient_checkpointing": False, "checkpoint_every": 0, "resume": False,
                   "sample_every": 0, "sample_prompts": "", "sample_steps": 2, "sample_cfg": 5.0,
                   "sample_sampler": "euler", "sample_scheduler": "normal"}


def train_graph(name: str, steps: int = 12, lr: float = 2e-3, rank: int = 4, folder: str = "rings",
                options: dict | None = None, validation_share: float = 0.0, resolution: int = 64,
                batch_size: int = 1) -> tuple[Graph, str]:
    g = Graph()
    ckpt = checkpoint(g)
    data = g.add("LoraLabDataset", folder=folder, trigger_word=TRIGGER, resolution=resolution, flip=False,
                 validation_share=validation_share, seed=0)
    kwargs = {}
    if options is not None:
        opts = g.add("LoraLabTrainOptions", **{**DEFAULT_OPTIONS, **options})
        kwargs["options"] = out(opts)
    train = g.add("LoraLabTrainLora", model=out(ckpt, 0), clip=out(ckpt, 1), vae=out(ckpt, 2), dataset=out(data),
                  name=name, steps=steps, learning_rate=lr, rank=rank, alpha=float(rank), batch_size=batch_size, seed=5,
                  **kwargs)
    return g, train


def wait_for_step(host, name: str, step: int, timeout: float = 120.0) -> dict:
    """The newest job called `name` once it has reached `step`, polled through the status route."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = next((j for j in host.get_json("/loralab/jobs") if j["name"] == name), None)
        if job and job["step"] >= step:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {name} did not reach step {step} in {timeout:.0f}s")
