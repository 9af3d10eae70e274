"""A forced low-memory run in a real ComfyUI: memory_mode auto offloads part of the frozen weights through the host's
own partial loading, says so, and trains the same LoRA as the full-load run of the same seed.

The budget is forced with device_memory_limit_gb (this machine has no GPU: the offloaded layers take the host's
lowvram path, each weight cast as its layer runs, but stay in the same memory)."""
from __future__ import annotations

import re

import numpy as np
import torch

from scripts.comfy_host import error_message
from scripts.graphs import Graph, checkpoint, out, render, saved_images
from scripts.training_graphs import train_graph
from trainer.safetensors_io import read_safetensors

RUN = {"steps": 8, "validation_share": 0.25}  # both runs: the full-load reference and the offloaded one
TINY_LIMIT_GB = 0.01  # nothing fits: the refusal says what the run needs as set


def _needs_gib(host, name: str, options: dict) -> float:
    """What a run with these options needs, from its as_set refusal under a budget nothing fits in."""
    g, _ = train_graph(name, **RUN, options={**options, "memory_mode": "as_set",
                                                   "device_memory_limit_gb": TINY_LIMIT_GB})
    message = error_message(host.wait(host.queue(g.nodes), 300))
    found = re.search(r"This run needs about ([0-9.]+) GiB but 0\.0 GiB are available", message)
    assert found, message
    return float(found.group(1))


def _base_render(host, g: Graph, name: str) -> str:
    """The checkpoint's own MODEL rendered through the host's LoraLoader at strength 0 (it returns the same MODEL
    object, so the sampler runs again on it rather than answering from the host's cache)."""
    ckpt = checkpoint(g)
    same = g.add("LoraLoader", model=out(ckpt, 0), clip=out(ckpt, 1), lora_name="full_load.safetensors",
                 strength_model=0.0, strength_clip=0.0)
    return render(g, out(same, 0), out(same, 1), out(ckpt, 2), name)


def test_a_run_over_its_device_budget_offloads_weights_and_trains_the_same_lora(host, rings):
    # The reference: the whole model on the device, with the gradient checkpointing an offloaded run trains with
    # (without it the gradients differ by float rounding, which Adam's first steps amplify to ~1e-3).
    host.run(train_graph("full_load", **RUN, options={"gradient_checkpointing": True})[0].nodes, timeout=900)
    reference = host.loras_dir / "full_load.safetensors"
    g = Graph()
    before = _base_render(host, g, "offload_before")
    image_before = saved_images(host, host.run(g.nodes), before)[0]

    checkpointed = _needs_gib(host, "offload_probe_checkpointed", {"gradient_checkpointing": True})
    all_offloaded = _needs_gib(host, "offload_probe_all", {"offload_fraction": 1.0})
    assert all_offloaded + 0.2 < checkpointed, (all_offloaded, checkpointed)
    limit = round((all_offloaded + checkpointed) / 2, 2)  # fits only with part of the weights offloaded

    mark = len(host.log_text())
    g, train = train_graph("offloaded", **RUN, options={"device_memory_limit_gb": limit})  # auto: the default
    ui = host.run(g.nodes, timeout=900)["outputs"][train]
    log = host.log_text()[mark:]
    job = next(j for j in host.get_json("/loralab/jobs") if j["name"] == "offloaded")
    job = host.get_json(f"/loralab/jobs/{job['id']}")
    plan = job["memory_plan"]
    share = re.search(r"gradient checkpointing and (\d+)% of the weights offloaded to CPU memory, streamed per layer "
                      r"\(auto\)", plan)
    assert share and 0 < int(share.group(1)) < 100, plan
    assert f"LoRA Lab memory: {plan}" in log
    on_device = job["weights_on_device"]
    # The host's own partial unload left that share off the device (its lowvram mode), and said so.
    offloaded = 1 - on_device["bytes"] / on_device["total_bytes"]
    assert abs(offloaded - int(share.group(1)) / 100) < 0.1, (offloaded, plan)
    assert "Unloaded partially" in log and "MiB offloaded and streamed per layer" in log
    assert len(ui["loss_history"]) == RUN["steps"]

    # The same LoRA as the full-load run with the same seed, to fp32 tolerance (offloaded layers compute with the
    # same weights, cast as they run).
    ours, meta = read_safetensors(host.loras_dir / "offloaded.safetensors")
    full, _ = read_safetensors(reference)
    assert ours.keys() == full.keys()
    for key, tensor in full.items():
        torch.testing.assert_close(ours[key], tensor, rtol=1e-4, atol=1e-6, msg=key)
    assert meta["ss_gradient_checkpointing"] == "True"

    # Afterwards the host's model renders exactly as before the run (the next sampler loads it as it would
    # after a low-memory inference run).
    g = Graph()
    after = _base_render(host, g, "offload_after")
    assert np.array_equal(saved_images(host, host.run(g.nodes), after)[0], image_before)
