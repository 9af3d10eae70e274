"""Benchmark: applying LoRAs with LoRA Lab's Stack LoRAs node versus a chain of native LoraLoader nodes.

One real ComfyUI host (127.0.0.1, --cpu) runs everything. Three kohya LoRA files (rank 16, every
attention/feed-forward layer of the small SD1.5-architecture test model plus the text encoder's
attention and MLP layers) are written to its loras folder. Each timed prompt is

    checkpoint -> LoRA nodes -> CLIPTextEncode x2 + KSampler (1 step, 64x64) -> SaveLatent

so the patched MODEL and CLIP are both loaded ("until the patched model is loaded"). The time of a
prompt is the host's own: `execution_success.timestamp - execution_start.timestamp` from its history
entry. A baseline prompt without LoRA nodes (same consumer) is timed the same way; net = raw minus the
baseline of the same repetition. A second table gives the host process's CPU time (user + system, from
/proc) for the same prompts; with the host on one thread (the default, --threads 1) it barely moves when
other processes share the machine, where the execution time does.

Each repetition changes the LoRA strengths (1.0 - 0.001*i, same for ours and native), the seed and the
prompt text, so the LoRA nodes, the text encoders and the sampler execute again. Cases are interleaved
and their order rotated per repetition. Every prompt holds the LoRA nodes of all cases under fixed ids
(only one case wired to the consumer), so the host keeps every node instance between prompts and the
native LoraLoader keeps its per-instance file cache, as when a user re-queues one workflow.

Unchanged re-run: each cold prompt is queued a second time, unchanged; nothing re-executes. Its time is
compared with native's cold apply (net) of the same stack size.

Usage (from the repository root):  .venv/bin/python benchmarks/bench_apply.py [--reps 15] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import sys
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
    print_end,
    print_start,
)
from scripts import lora_fixtures as fx  # noqa: E402
from scripts.comfy_host import ComfyHost  # noqa: E402
from scripts.graphs import Graph, checkpoint, out  # noqa: E402
from scripts.lora_fixtures import Target  # noqa: E402
from scripts.tiny_checkpoint import TINY_TARGETS  # noqa: E402

LORA_NAMES = ("bench_a.safetensors", "bench_b.safetensors", "bench_c.safetensors")
CASES = ("base", "ours1", "native1", "ours3", "native3")
TARGET_APPLY, TARGET_RERUN = 1.0, 0.05

# Transformer blocks of the small model: (diffusers block, LDM block, channels).
_BLOCKS = (("down_blocks.0.attentions.0", "input_blocks.1.1", 320),
           ("down_blocks.1.attentions.0", "input_blocks.3.1", 640),
           ("mid_block.attentions.0", "middle_block.1", 640),
           ("up_blocks.0.attentions.0", "output_blocks.0.1", 640),
           ("up_blocks.0.attentions.1", "output_blocks.1.1", 640),
           ("up_blocks.1.attentions.0", "output_blocks.2.1", 320),
           ("up_blocks.1.attentions.1", "output_blocks.3.1", 320))


def bench_targets() -> list[Target]:
    """TINY_TARGETS plus every attention/ff linear of each transformer block and every CLIP layer's linears."""
    targets = {t.name: t for t in TINY_TARGETS}
    for diffusers, ldm, c in _BLOCKS:
        layers = {"attn1.to_q": (c, c), "attn1.to_k": (c, c), "attn1.to_v": (c, c), "attn1.to_out.0": (c, c),
                  "attn2.to_q": (c, c), "attn2.to_k": (c, 768), "attn2.to_v": (c, 768), "attn2.to_out.0": (c, c),
                  "ff.net.0.proj": (8 * c, c), "ff.net.2": (c, 4 * c)}
        for leaf, (o, i) in layers.items():
            name = f"{diffusers}.transformer_blocks.0.{leaf}"
            targets.setdefault(name, Target(name, "linear", o, i, f"{ldm}.transformer_blocks.0.{leaf}"))
    for n in range(12):
        for leaf, (o, i) in {"self_attn.q_proj": (768, 768), "self_attn.k_proj": (768, 768),
                             "self_attn.v_proj": (768, 768), "self_attn.out_proj": (768, 768),
                             "mlp.fc1": (3072, 768), "mlp.fc2": (768, 3072)}.items():
            name = f"text_model.encoder.layers.{n}.{leaf}"
            targets.setdefault(name, Target(name, "linear", o, i, component="te"))
    return list(targets.values())


