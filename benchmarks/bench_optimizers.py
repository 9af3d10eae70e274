"""Benchmark: each optimizer of Train LoRA on the same small denoiser, data and steps; loss at fixed noise and s/step.

The engine alone (no host): a small denoiser with SD UNet layer names (so the engine's target selection picks
attention, feed-forward and conv layers as on a real UNet), 4 random latents with random contexts (a
memorisation task), rank 4, batch 2, constant schedule after 5 warmup steps, seed 0, CPU fp32. Each optimizer
runs at the learning rate its users start from (the table prints it): AdamW-like 1e-3, Lion 3e-4 (3x lower),
Adafactor 1.0 (torch's Adafactor scales its step by the weight's RMS and caps it at lr), Prodigy 1.0 (a
multiplier of the lr it estimates), SGD Nesterov 0.1, RAdam (custom, by dotted name) 1e-3. adamw8bit needs a
CUDA GPU and bitsandbytes, so it is reported as skipped on the CPU.

"loss at fixed noise" is the engine's evaluate(): the mean loss over the 4 items at noise and timesteps fixed
by one seed, before and after training, so the numbers of all rows are comparable. "s/step" is the median of
the loop's own per-step times (the first 3 steps left out: first-use costs).

Usage (from the repository root):  .venv/bin/python benchmarks/bench_optimizers.py [--steps 100] [--threads 1]
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.measure import print_end, print_start  # noqa: E402
from trainer.errors import OptimizerError  # noqa: E402
from trainer.training.config import LoraShape, Optimisation, TrainConfig  # noqa: E402
from trainer.training.evaluation import evaluate  # noqa: E402
from trainer.training.layer_selection import select_targets  # noqa: E402
from trainer.training.loop import StepRecord, train  # noqa: E402
from trainer.training.objective import NoiseSchedule  # noqa: E402
from trainer.training.trainable_lora import LoraAdapterSet  # noqa: E402

CHANNELS, HIDDEN, CONTEXT, TOKENS, SIZE = 4, 32, 16, 4, 8
# (row name, optimizer, learning rate, extra Optimisation fields)
CASES: list[tuple[str, str, float, dict]] = [
    ("adamw", "adamw", 1e-3, {}),
    ("adamw8bit", "adamw8bit", 1e-3, {}),
    ("lion", "lion", 3e-4, {}),
    ("adafactor", "adafactor", 1.0, {}),
    ("prodigy", "prodigy", 1.0, {}),
    ("adamw_schedulefree", "adamw_schedulefree", 1e-3, {}),
    ("sgd_nesterov", "sgd_nesterov", 0.1, {}),
    ("custom torch.optim.RAdam", "custom", 1e-3, {"optimizer_class": "torch.optim.RAdam"}),
]


class _Block(nn.Module):
    """Self-attention, cross-attention and a feed-forward, with the SD UNet's layer names."""

    def __init__(self) -> None:
        super().__init__()
        for name, context_dim in (("attn1", HIDDEN), ("attn2", CONTEXT)):
            attn = nn.Module()
            attn.to_q = nn.Linear(HIDDEN, HIDDEN, bias=False)
            attn.to_k = nn.Linear(context_dim, HIDDEN, bias=False)
            attn.to_v = nn.Linear(context_dim, HIDDEN, bias=False)
            attn.to_out = nn.Sequential(nn.Linear(HIDDEN, HIDDEN), nn.Identity())
            setattr(self, name, attn)
        project = nn.Module()
        project.proj = nn.Linear(HIDDEN, 2 * HIDDEN)
        self.ff = nn.Module()
        self.ff.net = nn.Sequential(project, nn.GELU(), nn.Linear(2 * HIDDEN, HIDDEN))

    @staticmethod
    def _attend(attn: nn.Module, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        q, k, v = attn.to_q(x), attn.to_k(context), attn.to_v(context)
        return attn.to_out(torch.softmax(q @ k.transpose(1, 2) / HIDDEN ** 0.5, dim=-1) @ v)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self._attend(self.attn1, x, x)
        x = x + self._attend(self.attn2, x, context)
        return x + self.ff.net[2](nn.functional.gelu(self.ff.net[0].proj(x)))


class SmallDenoiser(nn.Module):
    """conv_in -> proj_in -> transformer block -> proj_out -> conv_out, conditioned on the timestep."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(CHANNELS, HIDDEN, 3, padding=1)
        self.time_embed = nn.Linear(1, HIDDEN)
        self.attn = nn.Module()
        self.attn.proj_in = nn.Conv2d(HIDDEN, HIDDEN, 1)
        self.attn.transformer_blocks = nn.ModuleList([_Block()])
        self.attn.proj_out = nn.Conv2d(HIDDEN, HIDDEN, 1)
        self.conv_out = nn.Conv2d(HIDDEN, CHANNELS, 3, padding=1)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x) + self.time_embed(timesteps.to(x.dtype)[:, None] / 1000.0)[:, :, None, None]
        b, c, height, width = h.shape
        tokens = self.attn.proj_in(h).flatten(2).transpose(1, 2)
        tokens = self.attn.transformer_blocks[0](tokens, context)
        return self.conv_out(h + self.attn.proj_out(tokens.transpose(1, 2).reshape(b, c, height, width)))


def run_case(optimizer: str, lr: float, extra: dict, steps: int) -> tuple[float, float, float]:
    """(loss at fixed noise before, after, median s/step) of one optimizer."""
    torch.manual_seed(0)
    model = SmallDenoiser().eval().requires_grad_(False)
    g = torch.Generator().manual_seed(123)
    latents = torch.randn(4, CHANNELS, SIZE, SIZE, generator=g)
    contexts = torch.randn(4, TOKENS, CONTEXT, generator=g)

    def batches(index: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        picked = torch.randperm(4, generator=generator)[:2]
        return latents[picked], contexts[picked]

    def fixed(index: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return latents, contexts

    shape = LoraShape(rank=4, alpha=4.0, targets="attention_ff_conv")
    config = TrainConfig(lora=shape, optimisation=Optimisation(steps=steps, learning_rate=lr, batch_size=2,
                                                               warmup_steps=5, optimizer=optimizer,
                                                               mixed_precision="no", seed=0, **extra))
    adapters = LoraAdapterSet.from_config(shape, 0)
    adapters.attach(model, select_targets(model, shape.targets))
    schedule = NoiseSchedule.scaled_linear()
    before = evaluate(model, adapters, fixed, schedule, fixed_seed=42)
    records: list[StepRecord] = []
    train(model, adapters, batches, schedule, config, records.append)
    after = evaluate(model, adapters, fixed, schedule, fixed_seed=42)
    adapters.detach()
    return before, after, statistics.median(r.seconds_per_step for r in records[3:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on a busy machine)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(args.threads)
    started = print_start()
    print(f"torch {torch.__version__}, {args.steps} steps, {args.threads} thread(s), CPU fp32")
    print()
    print(f"| optimizer | lr | loss at fixed noise, before -> after {args.steps} steps | s/step |")
    print("|---|---|---|---|")
    for row, optimizer, lr, extra in CASES:
        try:
            before, after, seconds = run_case(optimizer, lr, extra, args.steps)
        except OptimizerError as e:
            print(f"| {row} | {lr:g} | skipped: {str(e).split(';')[0]} | - |")
            continue
        print(f"| {row} | {lr:g} | {before:.4f} -> {after:.4f} | {seconds * 1000:.1f} ms |")
    print()
    print_end(started, busy_above=str(args.threads))


if __name__ == "__main__":
    main()
