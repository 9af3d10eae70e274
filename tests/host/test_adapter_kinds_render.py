"""LoHa, LoKr and DoRA trained in a real ComfyUI: each file loads in Load LoRA and the native LoraLoader with no
key left, changes the image, and both loaders render it the same."""
from __future__ import annotations

import numpy as np
import pytest

from scripts.graphs import Graph, checkpoint, out, render, saved_images
from scripts.training_graphs import train_graph
from trainer.safetensors_io import read_safetensors

# What each kind's file holds (LyCORIS key names; DoRA: kohya's LoRA keys plus dora_scale).
KINDS = {"loha": (".hada_w1_a", "lycoris.kohya"),
         "lokr": (".lokr_w1", "lycoris.kohya"),
         "dora": (".dora_scale", "lycoris.kohya")}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_trained_kind_loads_everywhere_and_changes_the_image(host, rings, kind):
    name = f"kind_{kind}"
    g, train = train_graph(name, steps=3, lr=5e-3, options={"adapter": kind, "targets": "attention_ff_conv"})
    entry = host.run(g.nodes, timeout=900)
    assert entry["outputs"][train]["lora_name"] == [f"{name}.safetensors"]
    tensors, metadata = read_safetensors(host.loras_dir / f"{name}.safetensors")
    key_part, module = KINDS[kind]
    assert any(key_part in k for k in tensors), sorted(tensors)[:8]
    assert metadata["ss_network_module"] == module and metadata["loralab.lora.adapter"] == f'"{kind}"'

    mark = len(host.log_text())
    g = Graph()
    ckpt = checkpoint(g)
    base = render(g, out(ckpt, 0), out(ckpt, 1), out(ckpt, 2), f"{kind}_base")
    saves = {}
    for label, class_type in (("native", "LoraLoader"), ("ours", "LoraLabLoadLora")):
        lora = g.add(class_type, model=out(ckpt, 0), clip=out(ckpt, 1), lora_name=f"{name}.safetensors",
                     strength_model=8.0, strength_clip=1.0)
        saves[label] = render(g, out(lora, 0), out(lora, 1), out(ckpt, 2), f"{kind}_{label}")
    loaded = host.run(g.nodes)
    log = host.log_text()[mark:]
    assert "lora key not loaded" not in log and "ERROR" not in log, log
    images = {label: saved_images(host, loaded, node)[0] for label, node in saves.items()}
    assert not np.array_equal(images["native"], saved_images(host, loaded, base)[0]), f"{kind} changed nothing"
    np.testing.assert_array_equal(images["ours"], images["native"])
