"""Benchmark: LoRA Lab's Train LoRA versus the host's native TrainLoraNode, same model, data and settings.

One real ComfyUI host (127.0.0.1, --cpu, `--threads` torch threads, 1 by default as sd-scripts is measured)
runs everything, on the small SD1.5-architecture test model or (`--full-size`) a random-weight model with the
real SD1.5 UNet (channel_mult [1, 2, 4, 4], two res blocks per level; built once and cached). Dataset: `--images`
demo images (make_demo_dataset) drawn at the training resolution, with their captions. Ours reads them with
LoRA Dataset (flip off, no validation split); native gets the same PNGs through LoadImage -> ImageBatch ->
VAEEncode and the same captions through CLIPTextEncode -> ConditioningCombine (one conditioning per image,
same order).

Settings, both: batch 1, rank 8, fp32 (native training_dtype/lora_dtype fp32; ours mixed_precision
"no"), AdamW with weight decay 0.01 (torch's default, which native uses), lr 1e-4, constant schedule,
no gradient clipping, no gradient checkpointing (unless --gradient-checkpointing), seed varied per prompt.
Differences that remain: native trains EVERY weight of the UNet (all linears and convs as LoRA, plus
full-size diffs of norms and biases) with alpha 1 (scale 1/rank); ours trains the layers its `targets`
option names, with alpha = rank (scale 1). Ours is run with targets=attention_ff and attention_ff_conv (the
nearest to native's layer set). Native's loss is MSE on the x0 prediction; ours is MSE on the noise
(epsilon) prediction, so the losses are on different scales; ours is also reported at fixed noise
(eval_loss, before -> after, the node's default 4 images).

Every prompt differs from every earlier one (ours: its LoRA name; native: its seed), so the host never
answers a TrainLoraNode from its cache; the loaders and the encoders are cached for both alike after the
untimed warm-up (model load, dataset encoding, first-use costs).

Seconds per step (steady state): each repetition runs every case with N1 and N2 steps, interleaved (case by
case, round by round) so a change in the machine's load hits every case alike; s/step = (t(N2) - t(N1)) /
(N2 - N1), where t is the host's own execution time of the prompt (execution_success - execution_start from its
history), so setup and the per-run constant work (ours: loss at fixed noise before and after, saving the file)
cancel out; the median over `--repeat` repetitions. Whole prompt: the host's time for a prompt of
`--short-steps` steps (30), what a user waits for a short run, fixed costs included; median over repetitions.
CPU: the same differences of the host process's user+system CPU seconds (/proc/<pid>/stat), which other load
on a shared machine disturbs far less than wall time. Peak memory: VmRSS of the host process sampled every
20 ms during each timed prompt; "peak RSS over idle" = peak minus the value just before the prompt was queued
(max over the runs). The host is started with MALLOC_MMAP_THRESHOLD_=65536 / MALLOC_TRIM_THRESHOLD_=131072
(same for both; --no-malloc-tuning to skip) so freed blocks go back to the OS and RSS follows live memory.
Loss: mean of the last 5 step losses of the N2-step runs. The machine's load average is printed beside each
figure (median over the runs behind it).

Usage (from the repository root):  .venv/bin/python benchmarks/bench_train.py [--sizes 64 256] [--steps 2 8]
    [--short-steps 30] [--repeat 3] [--images 4] [--threads 1] [--full-size]
    [--cases ours_attention_ff ours_attention_ff_conv]
e.g. the full-size model: --full-size --sizes 64 --images 2 --steps 1 4 --short-steps 10 --repeat 2
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

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
from scripts.comfy_host import FULL_CHECKPOINT_NAME, TINY_CHECKPOINT_NAME, ComfyHost, HostError  # noqa: E402
from scripts.graphs import Graph, checkpoint, out  # noqa: E402
from scripts.make_demo_dataset import make_demo_dataset  # noqa: E402

TARGET_TIME, TARGET_PROMPT, RANK, LR = 0.7, 1.0, 8, 1e-4
CASES = ("ours_attention_ff", "ours_attention_ff_conv", "native")
OURS_OPTIONS = {"dropout": 0.0, "schedule": "constant", "warmup_steps": 0, "grad_accumulation": 1,
                "max_grad_norm": 0.0, "min_snr_gamma": 0.0, "noise_offset": 0.0, "optimizer": "adamw",
                "weight_decay": 0.01, "mixed_precision": "no", "checkpoint_every": 0, "resume": False}


def base_outputs(g: Graph, checkpoint_name: str, loaders: dict | None) -> tuple[list, list, list]:
    """MODEL, CLIP and VAE: the checkpoint's, or (`loaders`: the inputs of UNETLoader, CLIPLoader and VAELoader by
    class, e.g. an fp8 weight_dtype) each from its own file through the host's separate loaders."""
    if loaders is None:
        ckpt = checkpoint(g, checkpoint_name)
        return out(ckpt, 0), out(ckpt, 1), out(ckpt, 2)
    return tuple(out(g.add(loader, **loaders[loader])) for loader in ("UNETLoader", "CLIPLoader", "VAELoader"))


