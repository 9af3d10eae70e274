"""EMA and the timestep histogram in a real ComfyUI run: the EMA file loads in the host's own LoraLoader."""
from __future__ import annotations

import numpy as np
import torch

from scripts.graphs import Graph, checkpoint, out, render, saved_images
from scripts.training_graphs import train_graph
from trainer.safetensors_io import read_safetensors


def test_a_run_with_ema_writes_the_ema_file_every_loader_reads(host, rings):
    g, train = train_graph("with_ema", steps=4, lr=5e-3,
                           options={"ema": True, "ema_decay": 0.5, "ema_every": 1, "ema_for_final": True,
                                    "checkpoint_every": 2})
    entry = host.run(g.nodes, timeout=900)
    assert entry["outputs"][train]["lora_name"] == ["with_ema-ema.safetensors"]  # ema_for_final: the node's output
    assert sorted(p.name for p in host.loras_dir.glob("with_ema*")) == [
        "with_ema-ema.safetensors", "with_ema-step2-ema.safetensors", "with_ema-step2.safetensors",
        "with_ema.loralab-resume", "with_ema.safetensors"]
    raw, raw_md = read_safetensors(host.loras_dir / "with_ema.safetensors")
    ema, ema_md = read_safetensors(host.loras_dir / "with_ema-ema.safetensors")
    assert sorted(ema) == sorted(raw)  # the same kohya keys
    assert (raw_md["loralab.weights"], ema_md["loralab.weights"]) == ("trained", "ema")
    assert ema_md["loralab.ema.enabled"] == "true" and ema_md["ss_timestep_sampling"] == "uniform"
    ups = [k for k in raw if k.endswith("lora_up.weight")]
    assert any(not torch.equal(raw[k], ema[k]) for k in ups) and any(ema[k].abs().max() > 0 for k in ups)

    mark = len(host.log_text())
    g = Graph()
    ckpt = checkpoint(g)
    native = g.add("LoraLoader", model=out(ckpt, 0), clip=out(ckpt, 1), lora_name="with_ema-ema.safetensors",
                   strength_model=8.0, strength_clip=1.0)
    with_lora = render(g, out(native, 0), out(native, 1), out(ckpt, 2), "ema_with")
    base = render(g, out(ckpt, 0), out(ckpt, 1), out(ckpt, 2), "ema_without")
    loaded = host.run(g.nodes)
    assert "lora key not loaded" not in host.log_text()[mark:]
    assert not np.array_equal(saved_images(host, loaded, with_lora)[0], saved_images(host, loaded, base)[0])

    job = next(j for j in host.get_json("/loralab/jobs") if j["name"] == "with_ema")
    histogram = host.get_json(f"/loralab/jobs/{job['id']}")["timestep_histogram"]
    assert histogram["range"] == [0, 1000] and sum(histogram["counts"]) == 4  # 4 steps of batch 1
