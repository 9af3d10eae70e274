"""Load LoRA in a real ComfyUI: every format, equality with the native LoraLoader, every bad input."""
from __future__ import annotations

import numpy as np
import pytest

from scripts import lora_fixtures as fx
from scripts.comfy_host import error_message
from scripts.graphs import Graph, checkpoint, out, render, saved_images
from scripts.tiny_checkpoint import TINY_TARGETS

STRENGTH_MODEL, STRENGTH_CLIP = 0.8, 0.6
# Formats that ComfyUI's own LoraLoader reads in full: there the images must be identical.
NATIVE_FULL = ("kohya", "kohya_ldm", "locon_tucker", "loha", "lokr", "dora", "comfyui_native", "lycoris_prefix",
               "diffusers_legacy")
# Formats whose attention layers the native loader drops; compared with the same tensors in kohya form.
PEFT_LIKE = ("peft", "diffusers")


def write_fixture(host, fmt: str, name: str | None = None, seed: int = 3, **kwargs) -> str:
    name = name or f"fmt_{fmt}.safetensors"
    # The native loader reads legacy diffusers files for the UNet only (its text-encoder keys are dropped).
    targets = [t for t in TINY_TARGETS if t.component == "unet"] if fmt == "diffusers_legacy" else TINY_TARGETS
    fx.write_format(fmt, host.loras_dir / name, targets, rank=4, alpha=kwargs.pop("alpha", 2.0),
                    gen=fx.default_generator(seed), **kwargs)
    return name


def lora_render_graph(base_render: bool, branches: dict[str, tuple[str, str]]) -> tuple[Graph, dict[str, str]]:
    """One prompt: the checkpoint, an optional LoRA-free render, and one render per (node class, file) branch."""
    g = Graph()
    ckpt = checkpoint(g)
    saves = {}
    if base_render:
        saves["base"] = render(g, out(ckpt, 0), out(ckpt, 1), out(ckpt, 2), "base")
    for label, (class_type, lora_name) in branches.items():
        lora = g.add(class_type, model=out(ckpt, 0), clip=out(ckpt, 1), lora_name=lora_name,
                     strength_model=STRENGTH_MODEL, strength_clip=STRENGTH_CLIP)
        saves[label] = render(g, out(lora, 0), out(lora, 1), out(ckpt, 2), label)
    return g, saves


def images_of(host, graph: Graph, saves: dict[str, str]) -> dict[str, np.ndarray]:
    entry = host.run(graph.nodes)
    return {label: saved_images(host, entry, node)[0] for label, node in saves.items()}


def log_since(host, mark: int) -> str:
    return host.log_text()[mark:]


@pytest.mark.parametrize("fmt", NATIVE_FULL)
def test_image_equals_native_loader(host, fmt):
    name = write_fixture(host, fmt)
    mark = len(host.log_text())
    g, saves = lora_render_graph(True, {"native": ("LoraLoader", name), "ours": ("LoraLabLoadLora", name)})
    images = images_of(host, g, saves)
    log = log_since(host, mark)
    assert "lora key not loaded" not in log, f"the native loader dropped keys of {fmt}:\n{log}"
    assert "ERROR" not in log, log
    assert not np.array_equal(images["native"], images["base"]), f"{fmt}: the LoRA did not change the image"
    np.testing.assert_array_equal(images["ours"], images["native"])


@pytest.mark.parametrize("fmt", PEFT_LIKE)
def test_peft_attention_layers_are_applied(host, fmt):
    peft_name = write_fixture(host, fmt, seed=5)
    kohya_name = write_fixture(host, "kohya", name=f"same_as_{fmt}.safetensors", seed=5)
    g, saves = lora_render_graph(True, {"ours": ("LoraLabLoadLora", peft_name),
                                        "native_peft": ("LoraLoader", peft_name),
                                        "native_kohya": ("LoraLoader", kohya_name)})
    mark = len(host.log_text())
    images = images_of(host, g, saves)
    # Same tensors, same alpha: W + strength * alpha / rank * up @ down on every layer, attention included.
    np.testing.assert_array_equal(images["ours"], images["native_kohya"])
    assert not np.array_equal(images["ours"], images["base"])
    # The native loader drops the attention layers of this format: its image differs.
    assert not np.array_equal(images["native_peft"], images["ours"])
    assert "lora key not loaded" in log_since(host, mark)


def test_peft_dora_is_read(host):
    name = write_fixture(host, "peft_dora", seed=9)
    g, saves = lora_render_graph(True, {"ours": ("LoraLabLoadLora", name)})
    images = images_of(host, g, saves)
    assert not np.array_equal(images["ours"], images["base"])


