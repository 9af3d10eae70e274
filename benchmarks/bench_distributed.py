"""Benchmark: data-parallel training (trainer/training/distributed.py) in 1 and 2 processes, and what the gradient
all-reduce would cost for SDXL and Flux LoRAs on NCCL.

Measured (engine level, CPU, gloo over loopback): the training loop on the engine's small test denoiser
(tests/support/tiny_models.py, LoRA on attention + feed-forward + convs), one thread per process, the same
global batch in both cases (1 process x batch B*2, or 2 processes x batch B). s/step is the median of the
loop's own per-step time after `--warmup` steps; "collectives/step" is the time a process spends inside
torch.distributed.all_reduce per step (the stop agreement, the step agreement and the gradient buckets),
which includes waiting for the slower process. A probe then all-reduces fp32 buffers of LoRA-gradient sizes
between the 2 processes, to give gloo's bus bandwidth here (ring model below).

Paper estimate: a ring all-reduce moves 2 (W - 1) / W x bytes through each link, so
    t = 2 (W - 1) / W x bytes / bandwidth,   bytes = 4 x LoRA parameters (the engine sums fp32 gradients),
with NCCL's bus bandwidth ~25 GB/s over PCIe 4.0 x16 and ~300 GB/s over NVLink (A100/H100 class), latency
ignored (a few 25 MB buckets: tens of microseconds each). The engine sums after the whole backward (no overlap),
so t adds to every optimizer step (once per step, not per micro-batch: accumulation divides it).

LoRA parameter counts, rank r, from the layer shapes (LoRA on a Linear in -> out has r x (in + out)
parameters); the same numbers come from the engine's select_targets + adapter_parameter_count on ComfyUI's SDXL
UNet and Flux models instantiated on the meta device (checked when this file was written):
  SDXL UNet (2.57 B parameters): transformer blocks of width d = 640 (10 blocks, 5 transformers) and
    d = 1280 (60 blocks, 6 transformers), cross-attention context 2048. Per block: self-attention q, k, v, out
    d -> d; cross-attention q, out d -> d and k, v 2048 -> d; feed-forward d -> 8d (GEGLU) and 4d -> d; per
    transformer proj_in, proj_out d -> d (Linear in SDXL).
      attention     = r x sum over blocks (14 d + 4096)                      = 1,451,520 r
      attention_ff  = attention + r x (sum over blocks 14 d + transformers 4 d) = 2,659,840 r
  Flux (dev/schnell, 11.9 B): hidden h = 3072, MLP 4h; 19 double blocks (image and text streams: qkv h -> 3h,
    proj h -> h, MLP h -> 4h -> h each), 38 single blocks (linear1 h -> 3h + 4h, linear2 h + 4h -> h).
      attention     = r x (19 x 12 h + 38 x 14 h) = 760 h r = 2,334,720 r   (single blocks' fused linears count)
      attention_ff  = r x 1140 h                    = 3,502,080 r
Text encoders are not included (UNet / transformer LoRAs).

Usage (from the repository root):  .venv/bin/python benchmarks/bench_distributed.py [--steps 30] [--warmup 5]
    [--batch 2] [--rank 8]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import ClassVar

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from benchmarks.measure import print_end, print_start  # noqa: E402
from tests.support.tiny_models import attach, batch_fn, config, dataset, make_model  # noqa: E402
from trainer.training.config import LoraShape  # noqa: E402
from trainer.training.distributed import DataParallel  # noqa: E402
from trainer.training.loop import train  # noqa: E402
from trainer.training.objective import NoiseSchedule  # noqa: E402

PCIE_GBPS, NVLINK_GBPS = 25.0, 300.0
RANKS = (16, 32, 64, 128)
WORLD_SIZES = (2, 8)
# LoRA parameters per unit of rank (see the docstring for the shapes).
SDXL_D = ((640, 10, 5), (1280, 60, 6))  # (width, transformer blocks, transformers)
FLUX_H, FLUX_DOUBLE, FLUX_SINGLE = 3072, 19, 38
PROBE_MB = (1, 16, 64)


def sdxl_per_rank(feed_forward: bool) -> int:
    attention = sum(blocks * (14 * d + 4096) for d, blocks, _ in SDXL_D)
    extra = sum(blocks * 14 * d + transformers * 4 * d for d, blocks, transformers in SDXL_D)
    return attention + (extra if feed_forward else 0)


def flux_per_rank(feed_forward: bool) -> int:
    attention = FLUX_DOUBLE * 12 * FLUX_H + FLUX_SINGLE * 14 * FLUX_H
    return attention + (FLUX_DOUBLE * 20 * FLUX_H if feed_forward else 0)


def ring_seconds(num_bytes: float, world: int, gb_per_s: float) -> float:
    return 2 * (world - 1) / world * num_bytes / (gb_per_s * 1e9)


class TimedDataParallel(DataParallel):
    """DataParallel that adds up the time spent in its all-reduces."""

    seconds: ClassVar[list[float]] = []  # this process's, since the last step

    def _all_reduce(self, tensor, op=dist.ReduceOp.SUM) -> None:
        started = time.perf_counter()
        super()._all_reduce(tensor, op)
        self.seconds.append(time.perf_counter() - started)


def _worker(rank: int, world: int, port: int, out: str, steps: int, batch: int, rank_lora: int) -> None:
    torch.set_num_threads(1)
    group = None
    if world > 1:
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
        group = TimedDataParallel(rank, world, torch.device("cpu"))
    cfg = config(steps=steps, batch_size=batch, lora=LoraShape(rank=rank_lora, alpha=rank_lora,
                                                               targets="attention_ff_conv"))
    model = make_model()
    adapters = attach(model, cfg.lora)
    latents, cond = dataset(n=16)
    per_step: list[float] = []
    per_step_collectives: list[float] = []

    def on_step(record) -> None:
        per_step.append(record.seconds_per_step)
        per_step_collectives.append(sum(TimedDataParallel.seconds))
        TimedDataParallel.seconds.clear()

    train(model, adapters, batch_fn(latents, cond, batch * world), NoiseSchedule.scaled_linear(), cfg, on_step,
          data_parallel=group)
    result = {"per_step": per_step, "collectives": per_step_collectives,
              "gradient_bytes": 4 * sum(p.numel() for p in adapters.parameters())}
    if group is not None:
        result["probe"] = {}
        for mb in PROBE_MB:
            buffer = torch.ones(mb * 2**20 // 4)
            dist.all_reduce(buffer)  # warm-up: connections, allocation
            started = time.perf_counter()
            for _ in range(3):
                dist.all_reduce(buffer)
            result["probe"][mb] = (time.perf_counter() - started) / 3
        dist.destroy_process_group()
    if rank == 0:
        Path(out).write_text(json.dumps(result))


def measure(world: int, steps: int, batch: int, rank_lora: int) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "result.json")
        context = mp.get_context("spawn")
        processes = [context.Process(target=_worker, args=(r, world, port, out, steps, batch, rank_lora))
                     for r in range(world)]
        for p in processes:
            p.start()
        for p in processes:
            p.join(timeout=600)
        if any(p.exitcode != 0 for p in processes):
            raise RuntimeError(f"a benchmark process failed: exit codes {[p.exitcode for p in processes]}")
        return json.loads(Path(out).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out of the medians")
    parser.add_argument("--batch", type=int, default=2, help="batch per process (1 process gets twice this)")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank of the measured runs")
    args = parser.parse_args()
    started = print_start()
    print(f"torch {torch.__version__}, gloo over loopback, 1 thread per process; small test denoiser, "
          f"LoRA rank {args.rank} on attention/ff/conv; global batch {2 * args.batch}; {args.steps} steps, "
          f"medians after {args.warmup}")
    results = {1: measure(1, args.steps, 2 * args.batch, args.rank), 2: measure(2, args.steps, args.batch, args.rank)}
    print(f"\nLoRA gradients all-reduced per step: {results[1]['gradient_bytes'] / 1024:.1f} KiB fp32\n")
    print(f"{'processes':>9} | {'batch/process':>13} | {'s/step':>8} | {'collectives/step':>16} | share of step")
    for world, result in results.items():
        step = statistics.median(result["per_step"][args.warmup:])
        collectives = statistics.median(result["collectives"][args.warmup:])
        batch = 2 * args.batch if world == 1 else args.batch
        print(f"{world:>9} | {batch:>13} | {step:>8.4f} | {collectives * 1e3:>13.2f} ms | {collectives / step:>6.1%}")
    print("\ngloo all-reduce between the 2 processes (fp32 buffer, mean of 3):")
    print(f"{'buffer':>7} | {'seconds':>8} | bus bandwidth 2(W-1)/W x bytes / t")
    for mb, seconds in results[2]["probe"].items():
        bandwidth = ring_seconds(int(mb) * 2**20, 2, 1.0) / seconds  # GB/s
        print(f"{int(mb):>4} MB | {seconds:>8.4f} | {bandwidth:.2f} GB/s")

    print("\nPaper estimate, NCCL ring all-reduce of the fp32 LoRA gradients once per optimizer step "
          f"(PCIe {PCIE_GBPS:.0f} GB/s, NVLink {NVLINK_GBPS:.0f} GB/s):")
    header = f"{'model / targets':<22} | {'rank':>4} | {'LoRA params':>11} | {'MB fp32':>7}"
    for world in WORLD_SIZES:
        header += f" | W={world} PCIe | W={world} NVLink"
    print(header)
    for label, per_rank in (("SDXL attention", sdxl_per_rank(False)), ("SDXL attention_ff", sdxl_per_rank(True)),
                            ("Flux attention", flux_per_rank(False)), ("Flux attention_ff", flux_per_rank(True))):
        for r in RANKS:
            params = per_rank * r
            line = f"{label:<22} | {r:>4} | {params / 1e6:>9.1f} M | {4 * params / 1e6:>7.0f}"
            for world in WORLD_SIZES:
                line += (f" | {ring_seconds(4 * params, world, PCIE_GBPS) * 1e3:>6.1f} ms"
                         f" | {ring_seconds(4 * params, world, NVLINK_GBPS) * 1e3:>8.2f} ms")
            print(line)
    print_end(started, busy_above="2")


if __name__ == "__main__":
    main()
