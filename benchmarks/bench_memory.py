"""Benchmark: memory and speed of Train LoRA on fp32 / bf16 / fp8 bases, whole model loaded versus part of it
offloaded, beside the host's native TrainLoraNode on the same base and settings.

Bases, all the small SD1.5-architecture test model (or `--full-size`: the real SD1.5 UNet, random weights), its
UNet, CLIP and VAE each from a file of its own through the host's separate loaders (Load Diffusion Model,
CLIPLoader, VAELoader: a checkpoint loader would hold a second UNet in memory beside an fp8 one):
  fp32  Load Diffusion Model's default weight_dtype, as the host loads it on the CPU (fp32);
  bf16  the same, the host started with its own `--bf16-unet` (weights stored in bf16);
  fp8   Load Diffusion Model with weight_dtype fp8_e4m3fn.
Trainers:
  ours_full           Train LoRA, memory_mode as_set, the whole model on the device, no gradient checkpointing;
  ours_checkpointing  the same with gradient checkpointing (what offloading implies: the cost of offload alone is
                      ours_offload against this one);
  ours_offload        memory_mode as_set, offload_fraction `--offload-fraction` (0.5): that share of the frozen
                      weights left off the device by the host's partial loading and streamed per layer;
  native              the host's TrainLoraNode (LoRA on every weight, training_dtype and lora_dtype fp32).
Settings, both trainers: batch 1, rank 8, AdamW lr 1e-4 weight decay 0.01, constant schedule, no clipping, fp32
compute (ours mixed_precision "no"; the CPU computes fp32 whatever is asked). Ours trains the attention and
feed-forward layers (targets attention_ff), native every weight, as in bench_train.py.

Every case runs in a host of its own, started for it (so no case sees another's models in memory):
  peak RSS        the host process's VmRSS peak over the whole case (loading the base, encoding, training) minus
                  its VmRSS once started and idle: what the run needs in all, base weights included;
  base weights    the MODEL's diffusion-model weights as stored (ours: the job's weights_on_device total);
  train peak      the VmRSS peak during the timed prompts over the value just before each (base loaded, cached):
                  what training adds on top of the loaded model;
  kept            VmRSS after the last prompt over the value before it (what the run did not give back);
  s/step          median over `--repeat` of (t(N2) - t(N1)) / (N2 - N1), t = the host's execution time of a prompt
                  of N steps, after an untimed 1-step warm-up (model load, dataset encoding); CPU s/step the same
                  from the host process's user+system CPU seconds.
The host is started with MALLOC_MMAP_THRESHOLD_=65536 / MALLOC_TRIM_THRESHOLD_=131072 so RSS follows live memory.

On a machine without a GPU the "device" is the CPU: offloaded weights stay in the same memory, so offload cannot
lower the peak here; what this measures on the CPU is the cost of the streamed path (each offloaded weight cast
as its layer runs) and that it trains. Where native cannot train a base, its row shows the host's error.

Usage (from the repository root):  .venv/bin/python benchmarks/bench_memory.py [--precisions fp32 bf16 fp8]
    [--trainers ours_full ours_checkpointing ours_offload native] [--steps 2 6] [--repeat 2] [--size 64]
    [--images 4] [--threads 1] [--offload-fraction 0.5] [--full-size]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.bench_train import (  # noqa: E402
    LR,
    OURS_OPTIONS,
    RANK,
    RssSampler,
    mib,
    native_prompt,
    ours_prompt,
    rss_bytes,
)
from benchmarks.measure import (  # noqa: E402
    bench_host,
    cpu_seconds,
    exec_seconds,
    host_versions,
    limit_host_threads,
    med,
    node_defaults,
    print_end,
    print_start,
    rss_follows_live_memory,
)
from scripts.comfy_host import (  # noqa: E402
    CHECKPOINT_PARTS,
    FULL_CHECKPOINT,
    FULL_CHECKPOINT_NAME,
    TINY_CHECKPOINT,
    TINY_CHECKPOINT_NAME,
    ComfyHost,
    HostError,
    add_checkpoint_part,
    ensure_tiny_checkpoint,
)
from scripts.make_demo_dataset import make_demo_dataset  # noqa: E402

PRECISIONS = ("fp32", "bf16", "fp8")
TRAINERS = ("ours_full", "ours_checkpointing", "ours_offload", "native")
HOST_FLAGS = {"bf16": ("--bf16-unet",)}  # the host's own option for a bf16 base
FP8_WEIGHTS = "fp8_e4m3fn"  # Load Diffusion Model's weight_dtype for the fp8 base


@dataclasses.dataclass(frozen=True, eq=False)
class Case:
    precision: str
    trainer: str
    checkpoint_name: str
    loaders: dict  # the inputs of UNETLoader, CLIPLoader and VAELoader


class CaseRunner:
    """Prompts of one case in its own host: each never queued before (its own seed and LoRA name)."""

    def __init__(self, host: ComfyHost, case: Case, folder: str, size: int, offload_fraction: float) -> None:
        self.host, self.case, self.folder, self.size = host, case, folder, size
        self.counter = 0
        pngs = sorted((host.input_dir / folder).glob("*.png"))
        self.files = [f"{folder}/{p.name}" for p in pngs]
        self.captions = [p.with_suffix(".txt").read_text().strip() for p in pngs]
        self.option_defaults = node_defaults(host, "LoraLabTrainOptions")
        optimizer = node_defaults(host, "LoraLabOptimizerOptions")  # every input: it wins over Train LoRA Options
        memory = {"memory_mode": "as_set", "offload_fraction": offload_fraction if case.trainer == "ours_offload"
                  else 0.0, "gradient_checkpointing": case.trainer != "ours_full"}
        self.optimizer_options = {**optimizer, **{k: v for k, v in OURS_OPTIONS.items() if k in optimizer}, **memory}
        self.native_spec = host.get_json("/object_info/TrainLoraNode")["TrainLoraNode"]

    def run(self, steps: int) -> dict:
        self.counter += 1
        case = self.case
        if case.trainer == "native":
            prompt, node = native_prompt(self.files, self.captions, steps, False, case.checkpoint_name,
                                         seed=self.counter, spec=self.native_spec, loaders=case.loaders)
        else:
            name = f"mem_{case.precision}_{self.counter}"
            prompt, node = ours_prompt(self.folder, self.size, steps, name,
                                       "attention_ff", self.optimizer_options["gradient_checkpointing"],
                                       self.option_defaults, case.checkpoint_name, seed=self.counter,
                                       loaders=case.loaders, optimizer_options=self.optimizer_options)
        cpu0 = cpu_seconds(self.host.process.pid)
        with RssSampler(self.host.process.pid) as rss:
            entry = self.host.run(prompt, timeout=3600)
        return {"seconds": exec_seconds(entry), "cpu": cpu_seconds(self.host.process.pid) - cpu0,
                "peak": rss.peak - rss.before, "kept": rss.after - rss.before, "load": os.getloadavg()[0],
                **({} if case.trainer == "native" else self.memory_plan(name))}

    def memory_plan(self, name: str) -> dict:
        """What the job `name` says it chose (memory plan, share of the weights on the device), and the base's
        weights as stored."""
        summary = next(j for j in self.host.get_json("/loralab/jobs") if j["name"] == name)
        job = self.host.get_json(f"/loralab/jobs/{summary['id']}")
        on_device = job.get("weights_on_device") or {}
        total = on_device.get("total_bytes")
        share = f"; {on_device['bytes'] / total:.0%} of the weights on the device" if total else ""
        return {"plan": f"{job.get('memory_plan')}{share}", "weights": total}


def measure(case: Case, args: argparse.Namespace, n1: int, n2: int) -> dict:
    """One case in a fresh host: its peaks, kept memory, s/step; or the host's error."""
    with bench_host(f"loralab-bench-memory-{case.precision}-", args.keep, full_size=args.full_size) as host:
        host.extra_args = HOST_FLAGS.get(case.precision, ())
        for part in CHECKPOINT_PARTS:
            add_checkpoint_part(host.base_dir, part, FULL_CHECKPOINT if args.full_size else TINY_CHECKPOINT)
        host.start()
        folder = "memory"
        make_demo_dataset(host.input_dir / folder, count=args.images, size=args.size)
        time.sleep(1.0)  # the host settles after its start before its idle size is read
        idle = rss_bytes(host.process.pid)
        runner = CaseRunner(host, case, folder, args.size, args.offload_fraction)
        runs: dict[int, list[dict]] = {n1: [], n2: []}
        t0 = time.monotonic()
        try:
            with RssSampler(host.process.pid) as whole:
                runner.run(1)  # warm-up: loads the base, encodes the dataset
                for _ in range(args.repeat):
                    for steps in (n1, n2):
                        runs[steps].append(runner.run(steps))
        except HostError as e:
            first_line = str(e).removeprefix("prompt failed: ").splitlines()[0][:160]
            return {"error": first_line, "version": host_versions(host)}
        every, pairs = runs[n1] + runs[n2], list(zip(runs[n1], runs[n2], strict=True))
        result = {"sps": med([(b["seconds"] - a["seconds"]) / (n2 - n1) for a, b in pairs]),
                  "cps": med([(b["cpu"] - a["cpu"]) / (n2 - n1) for a, b in pairs]),
                  "peak": whole.peak - idle, "train_peak": max(r["peak"] for r in every),
                  "kept": max(r["kept"] for r in every), "load": med([r["load"] for r in every]),
                  "plan": every[-1].get("plan"), "weights": every[-1].get("weights"), "version": host_versions(host),
                  "idle": idle}
        weights = f"base weights {mib(result['weights'])}, " if result["weights"] else ""
        print(f"  {case.precision} {case.trainer}: {result['sps']:.3f} s/step (CPU {result['cps']:.2f}), {weights}"
              f"peak RSS {mib(result['peak'])} over idle {mib(idle)}, train peak {mib(result['train_peak'])}, kept "
              f"{mib(result['kept'])}, load {result['load']:.2f}; {result['plan'] or 'native'} "
              f"({time.monotonic() - t0:.0f} s)", flush=True)
        return result


