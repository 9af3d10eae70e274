"""Preview Samples and training samples in a real ComfyUI: the same images a KSampler renders, as a grid."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from scripts import lora_fixtures as fx
from scripts.graphs import Graph, checkpoint, out, render, saved_images
from scripts.tiny_checkpoint import TINY_TARGETS
from scripts.training_graphs import train_graph
from trainer.sample_grid import LABEL_HEIGHT, ROW_LABEL_WIDTH

SIZE, STEPS, SEED, CFG = 64, 3, 7, 5.0
PROMPTS = ["a photo of a red cube", "a blue ball"]
STRENGTHS = [0.0, 1.0]


def tile(grid: np.ndarray, row: int, col: int) -> np.ndarray:
    top, left = LABEL_HEIGHT + row * SIZE, ROW_LABEL_WIDTH + col * SIZE
    return grid[top:top + SIZE, left:left + SIZE]


def test_strength_grid_equals_ksampler_images(host):
    fx.write_format("kohya", host.loras_dir / "preview.safetensors", TINY_TARGETS, rank=4, alpha=2.0,
                    gen=fx.default_generator(21))
    g = Graph()
    ckpt = checkpoint(g)
    grid_node = g.add("LoraLabPreviewSamples", model=out(ckpt, 0), clip=out(ckpt, 1), vae=out(ckpt, 2),
                      prompts="\n".join(PROMPTS), negative="blurry", compare="lora strengths",
                      lora_name="preview.safetensors", strengths=", ".join(map(str, STRENGTHS)), run_name="",
                      seed=SEED, steps=STEPS, cfg=CFG, sampler_name="euler", scheduler="normal", width=SIZE,
                      height=SIZE)
    references = {}
    for col, strength in enumerate(STRENGTHS):
        lora = g.add("LoraLoader", model=out(ckpt, 0), clip=out(ckpt, 1), lora_name="preview.safetensors",
                     strength_model=strength, strength_clip=strength)
        for row, prompt in enumerate(PROMPTS):
            references[(row, col)] = render(g, out(lora, 0), out(lora, 1), out(ckpt, 2), f"ref{row}{col}",
                                            seed=SEED, prompt=prompt, size=SIZE, steps=STEPS)
    entry = host.run(g.nodes)
    grid = saved_images(host, entry, grid_node)[0]
    assert grid.shape == (LABEL_HEIGHT + SIZE * len(PROMPTS), ROW_LABEL_WIDTH + SIZE * len(STRENGTHS), 3)
    for (row, col), node in references.items():
        np.testing.assert_array_equal(tile(grid, row, col), saved_images(host, entry, node)[0])
    assert not np.array_equal(tile(grid, 0, 0), tile(grid, 0, 1)), "the LoRA did not change the sample"


def test_training_samples_and_checkpoint_grid(host, rings):
    options = {"sample_every": 3, "checkpoint_every": 3}
    entry = host.run(train_graph("sampled", steps=6, options=options)[0].nodes, timeout=900)
    assert entry["status"]["status_str"] == "success"
    job = next(j for j in host.get_json("/loralab/jobs") if j["name"] == "sampled")
    status = host.get_json(f"/loralab/jobs/{job['id']}")
    assert [s["step"] for s in status["samples"]] == [0, 3, 6]
    assert [c["step"] for c in status["checkpoints"]] == [3]
    code, body, headers = host.request("GET", status["samples"][-1]["url"])
    assert code == 200 and headers["Content-Type"] == "image/png"
    strip = np.asarray(Image.open(io.BytesIO(body)))
    assert strip.shape[0] == LABEL_HEIGHT + 64
    # The checkpoints of the run, side by side.
    g = Graph()
    ckpt = checkpoint(g)
    grid_node = g.add("LoraLabPreviewSamples", model=out(ckpt, 0), clip=out(ckpt, 1), vae=out(ckpt, 2),
                      prompts="lrlring, a red ring", negative="", compare="checkpoints of a run",
                      lora_name="(none)", strengths="1", run_name="sampled", seed=1, steps=2, cfg=5.0,
                      sampler_name="euler", scheduler="normal", width=64, height=64)
    entry = host.run(g.nodes)
    grid = saved_images(host, entry, grid_node)[0]
    assert grid.shape[1] == ROW_LABEL_WIDTH + 64 * 2  # step 3 and final
