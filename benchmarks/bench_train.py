"""Benchmark: LoRA Lab's Train LoRA versus the host's native TrainLoraNode, same model, data and settings.

One real ComfyUI host (127.0.0.1, --cpu, the host's own torch thread count) runs everything, on the
small SD1.5-architecture test model. Dataset: `--images` demo images (make_demo_dataset) drawn at the
training resolution, with their captions. Ours reads them with LoRA Dataset (flip off, no validation
split); native gets the same PNGs through LoadImage -> ImageBatch -> VAEEncode and the same captions
through CLIPTextEncode -> ConditioningCombine (one conditioning per image, same order).

Settings, both: batch 1, rank 8, fp32 (native training_dtype/lora_dtype fp32; ours mixed_precision
"no"), AdamW with weight decay 0.01 (torch's default, which native uses), lr 1e-4, constant schedule,
no gradient clipping, no gradient checkpointing (unless --gradient-checkpointing), seed 0.
Differences that remain: native trains EVERY weight of the UNet (all linears and convs as LoRA, plus
full-size diffs of norms and biases) with alpha 1 (scale 1/rank); ours trains the layers its `targets`
option names, with alpha = rank (scale 1). Ours is run twice: targets=attention_ff and attention_ff_conv.
Native's loss is MSE on the x0 prediction; ours is MSE on the noise (epsilon) prediction, so the
losses are on different scales; ours is also reported at fixed noise (eval_loss, before -> after).

Seconds per step (steady state): each case is run with N1 and N2 steps after an untimed 1-step warm-up
(model load, dataset encoding, first-use costs); the runs are interleaved (all warm-ups, all N1, all N2)
so a change in the machine's load hits every case alike; and s/step = (t(N2) - t(N1)) / (N2 - N1), where t is
the host's own execution time of the prompt (execution_success - execution_start from its history),
so setup and the per-run constant work (ours: loss at fixed noise before and after, saving the file)
cancel out. Peak memory: VmRSS of the host process sampled every 20 ms during each timed prompt;
"peak RSS over idle" = peak minus the value just before the prompt was queued (max of the two runs).
The host is started with MALLOC_MMAP_THRESHOLD_=65536 / MALLOC_TRIM_THRESHOLD_=131072 (same for both;
--no-malloc-tuning to skip) so freed blocks go back to the OS and RSS follows live memory; without it
glibc keeps an earlier prompt's high-water mark and the growth reads ~0.
Loss: mean of the last 5 step losses of the N2-step run.

Seconds per step are also given in the host's CPU seconds (user+system, /proc/<pid>/stat, same
difference), which other load on a shared machine disturbs far less than wall time.

Usage (from the repository root):  .venv/bin/python benchmarks/bench_train.py [--sizes 64 128] [--steps 2 8]
    [--images 4] [--cases ours_attention_ff ours_attention_ff_conv]
e.g. on a busy 2-core machine: --sizes 64 --images 2 --steps 2 10, then
     --sizes 128 --images 2 --steps 1 5 --cases ours_attention_ff
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
    node_defaults,
    print_end,
    print_start,
)
from scripts.comfy_host import ComfyHost, HostError  # noqa: E402
from scripts.graphs import Graph, checkpoint, out  # noqa: E402
from scripts.make_demo_dataset import make_demo_dataset  # noqa: E402

TARGET_TIME, RANK, LR, SEED = 0.7, 8, 1e-4, 0
CASES = ("ours_attention_ff", "ours_attention_ff_conv", "native")
OURS_OPTIONS = {"dropout": 0.0, "schedule": "constant", "warmup_steps": 0, "grad_accumulation": 1,
                "max_grad_norm": 0.0, "min_snr_gamma": 0.0, "noise_offset": 0.0, "optimizer": "adamw",
                "weight_decay": 0.01, "mixed_precision": "no", "checkpoint_every": 0, "resume": False}


def ours_prompt(folder: str, size: int, steps: int, name: str, targets: str, checkpointing: bool,
                option_defaults: dict) -> tuple[dict, str]:
    g = Graph()
    ckpt = checkpoint(g)
    data = g.add("LoraLabDataset", folder=folder, trigger_word="", resolution=size, flip=False,
                 validation_share=0.0, seed=0)
    opts = g.add("LoraLabTrainOptions", **{**option_defaults, **OURS_OPTIONS, "targets": targets,
                                           "gradient_checkpointing": checkpointing})
    train = g.add("LoraLabTrainLora", model=out(ckpt, 0), clip=out(ckpt, 1), vae=out(ckpt, 2), dataset=out(data),
                  name=name, steps=steps, learning_rate=LR, rank=RANK, alpha=float(RANK), batch_size=1, seed=SEED,
                  options=out(opts))
    return g.nodes, train


def native_prompt(files: list[str], captions: list[str], steps: int, checkpointing: bool) -> tuple[dict, str]:
    g = Graph()
    ckpt = checkpoint(g)
    images = [g.add("LoadImage", image=f) for f in files]
    batch = images[0]
    for image in images[1:]:
        batch = g.add("ImageBatch", image1=out(batch), image2=out(image))
    encoded = g.add("VAEEncode", pixels=out(batch), vae=out(ckpt, 2))
    # A list of 1-image latents: 0.3.75's TrainLoraNode fails on a single LATENT input ('multi_res' unset).
    latents = g.add("RebatchLatents", latents=out(encoded), batch_size=1)
    conds = [g.add("CLIPTextEncode", text=c, clip=out(ckpt, 1)) for c in captions]
    positive = conds[0]
    for cond in conds[1:]:
        positive = g.add("ConditioningCombine", conditioning_1=out(positive), conditioning_2=out(cond))
    train = g.add("TrainLoraNode", model=out(ckpt, 0), latents=out(latents), positive=out(positive), batch_size=1,
                  grad_accumulation_steps=1, steps=steps, learning_rate=LR, rank=RANK, optimizer="AdamW",
                  loss_function="MSE", seed=SEED, training_dtype="fp32", lora_dtype="fp32", algorithm="LoRA",
                  gradient_checkpointing=checkpointing, existing_lora="[None]")
    preview = g.add("PreviewAny", source=out(train, 2))
    return g.nodes, preview


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise HostError("no VmRSS")


class RssSampler:
    """Samples the host's VmRSS every `period` s in a thread; `peak` is the highest value seen."""

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
        self.peak = max(self.peak, rss_bytes(self.pid))


