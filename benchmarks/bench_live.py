"""Benchmark: the live dashboard's cost to training: status polling, and periodic samples versus a KSampler.

One real ComfyUI host (127.0.0.1, --cpu) on the small SD1.5-architecture test model; dataset: 4 demo
images at 64 px (make_demo_dataset); Train LoRA with rank 4, batch 1, seed 5, fp32, constant lr 2e-3,
targets attention_ff; every run has a unique name.

0. Route cost. The idle host's CPU time per GET of a finished job's status route, and per GET of the
   host's own /queue route (what its queue panel polls), 500 GETs each on a keep-alive connection.
1. Polling. The same run without polling, with a poller thread that GETs /loralab/jobs/{id} `--rate` times a
   second (keep-alive connection; until the job appears it polls GET /loralab/jobs at the same rate), and
   with one that GETs the host's own /queue at the same rate, for the whole prompt. Seconds per step =
   (t(N2) - t(N1)) / (N2 - N1), t = the host's execution time of the prompt (execution_success -
   execution_start from its history), so setup (model load, dataset encoding, fixed-noise evaluation,
   saving) cancels out. The three modes are interleaved, their order rotated per round; the slowdown is
   the median over rounds of (polled / unpolled) - 1. The host's CPU seconds per step (user+system,
   /proc/<pid>/stat, same difference) are reported too; they include the server's work answering the polls.
   On a machine whose cores all train, any polling at all costs training time (the host's Python thread
   that answers competes with the training thread for the GIL and the cores): the /queue mode tells how
   much of the slowdown is the host's, not the route's.
2. Samples. The N2-step run with sample_every K (2 prompts, `--sample-steps`, cfg 5, euler/normal,
   64 px: a strip at step 0, every K steps and the end) versus the same run without samples:
   extra time per sample image = (t(with) - t(without)) / images. Reference: the same number of images
   (same prompts, steps, cfg, sampler, scheduler, size) through CheckpointLoaderSimple (cached) ->
   LoraLoader (the LoRA that run trained) -> CLIPTextEncode x2 -> KSampler -> VAEDecode -> SaveImage,
   one prompt; per image = its execution time / images (texts and seeds differ per image and
   repetition, so every encoder and sampler node executes, as the trainer encodes and samples per image).
   The two runs alternate in order per repetition, the reference follows;
   ratio = median extra per image / median reference per image.

Usage (from the repository root):  .venv/bin/python benchmarks/bench_live.py [--pairs 3] [--steps 10 30]
    [--reps 3] [--sample-every 5] [--sample-steps 4] [--rate 50] [--threads 0]
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.measure import (  # noqa: E402
    bench_host,
    command_line,
    cpu_seconds,
    exec_seconds,
    host_versions,
    limit_host_threads,
    med,
    node_defaults,
    print_end,
    print_start,
)
from scripts.comfy_host import ComfyHost, HostError  # noqa: E402
from scripts.graphs import Graph, checkpoint, out  # noqa: E402
from scripts.make_demo_dataset import make_demo_dataset  # noqa: E402
from scripts.training_graphs import TEST_OPTIONS, TRIGGER, train_graph  # noqa: E402

TARGET_POLL, TARGET_SAMPLE = 0.03, 1.0
FOLDER, SIZE, RANK, LR, CFG = "rings", 64, 4, 2e-3, 5.0
PROMPTS = (f"{TRIGGER}, a red ring", "a blue ball")


class Poller:
    """GETs the job's status route `rate` times a second on one keep-alive connection until stopped
    (or, with `native`, the host's own GET /queue, the route its queue panel polls)."""

    def __init__(self, host: ComfyHost, name: str, rate: float, native: bool = False) -> None:
        self.host, self.name, self.period, self.native = host, name, 1.0 / rate, native
        self.count = self.errors = 0
        self.job_id: str | None = None
        self.elapsed = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _get(self, conn: http.client.HTTPConnection, path: str):
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        self.count += 1
        if resp.status != 200:
            self.errors += 1
            return None
        return json.loads(body)

    def _loop(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.host.port, timeout=30)
        start = next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                if self.native:
                    self._get(conn, "/queue")
                elif self.job_id is None:
                    jobs = self._get(conn, "/loralab/jobs") or []
                    self.job_id = next((j["id"] for j in jobs if j["name"] == self.name), None)
                else:
                    self._get(conn, f"/loralab/jobs/{self.job_id}")
            except (OSError, http.client.HTTPException):
                self.errors += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.host.port, timeout=30)
            next_at += self.period
            delay = next_at - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            else:
                next_at = time.monotonic()  # fell behind: no burst to catch up
        self.elapsed = time.monotonic() - start
        conn.close()

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class Bench:
    def __init__(self, host: ComfyHost, option_defaults: dict) -> None:
        self.host, self.option_defaults, self.counter = host, option_defaults, 0

    def train(self, steps: int, poll_rate: float = 0.0, sample_every: int = 0, sample_steps: int = 4,
              poll_native: bool = False) -> dict:
        self.counter += 1
        name = f"live_{self.counter:03d}_{steps}_{'p' if poll_rate else 'n'}{sample_every}"
        options = {**self.option_defaults, **TEST_OPTIONS, "sample_every": sample_every,
                   "sample_prompts": "\n".join(PROMPTS), "sample_steps": sample_steps, "sample_cfg": CFG,
                   "sample_sampler": "euler", "sample_scheduler": "normal"}
        graph, node = train_graph(name, steps=steps, lr=LR, rank=RANK, folder=FOLDER, options=options)
        pid = self.host.process.pid
        cpu0 = cpu_seconds(pid)
        if poll_rate:
            with Poller(self.host, name, poll_rate, native=poll_native) as poller:
                entry = self.host.run(graph.nodes, timeout=1800)
        else:
            poller, entry = None, self.host.run(graph.nodes, timeout=1800)
        cpu = cpu_seconds(pid) - cpu0
        losses = entry["outputs"][node]["loss_history"]
        if len(losses) != steps:
            raise HostError(f"{name}: {len(losses)} losses for {steps} steps")
        job = next(j for j in self.host.get_json("/loralab/jobs") if j["name"] == name)
        status = self.host.get_json(f"/loralab/jobs/{job['id']}")
        result = {"name": name, "seconds": exec_seconds(entry), "cpu": cpu, "lora": status.get("lora_name"),
                  "images": len(status.get("samples", [])) * len(PROMPTS)}
        if poller is not None:
            if (poller.job_id is None and not poll_native) or poller.errors:
                raise HostError(f"{name}: poller found job {poller.job_id}, {poller.errors} errors")
            result["poll_rate"] = poller.count / poller.elapsed if poller.elapsed else 0.0
        return result

    def reference(self, lora: str, images: int, steps: int, rep: int) -> dict:
        """`images` KSampler images with the LoRA, same settings as the samples; one prompt."""
        g = Graph()
        ckpt = checkpoint(g)
        lora_node = g.add("LoraLoader", model=out(ckpt, 0), clip=out(ckpt, 1), lora_name=lora,
                          strength_model=1.0, strength_clip=1.0)
        model, clip = out(lora_node, 0), out(lora_node, 1)
        for i in range(images):
            tag = f"r{rep}i{i}"
            pos = g.add("CLIPTextEncode", text=f"{PROMPTS[i % len(PROMPTS)]}, {tag}", clip=clip)
            neg = g.add("CLIPTextEncode", text=tag, clip=clip)
            latent = g.add("EmptyLatentImage", width=SIZE, height=SIZE, batch_size=1)
            sampled = g.add("KSampler", model=model, seed=5 + 1000 * (rep + 2) + i, steps=steps, cfg=CFG,
                            sampler_name="euler", scheduler="normal", positive=out(pos), negative=out(neg),
                            latent_image=out(latent), denoise=1.0)
            decoded = g.add("VAEDecode", samples=out(sampled), vae=out(ckpt, 2))
            g.add("SaveImage", images=out(decoded), filename_prefix=f"bench_live/ref{rep}_{i}")
        pid = self.host.process.pid
        cpu0 = cpu_seconds(pid)
        entry = self.host.run(g.nodes, timeout=1800)
        return {"seconds": exec_seconds(entry), "cpu": cpu_seconds(pid) - cpu0, "images": images}