def make_prompt(case: str, rep: int, strength: float) -> dict:
    """One prompt holding every case's LoRA nodes (fixed ids); only `case` feeds the consumer."""
    g = Graph()
    ckpt = checkpoint(g)
    model, clip = out(ckpt, 0), out(ckpt, 1)

    def s(c: str) -> float:
        return strength if c == case else 1.0

    def rows(names, st):
        return json.dumps([{"lora": n, "on": True, "strength_model": st, "strength_clip": st} for n in names])

    sources = {"base": (model, clip)}
    ours1 = g.add("LoraLabStackLoras", loras=rows(LORA_NAMES[:1], s("ours1")), model=model, clip=clip)
    sources["ours1"] = (out(ours1, 0), out(ours1, 1))
    ours3 = g.add("LoraLabStackLoras", loras=rows(LORA_NAMES, s("ours3")), model=model, clip=clip)
    sources["ours3"] = (out(ours3, 0), out(ours3, 1))
    for label, names in (("native1", LORA_NAMES[:1]), ("native3", LORA_NAMES)):
        m, c = model, clip
        for name in names:
            node = g.add("LoraLoader", model=m, clip=c, lora_name=name,
                         strength_model=s(label), strength_clip=s(label))
            m, c = out(node, 0), out(node, 1)
        sources[label] = (m, c)

    m, c = sources[case]
    tag = f"{case} {rep}"
    pos = g.add("CLIPTextEncode", text=f"a photo of a red cube {tag}", clip=c)
    neg = g.add("CLIPTextEncode", text=f"blurry {tag}", clip=c)
    latent = g.add("EmptyLatentImage", width=64, height=64, batch_size=1)
    sampled = g.add("KSampler", model=m, seed=1000 * (rep + 1) + CASES.index(case), steps=1, cfg=5.0,
                    sampler_name="euler", scheduler="normal", positive=out(pos), negative=out(neg),
                    latent_image=out(latent), denoise=1.0)
    g.add("SaveLatent", samples=out(sampled), filename_prefix=f"bench/{case}")
    return g.nodes


def run_timed(host: ComfyHost, prompt: dict) -> tuple[float, float, dict]:
    """(host execution seconds, host CPU seconds, history entry) of one prompt."""
    cpu = cpu_seconds(host.process.pid)
    entry = host.run(prompt)
    return exec_seconds(entry), cpu_seconds(host.process.pid) - cpu, entry


def wired_nodes(prompt: dict) -> set[str]:
    """The ids of the output node and everything it depends on (what the host executes)."""
    todo = [i for i, n in prompt.items() if n["class_type"] == "SaveLatent"]
    seen: set[str] = set()
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo += [v[0] for v in prompt[node]["inputs"].values() if isinstance(v, list)]
    return seen


def all_cached(entry: dict, prompt: dict) -> bool:
    cached = {n for event, data in entry["status"]["messages"] if event == "execution_cached"
              for n in data.get("nodes", [])}
    return wired_nodes(prompt) <= cached


