"""Profile of one Train LoRA prompt: where its time goes, phase by phase, op by op and function by function.

ComfyUI 0.3.x is imported as a library in this process (as the headless `train` command does: its own
executor, no server), on the CPU, with the small or the full-size (`--full-size`: the real SD1.5 UNet,
channel_mult [1, 2, 4, 4], two res blocks per level, random weights) SD1.5-architecture checkpoint. A 1-step
warm-up prompt loads the checkpoint and encodes the dataset; then the profiled prompt (another LoRA name, same
data, so its encodings come from the cache as a user's second prompt's do) runs under torch.profiler and
cProfile. Printed:

- the job's phase times (preparing, encoding, sampling, evaluating, training, saving, ...) and the prompt's
  whole time, so the fixed costs around the loop show beside the steps;
- the torch ops by self CPU time (the denoiser's convolutions and matmuls, the LoRA hooks' small matmuls,
  copies and casts), per training step;
- the Python functions by own time (per-step bookkeeping: progress, job events, callbacks).

Usage (from the repository root):
    .venv/bin/python benchmarks/profile_train.py [--full-size] [--size 64] [--steps 10] [--images 4]
        [--targets attention_ff] [--threads 1] [--rows 25]
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.measure import print_end, print_start  # noqa: E402
from scripts.comfy_host import (  # noqa: E402
    DEFAULT_COMFY_DIR,
    FULL_CHECKPOINT_NAME,
    TINY_CHECKPOINT_NAME,
    ensure_tiny_checkpoint,
    prepare_base_dir,
)
from scripts.make_demo_dataset import make_demo_dataset  # noqa: E402
from scripts.training_graphs import option_defaults, train_graph  # noqa: E402

FOLDER = "profile"


class JobListener:
    """Keeps the newest snapshot of every job from the pack's events (the stand-in server's listener)."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict] = {}

    def __call__(self, event: str, data) -> None:
        if event.startswith("loralab.") and isinstance(data, dict) and "phase_seconds" in data:
            self.jobs[data["name"]] = data


def train_prompt(name: str, steps: int, size: int, targets: str, checkpoint_name: str) -> tuple[dict, str]:
    options = {**option_defaults(), "targets": targets, "mixed_precision": "no"}
    graph, node = train_graph(name, steps=steps, lr=1e-4, rank=8, folder=FOLDER, options=options, resolution=size)
    loader = next(n for n in graph.nodes.values() if n["class_type"] == "CheckpointLoaderSimple")
    loader["inputs"]["ckpt_name"] = checkpoint_name
    return graph.nodes, node


def run_prompt(executor, prompt: dict, node: str) -> float:
    """Runs one prompt through the host's own executor; returns its wall seconds."""
    started = time.perf_counter()
    executor.execute(prompt, uuid.uuid4().hex, {}, [node])
    seconds = time.perf_counter() - started
    errors = [data for event, data in executor.status_messages if event == "execution_error"]
    if errors:
        raise RuntimeError(f"the prompt failed: {errors[0].get('exception_message')}")
    return seconds


def print_phases(job: dict, prompt_seconds: float, steps: int) -> None:
    phases = job["phase_seconds"]
    print(f"\nwhole prompt {prompt_seconds:.2f} s ({steps} steps); job phases:")
    print("| phase | seconds | share of the prompt |\n|---|---|---|")
    for phase, seconds in sorted(phases.items(), key=lambda item: -item[1]):
        print(f"| {phase} | {seconds:.2f} | {seconds / prompt_seconds:.0%} |")
    rest = prompt_seconds - sum(phases.values())
    print(f"| (outside the job: loaders, node set-up, patching the outputs) | {rest:.2f} | "
          f"{rest / prompt_seconds:.0%} |")
    if phases.get("training"):
        print(f"training: {phases['training'] / steps:.3f} s/step")


def print_torch_ops(profile, steps: int, rows: int) -> None:
    print(f"\ntorch ops by self CPU time (whole prompt; 'per step' divides by {steps}):")
    print("| op | calls | self CPU s | per step ms | share |\n|---|---|---|---|---|")
    averages = sorted(profile.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in averages) or 1
    for event in averages[:rows]:
        print(f"| {event.key} | {event.count} | {event.self_cpu_time_total / 1e6:.3f} | "
              f"{event.self_cpu_time_total / 1e3 / steps:.1f} | {event.self_cpu_time_total / total:.1%} |")


def print_python(stats: cProfile.Profile, rows: int) -> None:
    text = io.StringIO()
    pstats.Stats(stats, stream=text).sort_stats("tottime").print_stats(rows)
    lines = text.getvalue().splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip().startswith("ncalls")), 0)
    print("\nPython functions by own time (cProfile; torch ops count as their Python callers' calls):")
    print("\n".join(lines[start:start + rows + 1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full-size", action="store_true", help="the real SD1.5 UNet (default: the small one)")
    parser.add_argument("--size", type=int, default=64, help="training resolution, px (default 64)")
    parser.add_argument("--steps", type=int, default=10, help="steps of the profiled prompt (default 10)")
    parser.add_argument("--images", type=int, default=4, help="images in the dataset (default 4)")
    parser.add_argument("--targets", default="attention_ff", help="Train LoRA Options targets")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--rows", type=int, default=25, help="rows of each table")
    args = parser.parse_args()
    started = print_start()
    checkpoint = ensure_tiny_checkpoint(full_size=args.full_size)
    base = Path(tempfile.mkdtemp(prefix="loralab-profile-"))
    try:
        prepare_base_dir(base, checkpoint)
        make_demo_dataset(base / "input" / FOLDER, count=args.images, size=args.size)
        from cli.host import start_host

        host = start_host(DEFAULT_COMFY_DIR, ["--cpu", "--base-directory", str(base)], REPO)
        import torch
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        listener = JobListener()
        host.server.listener = listener
        name = FULL_CHECKPOINT_NAME if args.full_size else TINY_CHECKPOINT_NAME
        print(f"{'full-size' if args.full_size else 'small'} SD1.5 model ({name}), {args.size} px, "
              f"{args.images} images, rank 8, {args.targets}, batch 1, fp32, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads")
        # One executor for every prompt, as the server keeps one: its cache keeps the loaded checkpoint.
        executor = host.execution.PromptExecutor(host.server, cache_type=host.execution.CacheType.CLASSIC,
                                                 cache_args={"lru": 0, "ram": 0})
        warm = run_prompt(executor, *train_prompt("profile_warmup", 1, args.size, args.targets, name))
        print(f"warm-up prompt (1 step; loads the checkpoint, encodes the dataset, first-use costs): {warm:.2f} s")
        prompt, node = train_prompt("profile_run", args.steps, args.size, args.targets, name)
        python_profile = cProfile.Profile()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as torch_profile:
            python_profile.enable()
            seconds = run_prompt(executor, prompt, node)
            python_profile.disable()
        print_phases(listener.jobs["profile_run"], seconds, args.steps)
        print_torch_ops(torch_profile, args.steps, args.rows)
        print_python(python_profile, args.rows)
        print("\n(profiled: torch.profiler and cProfile slow the prompt down; compare phases, not absolute times, "
              "with unprofiled runs)")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print_end(started, "2")
    return 0


if __name__ == "__main__":
    sys.exit(main())
