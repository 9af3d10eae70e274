"""Benchmark: Resize LoRA and svd Merge LoRAs, per layer, against a plain full SVD of the dense delta.

The engine alone (no host). Each case is one layer of a realistic shape (SD1.5 / SDXL attention 320..1280, SDXL
cross-attention k/v 1280x2048, feed-forward out 1280x5120, 3x3 convs), as a one-layer kohya LoRA in memory:

* `resize r->r/2`: `resize_lora` of a rank-r LoRA to the fixed rank r/2;
* `svd merge 2 LoRAs`: `merge_loras(mode='svd')` of two rank-r LoRAs (strengths 1.0 and 0.5) to rank r;
* `svd merge LoHa+LoRA`: the same with a rank-r LoHa in place of the first, whose change has no factors, so the
  engine forms the dense delta and, with svd_method 'auto', uses a randomised SVD where r is far below the size.

The baseline of each is what sd-scripts' resize_lora / svd_merge_lora do: form the dense delta of the layer
(the sum for merges) and `torch.linalg.svd(full_matrices=False)` it. Its cost does not depend on r (only on
the layer's shape), so it is measured once per shape and operation, with rank-32 inputs. Times are the median
of --reps runs (the engine call whole: reading the modules, factorising, casting to fp16, metadata). "error"
is ||delta - kept||_F relative to ||delta||_F, ours as the engine reports it and the baseline's from its
discarded singular values: the two agree where ours is exact.

Peak memory on the CPU is the process's peak resident set (the kernel's VmHWM, reset before each run through
/proc/self/clear_refs) above its resident set at the start of the run: exact, no sampling, and it counts
torch's own allocations, which tracemalloc does not see. glibc's mmap threshold is fixed at 128 KiB
(mallopt), so every tensor is its own mapping and a freed one leaves the resident set at once. On CUDA
(--device cuda) it is torch.cuda.max_memory_allocated above the allocation at the start.

Usage (from the repository root):  .venv/bin/python benchmarks/bench_lora_tools.py [--reps 3] [--threads 1]
                                   [--ranks 8,32,128] [--device cpu]
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import logging
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.measure import print_end, print_start  # noqa: E402
from trainer.lora.file import parse_lora  # noqa: E402
from trainer.tools.merge import ToolResult, merge_loras  # noqa: E402
from trainer.tools.rank import RankRule  # noqa: E402
from trainer.tools.resize import resize_lora  # noqa: E402
from trainer.tools.sources import Source  # noqa: E402

# (row name, weight shape [out, in(, kh, kw)])
SHAPES = (
    ("attn 320", (320, 320)),
    ("attn 640", (640, 640)),
    ("attn 1280", (1280, 1280)),
    ("cross k/v 1280x2048 (SDXL)", (1280, 2048)),
    ("ff out 1280x5120", (1280, 5120)),
    ("conv 3x3 320", (320, 320, 3, 3)),
    ("conv 3x3 640", (640, 640, 3, 3)),
)
OPERATIONS = ("resize r->r/2", "svd merge 2 LoRAs", "svd merge LoHa+LoRA")
BASELINE_RANK = 32
PREFIX = "lora_unet_bench_layer"
M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
MMAP_THRESHOLD = 128 * 1024
MEMORY_FLOOR = 2 ** 20 // 10  # 0.1 MiB


def _randn(shape: tuple[int, ...], gen: torch.Generator, std: float) -> torch.Tensor:
    return torch.randn(shape, generator=gen) * std


@dataclass(frozen=True)
class Input:
    """One source of a case: as the engine takes it, and its tensors by role (for the baseline)."""

    source: Source
    roles: dict[str, torch.Tensor]


def _input(roles: dict[str, torch.Tensor], rank: int, name: str, strength: float) -> Input:
    tensors = {f"{PREFIX}.{role}": value for role, value in roles.items()}
    tensors[f"{PREFIX}.alpha"] = torch.tensor(float(rank))  # alpha = rank: scale 1
    return Input(Source(parse_lora(tensors, {}, name), strength, strength), roles)


def lora_layer(shape: tuple[int, ...], rank: int, gen: torch.Generator, name: str, strength: float) -> Input:
    """A one-layer kohya LoRA (LoCon for a conv shape) whose singular values decay as trained ones do."""
    down_shape = (rank, *shape[1:])
    up_shape = (shape[0], rank, 1, 1) if len(shape) == 4 else (shape[0], rank)
    decay = torch.logspace(0, -1.5, rank).reshape(1, rank, *([1] * (len(shape) - 2)))
    roles = {"lora_down.weight": _randn(down_shape, gen, 0.1), "lora_up.weight": _randn(up_shape, gen, 0.1) * decay}
    return _input(roles, rank, name, strength)


def loha_layer(shape: tuple[int, ...], rank: int, gen: torch.Generator, name: str, strength: float) -> Input:
    """A one-layer LoHa (flattened kernel, as LyCORIS writes a conv LoHa without Tucker)."""
    cols = 1
    for n in shape[1:]:
        cols *= n
    roles = {"hada_w1_a": _randn((shape[0], rank), gen, 0.3), "hada_w1_b": _randn((rank, cols), gen, 0.3),
             "hada_w2_a": _randn((shape[0], rank), gen, 0.3), "hada_w2_b": _randn((rank, cols), gen, 0.3)}
    return _input(roles, rank, name, strength)


def dense_delta(item: Input) -> torch.Tensor:
    """The layer's change [out, in*kh*kw] as sd-scripts forms it before its SVD (alpha / rank = 1 here)."""
    t, strength = item.roles, item.source.strength_model
    if "hada_w1_a" in t:
        return strength * (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"])
    return strength * (t["lora_up.weight"].flatten(1) @ t["lora_down.weight"].flatten(1))


class PeakMemory:
    """Peak memory of one run above its start: VmHWM on the CPU (reset per run), the allocator's peak on CUDA."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cpu":
            libc = ctypes.CDLL(ctypes.util.find_library("c"))
            libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)  # a fixed threshold: freed tensors unmap at once

    @staticmethod
    def _status_kib(field: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise RuntimeError(f"no {field} in /proc/self/status")

    def start(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return torch.cuda.memory_allocated()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident set
        return self._status_kib("VmRSS") * 1024

    def peak_above(self, start: int) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - start
        return self._status_kib("VmHWM") * 1024 - start


@dataclass(frozen=True)
class Measured:
    seconds: float  # median
    peak_bytes: int  # the largest of the runs
    error: float  # relative Frobenius error of the result


def measure(run: Callable[[], float], reps: int, memory: PeakMemory) -> Measured:
    """Times `run` (which returns its relative error) `reps` times, with the peak memory of each run."""
    times, peaks, error = [], [], 0.0
    for _ in range(reps):
        start = memory.start()
        began = time.perf_counter()
        error = run()
        if memory.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - began)
        peaks.append(memory.peak_above(start))
    return Measured(statistics.median(times), max(peaks), error)


def engine_error(result: ToolResult) -> float:
    (report,) = [r for r in result.layers if r.rank]
    return report.error / report.norm


def full_svd_error(deltas: list[torch.Tensor], rank: int, device: torch.device) -> float:
    """sd-scripts' way: sum the dense deltas, full SVD, keep `rank` factors; the relative error of the cut."""
    total = deltas[0].to(device)
    for delta in deltas[1:]:
        total = total + delta.to(device)
    u, s, vh = torch.linalg.svd(total, full_matrices=False)
    up, down = (u[:, :rank] * s[:rank]).cpu(), vh[:rank].cpu()
    del up, down
    return float(s[rank:].pow(2).sum().sqrt() / s.pow(2).sum().sqrt())


def discarded_share(inputs: list[Input], rank: int, device: torch.device) -> float:
    """The full SVD's relative error on these very inputs (from its singular values alone: the same number)."""
    total = sum(dense_delta(item).to(device) for item in inputs)
    s = torch.linalg.svdvals(total)
    return float(s[rank:].pow(2).sum().sqrt() / s.pow(2).sum().sqrt())


def inputs_for(operation: str, shape: tuple[int, ...], rank: int, seed: int) -> list[Input]:
    gen = torch.Generator().manual_seed(seed)
    make_first = loha_layer if operation == "svd merge LoHa+LoRA" else lora_layer
    first = make_first(shape, rank, gen, "a", 1.0)
    if operation == "resize r->r/2":
        return [first]
    return [first, lora_layer(shape, rank, gen, "b", 0.5)]


def target_rank(operation: str, rank: int) -> int:
    return max(1, rank // 2) if operation == "resize r->r/2" else rank


def ours(operation: str, inputs: list[Input], rank: int, device: torch.device) -> Callable[[], float]:
    rule = RankRule(target_rank(operation, rank))
    sources = [item.source for item in inputs]
    if operation == "resize r->r/2":
        return lambda: engine_error(resize_lora(sources[0].lora, rule, device=device))
    return lambda: engine_error(merge_loras(sources, "svd", rule, device=device))


def baseline(operation: str, inputs: list[Input], rank: int, device: torch.device) -> Callable[[], float]:
    keep = target_rank(operation, rank)
    return lambda: full_svd_error([dense_delta(item) for item in inputs], keep, device)


def _memory_columns(mine: int, base: int) -> str:
    # Below MEMORY_FLOOR the count is noise: small blocks reuse heap pages already resident (under the mmap
    # threshold), so such a peak is printed as "<0.1" and the ratio as a lower bound.
    if mine < MEMORY_FLOOR:
        return f"<{MEMORY_FLOOR / 2 ** 20:.1f} | {base / 2 ** 20:.1f} | >{base / MEMORY_FLOOR:.0f}x"
    return f"{mine / 2 ** 20:.1f} | {base / 2 ** 20:.1f} | {base / mine:.1f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3, help="runs per case; the median time is shown")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--ranks", default="8,32,128", help="input ranks r, comma-separated")
    parser.add_argument("--device", default="cpu", help="where the SVDs run: cpu or cuda")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    ranks = [int(r) for r in args.ranks.split(",")]
    started = print_start()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), device {device}, reps {args.reps}; "
          f"peak memory: {'VmHWM above VmRSS' if device.type == 'cpu' else 'torch.cuda.max_memory_allocated'}\n")
    memory = PeakMemory(device)
    for operation in OPERATIONS:  # first calls (kernels, lazy initialisation) before anything is measured
        inputs = inputs_for(operation, SHAPES[0][1], BASELINE_RANK, 0)
        ours(operation, inputs, BASELINE_RANK, device)()
        baseline(operation, inputs, BASELINE_RANK, device)()
    print("| layer | operation | r | ours ms | full SVD ms | speed-up | ours peak MiB | full SVD peak MiB "
          "| memory ratio | error ours | error full SVD |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, shape in SHAPES:
        for operation in OPERATIONS:
            base = measure(baseline(operation, inputs_for(operation, shape, BASELINE_RANK, 0), BASELINE_RANK,
                                    device), args.reps, memory)
            for rank in ranks:
                inputs = inputs_for(operation, shape, rank, 0)
                mine = measure(ours(operation, inputs, rank, device), args.reps, memory)
                check = discarded_share(inputs, target_rank(operation, rank), device)
                print(f"| {name} | {operation} | {rank} | {mine.seconds * 1e3:.1f} | {base.seconds * 1e3:.0f} "
                      f"| {base.seconds / mine.seconds:.1f}x | {_memory_columns(mine.peak_bytes, base.peak_bytes)} "
                      f"| {mine.error:.2e} | {check:.2e} |",
                      flush=True)
    print()
    print_end(started, f"{torch.get_num_threads():.2f}")


if __name__ == "__main__":
    main()