def test_trigger_words_output(host):
    name = write_fixture(host, "kohya", name="with_trigger.safetensors",
                         metadata={"modelspec.trigger_phrase": "ohwx cat, red scarf"})
    g = Graph()
    ckpt = checkpoint(g)
    lora = g.add("LoraLabLoadLora", model=out(ckpt, 0), clip=out(ckpt, 1), lora_name=name,
                 strength_model=1.0, strength_clip=1.0)
    shown = g.add("PreviewAny", source=out(lora, 2))
    entry = host.run(g.nodes)
    assert entry["outputs"][shown]["text"] == ["ohwx cat, red scarf"]
    assert entry["outputs"][lora]["trigger_words"] == ["ohwx cat, red scarf"]


def test_unchanged_file_is_not_read_again(host):
    name = write_fixture(host, "kohya", name="cached.safetensors")
    for strength in (0.5, 0.7):  # a new strength re-runs the node; the file is unchanged
        g = Graph()
        ckpt = checkpoint(g)
        lora = g.add("LoraLabLoadLora", model=out(ckpt, 0), clip=out(ckpt, 1), lora_name=name,
                     strength_model=strength, strength_clip=strength)
        g.add("PreviewAny", source=out(lora, 2))
        host.run(g.nodes)
    log = host.log_text()
    assert log.count(f"read {name}") == 1, log[-3000:]
    assert f"{name} unchanged, using the parsed copy" in log


def run_expecting_error(host, lora_name: str, class_type: str = "LoraLabLoadLora") -> str:
    g = Graph()
    ckpt = checkpoint(g)
    lora = g.add(class_type, model=out(ckpt, 0), clip=out(ckpt, 1), lora_name=lora_name,
                 strength_model=1.0, strength_clip=1.0)
    save = render(g, out(lora, 0), out(lora, 1), out(ckpt, 2), "never")
    entry = host.wait(host.queue(g.nodes))
    assert entry["status"]["status_str"] == "error", f"{lora_name} was accepted"
    assert save not in entry["outputs"], "the graph went on past the failing LoRA node"
    message = error_message(entry)
    assert message.startswith("LoraLabLoadLora"), message
    return message


BAD_FILES = {
    "truncated": (lambda p: fx.write_truncated(p), "truncated"),
    "html": (lambda p: fx.write_html(p), "HTML"),
    "empty": (lambda p: fx.write_empty(p), "empty"),
    "checkpoint": (lambda p: fx.write_full_checkpoint(p), "checkpoint"),
    "nan": (lambda p: fx.write_nan(p, TINY_TARGETS), "NaN"),
    "rank_mismatch": (lambda p: fx.write_rank_mismatch(p, TINY_TARGETS), "rank"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_file_is_refused_with_its_name(host, case):
    write, expected = BAD_FILES[case]
    name = f"bad_{case}.safetensors"
    write(host.loras_dir / name)
    message = run_expecting_error(host, name)
    assert name in message and expected.lower() in message.lower(), message


def test_pickle_is_refused_unread(host):
    fx.write_pickle_pt(host.loras_dir / "old_format.pt")
    message = run_expecting_error(host, "old_format.pt")
    assert "old_format.pt" in message and "pickle" in message.lower(), message


def test_lora_for_another_base_model(host):
    fx.write_sdxl_only(host.loras_dir / "sdxl_style.safetensors")
    message = run_expecting_error(host, "sdxl_style.safetensors")
    # Only the CLIP-L text-encoder layer (lora_te1_) fits an SD1.5 model; the report says how many did.
    assert "sdxl_style.safetensors" in message and "1 of 4" in message, message
    assert "a LoRA for SDXL" in message and "(SD1.5)" in message, message


def test_shape_that_does_not_fit(host):
    wrong = (fx.Target("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", "linear", 640, 640,
                       "input_blocks.1.1.transformer_blocks.0.attn1.to_q"),)
    fx.write_format("kohya", host.loras_dir / "wrong_shape.safetensors", wrong, rank=2, alpha=1.0)
    message = run_expecting_error(host, "wrong_shape.safetensors")
    assert "wrong_shape.safetensors" in message and "[320, 320]" in message, message


@pytest.mark.parametrize("name", ["../escape.safetensors", "/etc/passwd", "sub/../../escape.safetensors"])
def test_name_that_escapes_the_loras_folders(host, name):
    (host.loras_dir.parent / "escape.safetensors").write_bytes(b"")
    g = Graph()
    ckpt = checkpoint(g)
    lora = g.add("LoraLabLoadLora", model=out(ckpt, 0), clip=out(ckpt, 1), lora_name=name,
                 strength_model=1.0, strength_clip=1.0)
    g.add("PreviewAny", source=out(lora, 2))
    status, answer = host.post_json("/prompt", {"prompt": g.nodes, "client_id": "t"})
    assert status == 400, answer
    assert "outside the loras folders" in str(answer) or "absolute path" in str(answer), answer
