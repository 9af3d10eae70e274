"""Extract LoRA and Bake LoRAs in a real ComfyUI: a LoRA extracted from (checkpoint + LoRA, checkpoint) at its rank
renders as that LoRA in native LoraLoader with no key left; a baked checkpoint renders as checkpoint + LoRA."""
from __future__ import annotations

import json

import numpy as np

from scripts import lora_fixtures as fx
from scripts.comfy_host import TINY_CHECKPOINT_NAME, error_message
from scripts.graphs import Graph, checkpoint, out, render, saved_images
from scripts.tiny_checkpoint import TINY_TARGETS
from trainer.safetensors_io import read_metadata

FIXTURE, RANK, STRENGTH_MODEL, STRENGTH_CLIP = "extract_source.safetensors", 4, 0.9, 0.7


def _write_fixture(host) -> fx.FixtureLora:
    return fx.write_format("kohya", host.loras_dir / FIXTURE, TINY_TARGETS, rank=RANK, alpha=2.0,
                           gen=fx.default_generator(81))


def _native(g: Graph, ckpt: str, name: str, strength_model: float, strength_clip: float) -> str:
    return g.add("LoraLoader", model=out(ckpt, 0), clip=out(ckpt, 1), lora_name=name,
                 strength_model=strength_model, strength_clip=strength_clip)


def _close(a: np.ndarray, b: np.ndarray) -> None:
    assert int(np.abs(a.astype(int) - b.astype(int)).max()) <= 1


def test_an_extracted_lora_renders_as_the_lora_it_came_from(host):
    fixture = _write_fixture(host)
    g = Graph()
    ckpt = checkpoint(g)
    lora = _native(g, ckpt, FIXTURE, STRENGTH_MODEL, STRENGTH_CLIP)
    extract = g.add("LoraLabExtractLora", base_model=out(ckpt, 0), tuned_model=out(lora, 0), base_clip=out(ckpt, 1),
                    tuned_clip=out(lora, 1), rank=RANK, method="fixed", param=0.9, clamp_quantile=1.0, min_diff=0.0,
                    output_name="extracted_test", precision="fp32", alpha=0.0)
    g.add("PreviewAny", source=out(extract, 1))
    entry = host.run(g.nodes)
    assert entry["outputs"][extract]["text"][0].startswith("extracted_test.safetensors")
    metadata = read_metadata(host.loras_dir / "extracted_test.safetensors")
    ranks = json.loads(metadata["loralab.tool.ranks"])
    assert sorted(ranks) == sorted(fixture.prefixes.values())  # exactly the layers the LoRA changed
    assert set(ranks.values()) == {RANK} and metadata["loralab.tool.method"] == "extract"
    sources = json.loads(metadata["loralab.tool.sources"])
    assert sources["base_model"]["patched_layers"] == 0 and sources["tuned_model"]["patched_layers"] == 8
    assert sources["tuned_clip"]["patched_layers"] == 2 and sources["family"] == "SD15"
    assert metadata["ss_base_model_version"] == "sd_v1"
    assert all(share > 0.99999 for share in json.loads(metadata["loralab.tool.kept_share"]).values())

    g = Graph()
    ckpt = checkpoint(g)
    source = _native(g, ckpt, FIXTURE, STRENGTH_MODEL, STRENGTH_CLIP)
    extracted = _native(g, ckpt, "extracted_test.safetensors", 1.0, 1.0)
    renders = {"source": render(g, out(source, 0), out(source, 1), out(ckpt, 2), "extract_source"),
               "extracted": render(g, out(extracted, 0), out(extracted, 1), out(ckpt, 2), "extract_result"),
               "base": render(g, out(ckpt, 0), out(ckpt, 1), out(ckpt, 2), "extract_base")}
    mark = len(host.log_text())
    entry = host.run(g.nodes)
    log = host.log_text()[mark:]
    images = {label: saved_images(host, entry, node)[0] for label, node in renders.items()}
    assert "lora key not loaded" not in log, log
    assert not np.array_equal(images["source"], images["base"])
    _close(images["extracted"], images["source"])


def test_a_baked_checkpoint_renders_as_the_checkpoint_with_the_lora(host):
    _write_fixture(host)
    checkpoints = host.base_dir / "models" / "checkpoints"
    baked = checkpoints / "baked_test.safetensors"
    rows = json.dumps([{"lora": FIXTURE, "strength_model": STRENGTH_MODEL, "strength_clip": STRENGTH_CLIP}])
    try:
        g = Graph()
        ckpt = checkpoint(g)
        stack = g.add("LoraLabStackLoras", loras=rows, model=out(ckpt, 0), clip=out(ckpt, 1))
        bake = g.add("LoraLabBakeLoras", model=out(stack, 0), clip=out(stack, 1), vae=out(ckpt, 2),
                     output_name="baked_test", precision="fp16", lora_stack=out(stack, 2))
        entry = host.run(g.nodes)
        assert entry["outputs"][bake]["text"][0].startswith("baked_test.safetensors")
        metadata = read_metadata(baked)
        assert metadata["loralab.tool.method"] == "bake" and metadata["loralab.tool.precision"] == "fp16"
        [source] = json.loads(metadata["loralab.tool.sources"])
        assert (source["name"], source["strength_model"], source["strength_clip"]) == \
            (FIXTURE, STRENGTH_MODEL, STRENGTH_CLIP) and len(source["sha256"]) == 64
        assert json.loads(metadata["loralab.tool.patched_layers"]) == {"model": 8, "clip": 2}
        assert "prompt" in metadata  # the workflow, as the host's CheckpointSave writes it

        g = Graph()
        ckpt = checkpoint(g)
        lora = _native(g, ckpt, FIXTURE, STRENGTH_MODEL, STRENGTH_CLIP)
        loaded = g.add("CheckpointLoaderSimple", ckpt_name="baked_test.safetensors")
        renders = {"lora": render(g, out(lora, 0), out(lora, 1), out(ckpt, 2), "bake_lora"),
                   "baked": render(g, out(loaded, 0), out(loaded, 1), out(loaded, 2), "bake_baked")}
        entry = host.run(g.nodes)
        images = {label: saved_images(host, entry, node)[0] for label, node in renders.items()}
        _close(images["baked"], images["lora"])

        g = Graph()  # the name of an existing checkpoint is refused, and the file is left alone
        ckpt = checkpoint(g)
        g.add("LoraLabBakeLoras", model=out(ckpt, 0), clip=out(ckpt, 1), vae=out(ckpt, 2),
              output_name=TINY_CHECKPOINT_NAME, precision="fp16")
        entry = host.wait(host.queue(g.nodes))
        assert entry["status"]["status_str"] == "error"
        assert "already exists" in error_message(entry)
        assert not [p for p in checkpoints.iterdir() if p.name.endswith(".tmp")]
    finally:
        baked.unlink(missing_ok=True)
