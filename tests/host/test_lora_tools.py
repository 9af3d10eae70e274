"""Merge LoRAs and Resize LoRA in a real ComfyUI: the written files load in native LoraLoader with no key left,
a concat merge renders as the stacked sources, a resize changes the image and loads like natively; a DoRA is
refused without the model and, with it connected, merges and resizes into files that render as the DoRA."""
from __future__ import annotations

import json

import numpy as np

from scripts import lora_fixtures as fx
from scripts.comfy_host import error_message
from scripts.graphs import Graph, checkpoint, out, render, saved_images
from scripts.tiny_checkpoint import TINY_TARGETS
from trainer.safetensors_io import read_metadata

SOURCES = [("tools_a.safetensors", 0.9, 0.6), ("tools_b.safetensors", -0.5, 1.1)]


def _write_sources(host) -> None:
    for seed, (name, _, _) in enumerate(SOURCES):
        fx.write_format("kohya", host.loras_dir / name, TINY_TARGETS, rank=4, alpha=2.0,
                        gen=fx.default_generator(70 + seed))


def _stack_rows(rows) -> str:
    return json.dumps([{"lora": n, "strength_model": sm, "strength_clip": sc} for n, sm, sc in rows])


def _native(g: Graph, ckpt: str, rows) -> tuple[list, list]:
    model, clip = out(ckpt, 0), out(ckpt, 1)
    for name, sm, sc in rows:
        lora = g.add("LoraLoader", model=model, clip=clip, lora_name=name, strength_model=sm, strength_clip=sc)
        model, clip = out(lora, 0), out(lora, 1)
    return model, clip


def _run_logged(host, g: Graph) -> tuple[dict, str]:
    before = len(host.log_text())
    entry = host.run(g.nodes)
    return entry, host.log_text()[before:]


def _close(a: np.ndarray, b: np.ndarray) -> None:
    assert int(np.abs(a.astype(int) - b.astype(int)).max()) <= 1


def test_concat_merge_renders_as_the_stack_and_resize_loads_natively(host):
    _write_sources(host)
    g = Graph()
    stack = g.add("LoraLabStackLoras", loras=_stack_rows(SOURCES))
    merge = g.add("LoraLabMergeLoras", lora_stack=out(stack, 2), mode="concat", rank=16,
                  output_name="tools_merged", precision="fp32", alpha=0.0)
    g.add("PreviewAny", source=out(merge, 1))
    entry = host.run(g.nodes)
    assert entry["outputs"][merge]["text"][0].startswith("tools_merged.safetensors")
    metadata = read_metadata(host.loras_dir / "tools_merged.safetensors")
    assert metadata["loralab.tool.method"] == "merge_concat" and metadata["ss_network_dim"] == "8"
    assert [s["name"] for s in json.loads(metadata["loralab.tool.sources"])] == [n for n, _, _ in SOURCES]
    assert all(len(s["sha256"]) == 64 for s in json.loads(metadata["loralab.tool.sources"]))

    resize = Graph()
    node = resize.add("LoraLabResizeLora", lora_name="tools_merged.safetensors", rank=2, method="fixed", param=0.9,
                      output_name="tools_small", precision="fp16", alpha=0.0, conv_rank=1)
    resize.add("PreviewAny", source=out(node, 1))
    resized = host.run(resize.nodes)
    # The chart the editor draws (js/tool_chart.js): every factorised layer, its rank, share kept and spectrum.
    [chart] = resized["outputs"][node]["loralab_chart"]
    assert chart["rule"] == "fixed 2, conv 1" and len(chart["layers"]) == len(TINY_TARGETS)
    assert all(layer["rank"] == (1 if "conv1" in layer["prefix"] else 2) for layer in chart["layers"])
    assert all(0 < layer["kept_share"] <= 1 and len(layer["spectrum"]) == 8 for layer in chart["layers"])
    small = read_metadata(host.loras_dir / "tools_small.safetensors")
    assert small["ss_network_dim"] == "2" and small["loralab.tool.rank_rule"] == "fixed 2, conv 1"
    assert json.loads(small["ss_network_args"]) == {"conv_dim": "1", "conv_alpha": "1.0"}  # the 3x3 conv layer

    g = Graph()
    ckpt = checkpoint(g)
    vae = out(ckpt, 2)
    stacked = render(g, *_native(g, ckpt, SOURCES), vae, "tools_stacked")
    merged = render(g, *_native(g, ckpt, [("tools_merged.safetensors", 1.0, 1.0)]), vae, "tools_merged")
    small_native = render(g, *_native(g, ckpt, [("tools_small.safetensors", 1.0, 1.0)]), vae, "tools_small_native")
    ours = g.add("LoraLabLoadLora", model=out(ckpt, 0), clip=out(ckpt, 1), lora_name="tools_small.safetensors",
                 strength_model=1.0, strength_clip=1.0)
    small_ours = render(g, out(ours, 0), out(ours, 1), vae, "tools_small_ours")
    base = render(g, out(ckpt, 0), out(ckpt, 1), vae, "tools_base")
    entry, log = _run_logged(host, g)
    images = {n: saved_images(host, entry, n)[0] for n in (stacked, merged, small_native, small_ours, base)}
    assert "lora key not loaded" not in log
    assert not np.array_equal(images[stacked], images[base])
    _close(images[merged], images[stacked])
    _close(images[small_ours], images[small_native])
    assert not np.array_equal(images[small_native], images[base])