def measured(r: dict | None) -> bool:
    """A case with figures to compare: it ran, and its step time rose above the noise of the per-prompt work."""
    return r is not None and "error" not in r and r["sps"] > 0


def row(case: Case, r: dict, reference: dict | None, native: dict | None) -> str:
    if "error" in r:
        return f"| {case.precision} | {case.trainer} | fails: {r['error']} | | | | | | |"
    if not measured(r):
        return (f"| {case.precision} | {case.trainer} | below the noise of the per-prompt work: raise --steps N2 | "
                f"| {mib(r['peak'])} | {mib(r['train_peak'])} | {mib(r['kept'])} | | |")
    versus_full = (f"{r['sps'] / reference['sps']:.2f}x / {r['peak'] / reference['peak']:.2f}x"
                   if measured(reference) else "")
    versus_native = (f"{r['sps'] / native['sps']:.2f}x / {r['peak'] / native['peak']:.2f}x"
                     if measured(native) and case.trainer != "native" else "")
    weights = mib(r["weights"]) if r.get("weights") else "as ours"
    return (f"| {case.precision} | {case.trainer} | {r['sps']:.3f} (CPU {r['cps']:.2f}; load {r['load']:.1f}) | "
            f"{weights} | {mib(r['peak'])} | {mib(r['train_peak'])} | {mib(r['kept'])} | {versus_full} | "
            f"{versus_native} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--trainers", nargs="+", choices=TRAINERS, default=list(TRAINERS))
    parser.add_argument("--steps", type=int, nargs=2, default=[2, 6], metavar=("N1", "N2"),
                        help="step counts of the two timed runs (default 2 6)")
    parser.add_argument("--repeat", type=int, default=2, help="repetitions of the pair; medians (default 2)")
    parser.add_argument("--size", type=int, default=64, help="training resolution in px (default 64)")
    parser.add_argument("--images", type=int, default=4, help="demo images in the dataset (default 4)")
    parser.add_argument("--threads", type=int, default=1, help="the host's torch CPU threads (default 1; 0 = torch's "
                                                                "default)")
    parser.add_argument("--offload-fraction", type=float, default=0.5, help="ours_offload's share (default 0.5)")
    parser.add_argument("--full-size", action="store_true", help="the real SD1.5 UNet (default: the small model)")
    parser.add_argument("--keep", action="store_true", help="keep the hosts' base directories")
    args = parser.parse_args()
    n1, n2 = sorted(args.steps)
    if n1 < 1 or n2 <= n1 or args.repeat < 1 or not 0 < args.offload_fraction <= 1:
        parser.error("need 1 <= N1 < N2, --repeat >= 1 and 0 < --offload-fraction <= 1")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the host on `timeout`/kill too
    started = print_start()
    limit_host_threads(args.threads)
    rss_follows_live_memory()
    ensure_tiny_checkpoint(full_size=args.full_size)
    checkpoint_name = FULL_CHECKPOINT_NAME if args.full_size else TINY_CHECKPOINT_NAME
    stem = Path(checkpoint_name).stem
    print(f"model {checkpoint_name}; {args.images} images at {args.size} px, batch 1, rank {RANK}, AdamW lr {LR}, "
          f"fp32 compute; timed from {n1} and {n2} steps, {args.repeat} repetitions; {args.threads or 'default'} "
          f"torch threads; each case in its own host (--cpu)")
    results: dict[Case, dict] = {}
    for precision in args.precisions:
        loaders = {"UNETLoader": {"unet_name": f"{stem}-unet.safetensors",
                                  "weight_dtype": FP8_WEIGHTS if precision == "fp8" else "default"},
                   "CLIPLoader": {"clip_name": f"{stem}-clip.safetensors", "type": "stable_diffusion"},
                   "VAELoader": {"vae_name": f"{stem}-vae.safetensors"}}
        for trainer in args.trainers:
            case = Case(precision, trainer, checkpoint_name, loaders)
            results[case] = measure(case, args, n1, n2)
    version = next(iter(results.values()))["version"]
    print(f"\nhost: {version}\n")
    print("| base | trainer | s/step | base weights | peak RSS over idle | train peak over loaded | kept after | "
          "s/step / peak vs ours_full | s/step / peak vs native |")
    print("|---|---|---|---|---|---|---|---|---|")
    for case, r in results.items():
        reference = next((v for c, v in results.items() if c.precision == case.precision
                          and c.trainer == "ours_full"), None)
        native = next((v for c, v in results.items() if c.precision == case.precision and c.trainer == "native"),
                      None)
        print(row(case, r, reference if case.trainer != "ours_full" else None, native))
    print("\nWhat each ours run chose (its job's memory plan):")
    for case, r in results.items():
        if r.get("plan"):
            print(f"  {case.precision} {case.trainer}: {r['plan']}")
    print(f"\npeak RSS = the host's VmRSS peak over the whole case (base load, encoding, {2 * args.repeat + 1} "
          "prompts) minus its idle VmRSS after start; train peak = the peak during a timed prompt over the value "
          "before it (base loaded); kept = VmRSS after a prompt over before it. On the CPU the offloaded weights "
          "stay in the same memory: offload does not lower the peak here, it measures the streamed path's cost.")
    print_end(started, str(os.cpu_count()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