def ours_prompt(folder: str, size: int, steps: int, name: str, targets: str, checkpointing: bool,
                option_defaults: dict, checkpoint_name: str, seed: int, loaders: dict | None = None,
                optimizer_options: dict | None = None) -> tuple[dict, str]:
    """`optimizer_options`: every input of an Optimizer Options node (memory_mode, offload_fraction...), chained
    between Train LoRA Options and Train LoRA, so that its values win."""
    g = Graph()
    model, clip, vae = base_outputs(g, checkpoint_name, loaders)
    data = g.add("LoraLabDataset", folder=folder, trigger_word="", resolution=size, flip=False,
                 validation_share=0.0, seed=0)
    opts = g.add("LoraLabTrainOptions", **{**option_defaults, **OURS_OPTIONS, "targets": targets,
                                           "gradient_checkpointing": checkpointing})
    if optimizer_options is not None:
        opts = g.add("LoraLabOptimizerOptions", options=out(opts), **optimizer_options)
    train = g.add("LoraLabTrainLora", model=model, clip=clip, vae=vae, dataset=out(data), name=name, steps=steps,
                  learning_rate=LR, rank=RANK, alpha=float(RANK), batch_size=1, seed=seed, options=out(opts))
    return g.nodes, train


# Inputs of TrainLoraNode that newer hosts (0.33) require, at the values that train as 0.3.75's node did.
NATIVE_NEWER_INPUTS = {"quantized_backward": False, "checkpoint_depth": 1, "offloading": False, "bucket_mode": False,
                       "bypass_mode": False}


def native_prompt(files: list[str], captions: list[str], steps: int, checkpointing: bool, checkpoint_name: str,
                  seed: int, spec: dict, loaders: dict | None = None) -> tuple[dict, str]:
    """`spec`: the host's /object_info entry of TrainLoraNode (its inputs and outputs differ by version)."""
    g = Graph()
    model, clip, vae = base_outputs(g, checkpoint_name, loaders)
    images = [g.add("LoadImage", image=f) for f in files]
    batch = images[0]
    for image in images[1:]:
        batch = g.add("ImageBatch", image1=out(batch), image2=out(image))
    encoded = g.add("VAEEncode", pixels=out(batch), vae=vae)
    # A list of 1-image latents: 0.3.75's TrainLoraNode fails on a single LATENT input ('multi_res' unset).
    latents = g.add("RebatchLatents", latents=out(encoded), batch_size=1)
    conds = [g.add("CLIPTextEncode", text=c, clip=clip) for c in captions]
    positive = conds[0]
    for cond in conds[1:]:
        positive = g.add("ConditioningCombine", conditioning_1=out(positive), conditioning_2=out(cond))
    train = g.add("TrainLoraNode", model=model, latents=out(latents), positive=out(positive),
                  batch_size=1, grad_accumulation_steps=1, steps=steps, learning_rate=LR, rank=RANK, optimizer="AdamW",
                  loss_function="MSE", seed=seed, training_dtype="fp32", lora_dtype="fp32", algorithm="LoRA",
                  gradient_checkpointing=checkpointing, existing_lora="[None]",
                  **{k: v for k, v in NATIVE_NEWER_INPUTS.items() if k in spec["input"]["required"]})
    # 0.3.75 outputs (MODEL, LORA_MODEL, LOSS_MAP, INT); 0.33 has no MODEL output
    preview = g.add("PreviewAny", source=out(train, spec["output"].index("LOSS_MAP")))
    return g.nodes, preview


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise HostError("no VmRSS")


class RssSampler:
    """Samples the host's VmRSS every `period` s in a thread; `peak` is the highest value seen, `after` the value
    once the prompt has ended (what the run left behind: training tensors it did not give back)."""

    def __init__(self, pid: int, period: float = 0.02) -> None:
        self.pid, self.period = pid, period
        self.before = rss_bytes(pid)
        self.peak = self.before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            time.sleep(self.period)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.after = rss_bytes(self.pid)
        self.peak = max(self.peak, self.after)