def test_an_existing_output_is_never_overwritten(host):
    _write_sources(host)
    (host.loras_dir / "tools_taken.safetensors").write_bytes(b"keep me")
    g = Graph()
    stack = g.add("LoraLabStackLoras", loras=_stack_rows(SOURCES[:1]))
    merge = g.add("LoraLabMergeLoras", lora_stack=out(stack, 2), mode="svd", rank=2, output_name="tools_taken",
                  precision="fp16", alpha=0.0)
    g.add("PreviewAny", source=out(merge, 0))
    entry = host.wait(host.queue(g.nodes))
    assert entry["status"]["status_str"] == "error"
    assert "already exists" in error_message(entry)
    assert (host.loras_dir / "tools_taken.safetensors").read_bytes() == b"keep me"


DORA = ("tools_dora.safetensors", 0.8, 0.7)


def _write_dora(host) -> None:
    fx.write_format("dora", host.loras_dir / DORA[0], TINY_TARGETS, rank=4, alpha=2.0, gen=fx.default_generator(72))


def test_a_dora_without_the_model_is_refused_by_name_and_told_to_connect_it(host):
    _write_sources(host)
    _write_dora(host)
    g = Graph()
    stack = g.add("LoraLabStackLoras", loras=_stack_rows([SOURCES[0], DORA]))
    merge = g.add("LoraLabMergeLoras", lora_stack=out(stack, 2), mode="svd", rank=8, output_name="tools_with_dora",
                  precision="fp16", alpha=0.0)
    g.add("PreviewAny", source=out(merge, 0))
    resize = Graph()
    node = resize.add("LoraLabResizeLora", lora_name=DORA[0], rank=2, method="fixed", param=0.9,
                      output_name="tools_dora_small", precision="fp16", alpha=0.0)
    resize.add("PreviewAny", source=out(node, 0))
    for graph, name in ((g, "tools_with_dora"), (resize, "tools_dora_small")):
        entry = host.wait(host.queue(graph.nodes))
        assert entry["status"]["status_str"] == "error"
        message = error_message(entry)
        assert f"'{DORA[0]}' is a DoRA" in message and "Connect that model to this node's `model` input" in message
        assert not (host.loras_dir / f"{name}.safetensors").exists()
    # The MODEL alone does not reach the DoRA's text-encoder layers: refused before any layer, naming `clip`.
    g = Graph()
    ckpt = checkpoint(g)
    node = g.add("LoraLabResizeLora", lora_name=DORA[0], rank=2, method="fixed", param=0.9,
                 output_name="tools_dora_small", precision="fp16", alpha=0.0, model=out(ckpt, 0))
    g.add("PreviewAny", source=out(node, 0))
    entry = host.wait(host.queue(g.nodes))
    assert f"'{DORA[0]}' is a DoRA with text-encoder layers" in error_message(entry)
    assert "connect the CLIP to `clip` too" in error_message(entry)
    assert not (host.loras_dir / "tools_dora_small.safetensors").exists()


