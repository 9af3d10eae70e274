"""Train LoRA on an fp8 MODEL from the host's Load Diffusion Model (UNETLoader, weight_dtype fp8_e4m3fn).

Bug (seen on ComfyUI 0.33): this graph failed with `"silu_cpu" not implemented for 'Float8_e4m3fn'`; the
denoiser cast its inputs to the weights' storage dtype instead of the host's compute dtype. The UNet-only file
is the tiny checkpoint's UNet; CLIP and VAE come from the checkpoint. That the stored weights stay fp8 through
the run is checked on the host's own classes, without a server, in tests/host_unit/test_low_precision_bases.py.
"""
from __future__ import annotations

import numpy as np

from scripts.comfy_host import add_checkpoint_part
from scripts.graphs import Graph, checkpoint, out, render, saved_images
from scripts.training_graphs import train_graph
from trainer.safetensors_io import read_safetensors

STEPS = 10


def _fp8_unet(host, g: Graph) -> str:
    name = add_checkpoint_part(host.base_dir, "unet")
    return g.add("UNETLoader", unet_name=name, weight_dtype="fp8_e4m3fn")


def _train(host, name: str, fp8: bool, steps: int = STEPS) -> dict:
    g, train = train_graph(name, steps=steps, lr=2e-3, options={})
    if fp8:
        g.nodes[train]["inputs"]["model"] = out(_fp8_unet(host, g))
    return host.run(g.nodes, timeout=900)["outputs"][train]


def test_an_fp8_model_from_load_diffusion_model_trains_and_its_file_loads_natively(host, rings):
    # The fp8 MODEL renders once before training; the host keeps that MODEL object for the later prompts.
    g = Graph()
    ckpt, unet = checkpoint(g), _fp8_unet(host, g)
    before = render(g, out(unet), out(ckpt, 1), out(ckpt, 2), "fp8_before")
    image_before = saved_images(host, host.run(g.nodes), before)[0]

    fp8 = _train(host, "fp8-base", fp8=True)
    start, end = fp8["eval_loss"]
    assert np.isfinite([start, end]).all() and end < 0.9 * start, f"loss at fixed noise did not fall: {start} -> {end}"
    assert len(fp8["loss_history"]) == STEPS

    # The same kohya file as from the full-precision checkpoint's UNet: same keys, shapes and dtypes.
    _train(host, "fp32-base", fp8=False, steps=2)
    fp8_file, fp8_meta = read_safetensors(host.loras_dir / "fp8-base.safetensors")
    fp32_file, _ = read_safetensors(host.loras_dir / "fp32-base.safetensors")
    assert {k: (v.shape, v.dtype) for k, v in fp8_file.items()} == {k: (v.shape, v.dtype) for k, v in fp32_file.items()}
    assert fp8_meta["ss_base_model_version"] == "sd_v1"

    # The native LoraLoader on the fp8 MODEL: every key loads, the image changes; at strength 0 (the same MODEL
    # object, re-sampled) the host's model renders exactly as before the run.
    mark = len(host.log_text())
    g = Graph()
    ckpt, unet = checkpoint(g), _fp8_unet(host, g)
    native = g.add("LoraLoader", model=out(unet), clip=out(ckpt, 1), lora_name="fp8-base.safetensors",
                   strength_model=1.0, strength_clip=1.0)
    untouched = g.add("LoraLoader", model=out(unet), clip=out(ckpt, 1), lora_name="fp8-base.safetensors",
                      strength_model=0.0, strength_clip=0.0)
    with_lora = render(g, out(native, 0), out(native, 1), out(ckpt, 2), "fp8_with")
    after = render(g, out(untouched, 0), out(untouched, 1), out(ckpt, 2), "fp8_after")
    entry = host.run(g.nodes)
    assert "lora key not loaded" not in host.log_text()[mark:]
    image_after = saved_images(host, entry, after)[0]
    assert np.array_equal(image_after, image_before)
    assert not np.array_equal(saved_images(host, entry, with_lora)[0], image_before)