def route_cpu_ms(host: ComfyHost, path: str, count: int = 500) -> float:
    """The host's CPU milliseconds per GET of `path` (keep-alive connection, nothing else running)."""
    conn = http.client.HTTPConnection("127.0.0.1", host.port, timeout=30)
    cpu0 = cpu_seconds(host.process.pid)
    for _ in range(count):
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise HostError(f"GET {path} -> {resp.status}")
    conn.close()
    return (cpu_seconds(host.process.pid) - cpu0) / count * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=3, help="rounds of without / ours / host polling (default 3)")
    parser.add_argument("--steps", type=int, nargs=2, default=[10, 30], metavar=("N1", "N2"))
    parser.add_argument("--reps", type=int, default=3, help="repetitions of the samples comparison (default 3)")
    parser.add_argument("--sample-every", type=int, default=5)
    parser.add_argument("--sample-steps", type=int, default=4)
    parser.add_argument("--rate", type=float, default=50.0, help="status GETs per second (default 50)")
    parser.add_argument("--threads", type=int, default=0,
                        help="host CPU threads (OMP_NUM_THREADS); 0 (default) leaves torch's default")
    parser.add_argument("--keep", action="store_true", help="keep the host's base directory")
    args = parser.parse_args()
    n1, n2 = sorted(args.steps)
    if n1 < 1 or n2 <= n1:
        parser.error("need 1 <= N1 < N2")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = print_start()
    limit_host_threads(args.threads)
    with bench_host("loralab-bench-live-", args.keep) as host:
        host.start()
        print(f"host: {host_versions(host)}, --cpu, threads {args.threads or 'default'}; "
              f"{SIZE} px, 4 images, rank {RANK}, batch 1, "
              f"steps {n1}/{n2}; samples every {args.sample_every}, {args.sample_steps} steps, {len(PROMPTS)} prompts")
        make_demo_dataset(host.input_dir / FOLDER, count=4, size=SIZE)
        bench = Bench(host, node_defaults(host, "LoraLabTrainOptions"))

        # Warm-up, untimed: model load, first training, first sampling, first KSampler with a LoRA.
        warm = bench.train(1, sample_every=1, sample_steps=1)
        bench.reference(warm["lora"], 1, 1, -1)
        print(f"  warm-up done at {time.monotonic() - started:.0f} s", flush=True)

        # 0. What one GET costs the idle host: our status route against the host's own GET /queue.
        job_id = next(j["id"] for j in host.get_json("/loralab/jobs") if j["name"] == warm["name"])
        idle = {label: route_cpu_ms(host, path) for label, path in
                (("ours", f"/loralab/jobs/{job_id}"), ("native", "/queue"))}
        print(f"  idle host CPU per GET: ours {idle['ours']:.2f} ms, host's /queue {idle['native']:.2f} ms", flush=True)

        # 1. Polling: rounds of (N1, N2) runs without polling, polling ours, polling the host's /queue;
        # interleaved, the order rotated per round.
        modes = ("without", "ours", "native")
        per_step: dict[str, list[float]] = {mode: [] for mode in modes}
        cpu_step: dict[str, list[float]] = {mode: [] for mode in modes}
        rates: list[float] = []
        for pair in range(args.pairs):
            order = modes[pair % 3:] + modes[:pair % 3]
            runs: dict[str, dict[int, dict]] = {mode: {} for mode in order}
            for steps in (n1, n2):
                for mode in order:
                    r = bench.train(steps, poll_rate=0.0 if mode == "without" else args.rate,
                                    poll_native=mode == "native")
                    runs[mode][steps] = r
                    if mode == "ours":
                        rates.append(r["poll_rate"])
                    print(f"  round {pair + 1} polling {mode:7s}, {steps:3d} steps: {r['seconds']:.2f} s, CPU "
                          f"{r['cpu']:.1f} s" + (f", {r['poll_rate']:.1f} GET/s" if "poll_rate" in r else ""),
                          flush=True)
            for mode in order:
                a, b = runs[mode][n1], runs[mode][n2]
                per_step[mode].append((b["seconds"] - a["seconds"]) / (n2 - n1))
                cpu_step[mode].append((b["cpu"] - a["cpu"]) / (n2 - n1))
        slowdowns = {m: [w / wo - 1 for w, wo in zip(per_step[m], per_step["without"], strict=True)] for m in modes[1:]}
        cpu_slow = {m: [w / wo - 1 for w, wo in zip(cpu_step[m], cpu_step["without"], strict=True)] for m in modes[1:]}
        ours_vs_native = [o / n for o, n in zip(per_step["ours"], per_step["native"], strict=True)]

        # 2. Samples: without, with samples, KSampler reference; interleaved, order rotated.
        extra: list[float] = []
        ref: list[float] = []
        extra_cpu: list[float] = []
        ref_cpu: list[float] = []
        for rep in range(args.reps):
            plain = sampled = None
            for what in (("plain", "sampled") if rep % 2 == 0 else ("sampled", "plain")):
                if what == "plain":
                    plain = bench.train(n2)
                    print(f"  rep {rep + 1} no samples, {n2} steps: {plain['seconds']:.2f} s", flush=True)
                else:
                    sampled = bench.train(n2, sample_every=args.sample_every, sample_steps=args.sample_steps)
                    print(f"  rep {rep + 1} samples every {args.sample_every}, {n2} steps: {sampled['seconds']:.2f} s, "
                          f"{sampled['images']} images", flush=True)
            images = sampled["images"]  # the reference renders them with the LoRA that run trained
            rr = bench.reference(sampled["lora"], images, args.sample_steps, rep)
            print(f"  rep {rep + 1} KSampler reference, {images} images: {rr['seconds']:.2f} s", flush=True)
            extra.append((sampled["seconds"] - plain["seconds"]) / sampled["images"])
            extra_cpu.append((sampled["cpu"] - plain["cpu"]) / sampled["images"])
            ref.append(rr["seconds"] / images)
            ref_cpu.append(rr["cpu"] / images)

        s_wo, s_w, s_n = med(per_step["without"]), med(per_step["ours"]), med(per_step["native"])
        slow = med(slowdowns["ours"])
        ratio = med(extra) / med(ref) if med(ref) > 0 else float("nan")
        cratio = med(extra_cpu) / med(ref_cpu) if med(ref_cpu) > 0 else float("nan")
        print()
        print("| measure | value (median) | target | result |")
        print("|---|---|---|---|")
        print(f"| idle host CPU per GET: ours / host's /queue | {idle['ours']:.2f} ms / {idle['native']:.2f} ms | | |")
        print(f"| s/step without polling | {s_wo:.3f} (CPU {med(cpu_step['without']):.3f}) | | |")
        print(f"| s/step polling ours at {med(rates):.1f} GET/s | {s_w:.3f} (CPU {med(cpu_step['ours']):.3f}) | | |")
        print(f"| s/step polling the host's /queue at the same rate | "
              f"{s_n:.3f} (CPU {med(cpu_step['native']):.3f}) | | |")
        print(f"| training slowdown, polling ours (median of {args.pairs}; "
              f"{', '.join(f'{x:+.1%}' for x in slowdowns['ours'])}) | "
              f"{slow:+.1%} (CPU {med(cpu_slow['ours']):+.1%}) | "
              f"< {TARGET_POLL:.0%} | {'met' if slow < TARGET_POLL else 'MISSED'} |")
        print(f"| training slowdown, polling the host's /queue ({', '.join(f'{x:+.1%}' for x in slowdowns['native'])}) "
              f"| {med(slowdowns['native']):+.1%} (CPU {med(cpu_slow['native']):+.1%}) | | |")
        print(f"| s/step polling ours / polling the host's /queue | {med(ours_vs_native):.2f}x | | |")
        print(f"| extra s per training sample image ({sampled['images']} images/run) | {med(extra):.3f} "
              f"(CPU {med(extra_cpu):.3f}) | | |")
        print(f"| s per image, KSampler graph with LoraLoader | {med(ref):.3f} (CPU {med(ref_cpu):.3f}) | | |")
        print(f"| training sample / KSampler, per image ({args.reps} reps) | {ratio:.2f}x (CPU {cratio:.2f}x) | "
              f"<= {TARGET_SAMPLE:.1f}x | {'met' if ratio <= TARGET_SAMPLE else 'MISSED'} |")
        print(f"\ncommand: {command_line()}")
        print("s/step = (t(N2) - t(N1)) / (N2 - N1), t = host execution time (execution_start -> execution_success); "
              "CPU = the same difference of the host process's user+system seconds (includes serving the polls). "
              "Sample cost = (t(with samples) - t(without)) / images; KSampler = prompt execution time / images.")
        print_end(started, str(os.cpu_count()))
        return 0


if __name__ == "__main__":
    sys.exit(main())