def test_a_dora_merged_and_resized_with_the_model_connected_renders_as_native_loading(host):
    _write_sources(host)
    _write_dora(host)
    g = Graph()
    ckpt = checkpoint(g)
    # The DoRA first: natively, the kohya LoRA after it adds its change to the DoRA's weight, as the merge sums them.
    stack = g.add("LoraLabStackLoras", loras=_stack_rows([DORA, SOURCES[0]]))
    merge = g.add("LoraLabMergeLoras", lora_stack=out(stack, 2), mode="svd", rank=1024, output_name="tools_dora_merged",
                  precision="fp32", alpha=0.0, model=out(ckpt, 0), clip=out(ckpt, 1))
    resize = g.add("LoraLabResizeLora", lora_name=DORA[0], rank=1024, method="fixed", param=0.9,
                   output_name="tools_dora_resized", precision="fp32", alpha=0.0, model=out(ckpt, 0),
                   clip=out(ckpt, 1))
    g.add("PreviewAny", source=out(merge, 1))
    g.add("PreviewAny", source=out(resize, 1))
    _, log = _run_logged(host, g)
    assert "lora key not loaded" not in log
    merged = read_metadata(host.loras_dir / "tools_dora_merged.safetensors")
    record = json.loads(merged["loralab.tool.dora_base"])
    assert record["sources"] == [DORA[0]] and record["against"] == "the connected MODEL and CLIP"
    assert record["layers_read"] == len(TINY_TARGETS) and record["patched_layers"] == 0
    assert len(record["weights_sha256"]) == 64 and record["ss_base_model_version"] == "sd_v1"
    resized = read_metadata(host.loras_dir / "tools_dora_resized.safetensors")
    assert json.loads(resized["loralab.tool.dora_base"])["weights_sha256"] == record["weights_sha256"]

    g = Graph()
    ckpt = checkpoint(g)
    vae = out(ckpt, 2)
    native = render(g, *_native(g, ckpt, [DORA, SOURCES[0]]), vae, "tools_dora_native_stack")
    ours = render(g, *_native(g, ckpt, [("tools_dora_merged.safetensors", 1.0, 1.0)]), vae, "tools_dora_merged")
    native_dora = render(g, *_native(g, ckpt, [(DORA[0], 1.0, 1.0)]), vae, "tools_dora_native")
    resized_dora = render(g, *_native(g, ckpt, [("tools_dora_resized.safetensors", 1.0, 1.0)]), vae,
                          "tools_dora_resized")
    base = render(g, out(ckpt, 0), out(ckpt, 1), vae, "tools_dora_model_base")
    entry, log = _run_logged(host, g)
    images = {n: saved_images(host, entry, n)[0] for n in (native, ours, native_dora, resized_dora, base)}
    assert "lora key not loaded" not in log
    assert not np.array_equal(images[native], images[base])
    assert not np.array_equal(images[native], images[native_dora])
    _close(images[ours], images[native])
    _close(images[resized_dora], images[native_dora])


def test_extract_of_a_dora_patched_model_renders_as_the_dora(host):
    _write_dora(host)
    # Another way to a plain LoRA of a DoRA: Load LoRA, then Extract LoRA (patched model as tuned_model). At full
    # rank the plain LoRA renders as the DoRA does.
    g = Graph()
    ckpt = checkpoint(g)
    dora = g.add("LoraLabLoadLora", model=out(ckpt, 0), clip=out(ckpt, 1), lora_name="tools_dora.safetensors",
                 strength_model=1.0, strength_clip=1.0)
    extract = g.add("LoraLabExtractLora", base_model=out(ckpt, 0), tuned_model=out(dora, 0), base_clip=out(ckpt, 1),
                    tuned_clip=out(dora, 1), rank=1024, method="fixed", param=0.9, clamp_quantile=1.0,
                    min_diff=0.0, output_name="tools_dora_plain", precision="fp32", alpha=0.0)
    g.add("PreviewAny", source=out(extract, 1))
    host.run(g.nodes)
    plain = read_metadata(host.loras_dir / "tools_dora_plain.safetensors")
    assert all(share > 0.99999 for share in json.loads(plain["loralab.tool.kept_share"]).values())

    g = Graph()
    ckpt = checkpoint(g)
    with_dora = render(g, *_native(g, ckpt, [("tools_dora.safetensors", 1.0, 1.0)]), out(ckpt, 2), "tools_dora")
    with_plain = render(g, *_native(g, ckpt, [("tools_dora_plain.safetensors", 1.0, 1.0)]), out(ckpt, 2),
                        "tools_dora_plain")
    base = render(g, out(ckpt, 0), out(ckpt, 1), out(ckpt, 2), "tools_dora_base")
    entry, log = _run_logged(host, g)
    images = {n: saved_images(host, entry, n)[0] for n in (with_dora, with_plain, base)}
    assert "lora key not loaded" not in log
    assert not np.array_equal(images[with_dora], images[base])
    _close(images[with_plain], images[with_dora])