def print_table(cold: dict[str, list[float]], again: dict[str, list[float]]) -> None:
    """The markdown table: stack of 1 and 3 (net ratio), and the unchanged re-runs."""
    net = {c: med([r - b for r, b in zip(cold[c], cold["base"], strict=True)]) for c in CASES if c != "base"}
    rows = []
    for n in ("1", "3"):
        o, v = f"ours{n}", f"native{n}"
        ratio = net[o] / net[v] if net[v] > 0 else float("nan")
        rows.append((f"stack of {n}", f"{med(cold[o]):.3f} (net {net[o]:.3f})",
                     f"{med(cold[v]):.3f} (net {net[v]:.3f})",
                     f"{ratio:.2f}x", f"<= {TARGET_APPLY:.2f}x: {'met' if ratio <= TARGET_APPLY else 'MISSED'}"))
    for n in ("1", "3"):
        o, v = f"ours{n}", f"native{n}"
        ratio = med(again[o]) / net[v] if net[v] > 0 else float("nan")
        rows.append((f"unchanged re-run, stack of {n}", f"{med(again[o]):.3f}",
                     f"{med(again[v]):.3f} (cold net {net[v]:.3f})", f"{ratio:.3f}x",
                     f"<= {TARGET_RERUN:.2f}x: {'met' if ratio <= TARGET_RERUN else 'MISSED'}"))
    print("| case | ours median s | native median s | ratio (net) | target |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=15, help="timed repetitions per case (default 15, at least 5)")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads of the host (OMP_NUM_THREADS); default 1, which keeps the CPU-time table "
                             "meaningful on a loaded machine; 0 leaves torch's default")
    parser.add_argument("--keep", action="store_true", help="keep the host's base directory")
    args = parser.parse_args()

    started = print_start()
    limit_host_threads(args.threads)
    with bench_host("loralab-bench-", args.keep) as host:
        host.start()
        print(f"host: {host_versions(host)}, --cpu, threads {args.threads or 'default'}, 127.0.0.1:{host.port}")

        targets = bench_targets()
        for seed, name in enumerate(LORA_NAMES):
            fx.write_format("kohya", host.loras_dir / name, targets, rank=args.rank, alpha=args.rank / 2,
                            gen=fx.default_generator(100 + seed))
        print(f"LoRAs: {len(LORA_NAMES)} kohya files, rank {args.rank}, {len(targets)} layers each "
              f"({sum(t.component == 'te' for t in targets)} text-encoder), "
              f"{(host.loras_dir / LORA_NAMES[0]).stat().st_size / 2**20:.1f} MiB each; reps {args.reps}")

        mark = len(host.log_text())
        for case in CASES:  # warm-up: checkpoint load, imports, first sampling; untimed
            host.run(make_prompt(case, -1, 0.5))
        if "lora key not loaded" in host.log_text()[mark:]:
            print("WARNING: the native LoraLoader dropped keys of the benchmark LoRAs (see host.log)")

        # metric -> case -> samples; "exec" = the host's execution time, "cpu" = the host's CPU time
        cold = {m: {c: [] for c in CASES} for m in ("exec", "cpu")}
        again = {m: {c: [] for c in CASES if c != "base"} for m in ("exec", "cpu")}
        for rep in range(args.reps):
            strength = 1.0 - 0.001 * (rep + 1)
            order = CASES[rep % len(CASES):] + CASES[:rep % len(CASES)]
            for case in order:
                prompt = make_prompt(case, rep, strength)
                t, cpu, _ = run_timed(host, prompt)
                cold["exec"][case].append(t)
                cold["cpu"][case].append(cpu)
                if case != "base":
                    t, cpu, entry = run_timed(host, prompt)
                    if not all_cached(entry, prompt):
                        print(f"WARNING: the unchanged re-run of {case} re-executed nodes")
                    again["exec"][case].append(t)
                    again["cpu"][case].append(cpu)

        print(f"\nbaseline (no LoRA nodes, same consumer): median {med(cold['exec']['base']):.3f} s execution, "
              f"{med(cold['cpu']['base']):.3f} s host CPU")
        for metric, title in (("exec", "host execution time (execution_start -> execution_success), seconds"),
                              ("cpu", "host CPU time (user+system, all threads; robust to other load), seconds")):
            print(f"\n{title}\n")
            print_table(cold[metric], again[metric])
        print("\nraw = the prompt's time; net = raw minus the baseline of the same repetition (median of the "
              "differences). Re-run ratio = our unchanged re-run / native's cold apply (net), same stack size.")
        print_end(started, "~1")
        return 0


if __name__ == "__main__":
    sys.exit(main())
