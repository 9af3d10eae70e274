"""The main job, end to end on the built-in default: train a LoRA in a real ComfyUI and render with it.

Builds the small random-weight SD1.5-architecture model and a small captioned dataset locally (nothing is
downloaded), starts ComfyUI on 127.0.0.1 with LoRA Lab, queues the training graph through the host's HTTP
API, renders the same prompt with and without the trained LoRA, and writes a comparison grid and a loss
plot. Prints where everything is. `--keep-open` leaves the editor running to explore.
"""
from __future__ import annotations

import argparse
import io
import logging
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from PIL import Image, ImageDraw  # noqa: E402

from scripts.comfy_host import ComfyHost, ensure_tiny_checkpoint, prepare_base_dir  # noqa: E402
from scripts.graphs import Graph, checkpoint, out, render  # noqa: E402
from scripts.job_progress import JobProgress  # noqa: E402
from scripts.make_demo_dataset import make_demo_dataset  # noqa: E402

log = logging.getLogger("demo")
TRIGGER = "lrlring"


def demo_graph(name: str, steps: int) -> tuple[Graph, dict[str, str]]:
    g = Graph()
    ckpt = checkpoint(g)
    data = g.add("LoraLabDataset", folder="demo_rings", trigger_word=TRIGGER, resolution=64, flip=True,
                 validation_share=0.2, seed=0)
    options = g.add("LoraLabTrainOptions", targets="attention_ff", dropout=0.0, schedule="cosine", warmup_steps=2,
                    grad_accumulation=1, max_grad_norm=1.0, min_snr_gamma=5.0, noise_offset=0.0, optimizer="adamw",
                    weight_decay=0.01, mixed_precision="bf16", gradient_checkpointing=False,
                    checkpoint_every=max(1, steps // 3), resume=False, sample_every=max(1, steps // 3),
                    sample_prompts="", sample_steps=4, sample_cfg=5.0, sample_sampler="euler",
                    sample_scheduler="normal")
    train = g.add("LoraLabTrainLora", model=out(ckpt, 0), clip=out(ckpt, 1), vae=out(ckpt, 2), dataset=out(data),
                  name=name, steps=steps, learning_rate=2e-3, rank=4, alpha=4.0, batch_size=1, seed=1,
                  options=out(options))
    prompt = f"{TRIGGER}, a red ring on a blue wall"
    saves = {"without LoRA": render(g, out(ckpt, 0), out(ckpt, 1), out(ckpt, 2), f"{name}_base", prompt=prompt),
             "with the trained LoRA": render(g, out(train, 0), out(train, 1), out(ckpt, 2), f"{name}_lora",
                                             prompt=prompt)}
    return g, {"train": train, **saves}


def grid(images: dict[str, Image.Image], scale: int = 3) -> Image.Image:
    """Side-by-side images with their labels above them."""
    tiles = [img.resize((img.width * scale, img.height * scale), Image.NEAREST) for img in images.values()]
    w, h = tiles[0].size
    sheet = Image.new("RGB", (w * len(tiles), h + 24), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (label, tile) in enumerate(zip(images, tiles, strict=True)):
        sheet.paste(tile, (i * w, 24))
        draw.text((i * w + 6, 6), label, fill="black")
    return sheet


def loss_plot(losses: list[float], width: int = 480, height: int = 240) -> Image.Image:
    """The per-step loss (grey) and its moving average (blue)."""
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    low, high = min(losses), max(losses)
    span = (high - low) or 1.0

    def xy(i: int, v: float) -> tuple[float, float]:
        return 30 + i * (width - 40) / max(1, len(losses) - 1), 10 + (high - v) / span * (height - 40)
    smoothed, s = [], losses[0]
    for v in losses:
        s = 0.8 * s + 0.2 * v
        smoothed.append(s)
    draw.line([xy(i, v) for i, v in enumerate(losses)], fill=(170, 170, 170), width=1)
    draw.line([xy(i, v) for i, v in enumerate(smoothed)], fill=(30, 80, 200), width=2)
    draw.text((30, height - 22), f"training loss, {len(losses)} steps: {losses[0]:.3f} -> {losses[-1]:.3f}",
              fill="black")
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--keep-open", action="store_true", help="leave ComfyUI running on 127.0.0.1 to explore")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.monotonic()
    base = prepare_base_dir(REPO / ".host" / "demo", ensure_tiny_checkpoint())
    make_demo_dataset(base / "input" / "demo_rings", count=6, size=64, trigger=TRIGGER)
    host = ComfyHost(base, **({"port": args.port} if args.port else {})).start()
    try:
        name = f"demo_ring_{time.strftime('%Y%m%d_%H%M%S')}"
        graph, nodes = demo_graph(name, args.steps)
        log.info("training %s for %d steps in ComfyUI at %s, then rendering with and without it ...",
                 name, args.steps, host.url)
        with JobProgress(host, name):
            entry = host.run(graph.nodes, timeout=1800)
        ui = entry["outputs"][nodes["train"]]
        results = base / "output" / "loralab-demo"
        results.mkdir(parents=True, exist_ok=True)
        images = {label: Image.open(io.BytesIO(host.view(entry["outputs"][node]["images"][0]))).convert("RGB")
                  for label, node in nodes.items() if label != "train"}
        grid_path, plot_path = results / f"{name}_grid.png", results / f"{name}_loss.png"
        grid(images).save(grid_path)
        loss_plot(ui["loss_history"]).save(plot_path)
        log.info("\n%s", ui["text"][0])
        log.info("LoRA:         %s", host.loras_dir / ui["lora_name"][0])
        log.info("sample grid:  %s", grid_path)
        log.info("loss plot:    %s", plot_path)
        log.info("host log:     %s", host.log_path)
        log.info("finished in %.0f s", time.monotonic() - started)
        if args.keep_open:
            log.info("ComfyUI with LoRA Lab is running at %s (Ctrl-C to stop)", host.url)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        host.stop()


if __name__ == "__main__":
    main()