class Runner:
    def __init__(self, host: ComfyHost, folder: str, files: list[str], captions: list[str], checkpointing: bool):
        self.host, self.folder, self.files, self.captions = host, folder, files, captions
        self.checkpointing = checkpointing
        self.counter = 0
        self.option_defaults = node_defaults(host, "LoraLabTrainOptions")

    def run(self, case: str, size: int, steps: int) -> dict:
        """One prompt: its host time, peak RSS over idle, step losses and (ours) loss at fixed noise."""
        self.counter += 1
        if case == "native":
            prompt, node = native_prompt(self.files, self.captions, steps, self.checkpointing)
        else:
            prompt, node = ours_prompt(self.folder, size, steps, f"bench_{case}_{size}_{steps}_{self.counter}",
                                       case.removeprefix("ours_"), self.checkpointing,
                                       self.option_defaults)
        cpu0 = cpu_seconds(self.host.process.pid)
        with RssSampler(self.host.process.pid) as rss:
            entry = self.host.run(prompt, timeout=1800)
        cpu = cpu_seconds(self.host.process.pid) - cpu0
        ui = entry["outputs"][node]
        if case == "native":
            losses, eval_loss = json.loads(ui["text"][0])["loss"], None
        else:
            losses, eval_loss = ui["loss_history"], ui["eval_loss"]
        if len(losses) != steps:
            raise HostError(f"{case}: {len(losses)} losses for {steps} steps")
        return {"seconds": exec_seconds(entry), "cpu": cpu, "peak": rss.peak - rss.before, "losses": losses,
                "eval": eval_loss}


def mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="training resolutions (px)")
    parser.add_argument("--steps", type=int, nargs=2, default=[2, 8], metavar=("N1", "N2"),
                        help="step counts of the two timed runs (default 2 8)")
    parser.add_argument("--cases", nargs="+", choices=CASES[:2], default=list(CASES[:2]),
                        help="which of ours to run (native always runs)")
    parser.add_argument("--images", type=int, default=4, help="demo images in the dataset (default 4)")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="on for both (default off)")
    parser.add_argument("--no-malloc-tuning", action="store_true",
                        help="do not set MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ for the host")
    parser.add_argument("--keep", action="store_true", help="keep the host's base directory")
    args = parser.parse_args()
    n1, n2 = sorted(args.steps)
    if n1 < 1 or n2 <= n1 or n2 < 5:
        parser.error("need 1 <= N1 < N2 and N2 >= 5")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the host on `timeout`/kill too
    started = print_start()
    if not args.no_malloc_tuning:
        # Large blocks straight from mmap and back on free, so the host's RSS follows its live memory
        # instead of keeping the high-water mark of an earlier prompt (same for both trainers).
        os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
        os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", "131072")
    with bench_host("loralab-bench-train-", args.keep) as host:
        host.start()
        print(f"host: {host_versions(host)}, --cpu, 127.0.0.1:{host.port}; {args.images} images, batch 1, "
              f"rank {RANK}, fp32, AdamW lr {LR}, "
              f"gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}, steps {n1} and {n2}; "
              f"host env MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_', 'unset')}")
        rows = []
        for size in args.sizes:
            folder = f"bench{size}"
            make_demo_dataset(host.input_dir / folder, count=args.images, size=size)
            pngs = sorted((host.input_dir / folder).glob("*.png"))
            files = [f"{folder}/{p.name}" for p in pngs]
            captions = [p.with_suffix(".txt").read_text().strip() for p in pngs]
            runner = Runner(host, folder, files, captions, args.gradient_checkpointing)
            cases = [*args.cases, "native"]
            timed: dict[str, list[dict]] = {case: [] for case in cases}
            for phase, steps in (("warm-up", 1), ("N1", n1), ("N2", n2)):  # warm-up: untimed (model load,
                # dataset encoding, first-use costs)
                for case in cases:  # interleaved, so a change in the machine's load hits every case alike
                    t0 = time.monotonic()
                    r = runner.run(case, size, steps)
                    print(f"  {size}px {case} {steps} steps: host time {r['seconds']:.2f} s, CPU {r['cpu']:.1f} s, "
                          f"peak RSS over idle "
                          f"{mib(r['peak'])}, last-5 loss {statistics.fmean(r['losses'][-5:]):.4f}, fixed-noise "
                          f"{r['eval']} ({time.monotonic() - t0:.0f} s wall)", flush=True)
                    if phase != "warm-up":
                        timed[case].append(r)
            res = {}
            for case in cases:
                a, b = timed[case]
                res[case] = {"sps": (b["seconds"] - a["seconds"]) / (n2 - n1), "cps": (b["cpu"] - a["cpu"]) / (n2 - n1),
                             "peak": max(a["peak"], b["peak"]),
                             "loss": statistics.fmean(b["losses"][-5:]), "eval": b["eval"]}
            nat = res["native"]
            for case in args.cases:
                o = res[case]
                ratio = o["sps"] / nat["sps"] if nat["sps"] > 0 else float("nan")
                verdict = ("met" if ratio <= TARGET_TIME else "MISSED") + "/" + \
                          ("met" if o["peak"] <= nat["peak"] else "MISSED")
                cratio = o["cps"] / nat["cps"] if nat["cps"] > 0 else float("nan")
                rows.append((f"{size} px, ours {case.removeprefix('ours_')}", f"{o['sps']:.3f} (CPU {o['cps']:.2f})",
                             f"{nat['sps']:.3f} (CPU {nat['cps']:.2f})", f"{ratio:.2f}x ({verdict}; CPU {cratio:.2f}x)",
                             mib(o["peak"]), mib(nat["peak"]),
                             f"{o['loss']:.4f} (eps; fixed noise {o['eval'][0]:.4f} -> {o['eval'][1]:.4f})",
                             f"{nat['loss']:.4f} (x0)"))

        print(f"\n| resolution | ours s/step | native s/step | ratio (time/memory target) | ours peak RSS | "
              f"native peak RSS | ours loss (last 5 of {n2}) | native loss (last 5 of {n2}) |")
        print("|---|---|---|---|---|---|---|---|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
        print(f"\ns/step = (t({n2}) - t({n1})) / {n2 - n1} from the host's execution timestamps (CPU = the same "
              "difference of the host process's user+system CPU seconds, /proc/<pid>/stat: less sensitive to other "
              "load on the machine); peak RSS = host "
              f"VmRSS peak over its value before the prompt (20 ms sampling). Targets: time <= {TARGET_TIME}x "
              "native, peak RSS <= native. Native trains every UNet weight (convs, norms, biases too, alpha 1); "
              "ours only the named targets (alpha = rank). Losses: ours = MSE on epsilon, native = MSE on x0 "
              "(not the same scale; 'fixed noise' = ours' eval loss before -> after training).")
        print_end(started, str(os.cpu_count()))
        return 0


if __name__ == "__main__":
    sys.exit(main())