class Runner:
    def __init__(self, host: ComfyHost, folder: str, files: list[str], captions: list[str], checkpointing: bool,
                 checkpoint_name: str):
        self.host, self.folder, self.files, self.captions = host, folder, files, captions
        self.checkpointing, self.checkpoint_name = checkpointing, checkpoint_name
        self.counter = 0
        self.option_defaults = node_defaults(host, "LoraLabTrainOptions")
        self.native_spec = host.get_json("/object_info/TrainLoraNode")["TrainLoraNode"]

    def run(self, case: str, size: int, steps: int) -> dict:
        """One prompt, never queued before (own seed, own name): its host time, CPU time, peak RSS over idle,
        step losses, (ours) loss at fixed noise, and the machine's load when it ended."""
        self.counter += 1
        if case == "native":
            prompt, node = native_prompt(self.files, self.captions, steps, self.checkpointing, self.checkpoint_name,
                                         seed=self.counter, spec=self.native_spec)
        else:
            prompt, node = ours_prompt(self.folder, size, steps, f"bench_{case}_{size}_{steps}_{self.counter}",
                                       case.removeprefix("ours_"), self.checkpointing, self.option_defaults,
                                       self.checkpoint_name, seed=self.counter)
        cpu0 = cpu_seconds(self.host.process.pid)
        with RssSampler(self.host.process.pid) as rss:
            entry = self.host.run(prompt, timeout=3600)
        cpu = cpu_seconds(self.host.process.pid) - cpu0
        ui = entry["outputs"][node]
        if case == "native":
            losses, eval_loss = json.loads(ui["text"][0])["loss"], None
        else:
            losses, eval_loss = ui["loss_history"], ui["eval_loss"]
        if len(losses) != steps:
            raise HostError(f"{case}: {len(losses)} losses for {steps} steps")
        return {"seconds": exec_seconds(entry), "cpu": cpu, "peak": rss.peak - rss.before,
                "kept": rss.after - rss.before, "losses": losses,
                "eval": eval_loss, "load": os.getloadavg()[0]}


def mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def summarise(runs: dict[str, list[dict]], n1: int, n2: int) -> dict:
    """Medians over the repetitions of one case: s/step and CPU s/step from (N1, N2) pairs, the short prompt."""
    pairs = list(zip(runs["N1"], runs["N2"], strict=True))
    every = [r for rs in runs.values() for r in rs]
    return {"sps": med([(b["seconds"] - a["seconds"]) / (n2 - n1) for a, b in pairs]),
            "cps": med([(b["cpu"] - a["cpu"]) / (n2 - n1) for a, b in pairs]),
            "prompt": med([r["seconds"] for r in runs["short"]]),
            "prompt_cpu": med([r["cpu"] for r in runs["short"]]),
            "peak": max(r["peak"] for r in every), "kept": max(r["kept"] for r in every),
            "load": med([r["load"] for r in every]),
            "loss": statistics.fmean(runs["N2"][-1]["losses"][-5:]), "eval": runs["N2"][-1]["eval"]}


def verdict(ratio: float, target: float) -> str:
    return f"{ratio:.2f}x ({'met' if ratio <= target else 'MISSED'})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256], help="training resolutions (px)")
    parser.add_argument("--steps", type=int, nargs=2, default=[2, 8], metavar=("N1", "N2"),
                        help="step counts of the two steady-state runs (default 2 8)")
    parser.add_argument("--short-steps", type=int, default=30, help="steps of the whole-prompt run (default 30)")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved repetitions; medians (default 3)")
    parser.add_argument("--cases", nargs="+", choices=CASES[:2], default=list(CASES[:2]),
                        help="which of ours to run (native always runs)")
    parser.add_argument("--images", type=int, default=4, help="demo images in the dataset (default 4)")
    parser.add_argument("--threads", type=int, default=1, help="the host's torch CPU threads (default 1; 0 = torch's "
                                                                "default)")
    parser.add_argument("--full-size", action="store_true", help="the real SD1.5 UNet (default: the small model)")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="on for both (default off)")
    parser.add_argument("--no-malloc-tuning", action="store_true",
                        help="do not set MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ for the host")
    parser.add_argument("--keep", action="store_true", help="keep the host's base directory")
    args = parser.parse_args()
    n1, n2 = sorted(args.steps)
    if n1 < 1 or n2 <= n1 or args.repeat < 1 or args.short_steps < 1:
        parser.error("need 1 <= N1 < N2, --repeat >= 1 and --short-steps >= 1")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the host on `timeout`/kill too
    started = print_start()
    limit_host_threads(args.threads)
    if not args.no_malloc_tuning:
        rss_follows_live_memory()  # the same for both trainers
    checkpoint_name = FULL_CHECKPOINT_NAME if args.full_size else TINY_CHECKPOINT_NAME
    with bench_host("loralab-bench-train-", args.keep, full_size=args.full_size) as host:
        host.start()
        print(f"host: {host_versions(host)}, --cpu, {args.threads or 'default'} torch threads, 127.0.0.1:{host.port}; "
              f"model {checkpoint_name}; {args.images} images, batch 1, rank {RANK}, fp32, AdamW lr {LR} "
              f"weight decay 0.01, constant lr, no clipping, gradient checkpointing "
              f"{'on' if args.gradient_checkpointing else 'off'}; steady state from {n1} and {n2} steps, whole prompt "
              f"of {args.short_steps} steps, {args.repeat} interleaved repetitions; ours: Train LoRA Options defaults "
              f"otherwise (eval_images 4, no samples); native: TrainLoraNode LoRA on every weight, MSE; host env "
              f"MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_', 'unset')}")
        rows = []
        for size in args.sizes:
            folder = f"bench{size}"
            make_demo_dataset(host.input_dir / folder, count=args.images, size=size)
            pngs = sorted((host.input_dir / folder).glob("*.png"))
            files = [f"{folder}/{p.name}" for p in pngs]
            captions = [p.with_suffix(".txt").read_text().strip() for p in pngs]
            runner = Runner(host, folder, files, captions, args.gradient_checkpointing, checkpoint_name)
            cases = [*args.cases, "native"]
            runs: dict[str, dict[str, list[dict]]] = {c: {"N1": [], "N2": [], "short": []} for c in cases}
            rounds = [("warm-up", 1)] + [(kind, steps) for _ in range(args.repeat)
                                         for kind, steps in (("N1", n1), ("N2", n2), ("short", args.short_steps))]
            for kind, steps in rounds:
                for case in cases:  # interleaved, so a change in the machine's load hits every case alike
                    t0 = time.monotonic()
                    r = runner.run(case, size, steps)
                    print(f"  {size}px {case} {kind} {steps} steps: host time {r['seconds']:.2f} s, CPU "
                          f"{r['cpu']:.1f} s, peak RSS over idle {mib(r['peak'])}, kept after {mib(r['kept'])}, "
                          f"last-5 loss "
                          f"{statistics.fmean(r['losses'][-5:]):.4f}, fixed-noise {r['eval']}, load {r['load']:.2f} "
                          f"({time.monotonic() - t0:.0f} s wall)", flush=True)
                    if kind != "warm-up":
                        runs[case][kind].append(r)
            res = {case: summarise(runs[case], n1, n2) for case in cases}
            nat = res["native"]
            for case in args.cases:
                o = res[case]
                rows.append((f"{size} px, ours {case.removeprefix('ours_')}",
                             f"{o['sps']:.3f} (CPU {o['cps']:.2f}; load {o['load']:.1f})",
                             f"{nat['sps']:.3f} (CPU {nat['cps']:.2f}; load {nat['load']:.1f})",
                             f"{verdict(o['sps'] / nat['sps'], TARGET_TIME)}; CPU {o['cps'] / nat['cps']:.2f}x",
                             f"{o['prompt']:.1f} / {nat['prompt']:.1f} (CPU {o['prompt_cpu']:.0f} / "
                             f"{nat['prompt_cpu']:.0f})",
                             f"{verdict(o['prompt'] / nat['prompt'], TARGET_PROMPT)}; CPU "
                             f"{o['prompt_cpu'] / nat['prompt_cpu']:.2f}x",
                             f"{mib(o['peak'])} / {mib(nat['peak'])} "
                             f"({'met' if o['peak'] <= nat['peak'] else 'MISSED'})",
                             f"{mib(o['kept'])} / {mib(nat['kept'])}",
                             f"{o['loss']:.4f} eps (fixed noise {o['eval'][0]:.4f} -> {o['eval'][1]:.4f}) / "
                             f"{nat['loss']:.4f} x0"))

        print(f"\n| case | ours s/step | native s/step | s/step ratio (target <= {TARGET_TIME}x) | "
              f"{args.short_steps}-step prompt s, ours / native | prompt ratio (target <= {TARGET_PROMPT}x) | "
              f"peak RSS over idle, ours / native | RSS kept after the prompt, ours / native | "
              f"loss (last 5 of {n2}), ours / native |")
        print("|---|---|---|---|---|---|---|---|---|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
        print(f"\ns/step = median over {args.repeat} repetitions of (t({n2}) - t({n1})) / {n2 - n1}, t = the host's "
              "execution time of the prompt (CPU = the same difference of the host process's user+system CPU "
              "seconds); prompt = the host's time for the whole prompt, fixed costs included; peak RSS = host VmRSS "
              "peak over its value before the prompt (20 ms sampling), max over the runs; kept = VmRSS once the "
              "prompt ended over its value before it (memory the run did not give back), max over the runs; load = "
              "median load average over the runs. Native trains every UNet weight (convs, norms, biases too, "
              "alpha 1); ours only the named targets (alpha = rank). Losses: ours = MSE on epsilon, native = MSE "
              "on x0 (not the same scale).")
        print_end(started, str(os.cpu_count()))
        return 0


if __name__ == "__main__":
    sys.exit(main())
