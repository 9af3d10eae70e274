"""Stack LoRAs in a real ComfyUI: same image as chained native loaders, LORA_STACK in/out, toggles, trigger words."""
from __future__ import annotations

import json

import numpy as np

from scripts import lora_fixtures as fx
from scripts.comfy_host import error_message
from scripts.graphs import Graph, checkpoint, out, render, saved_images
from scripts.tiny_checkpoint import TINY_TARGETS

ROWS = [("stack_a.safetensors", 0.9, 0.5, "style_a"), ("stack_b.safetensors", -0.4, 1.2, "char_b"),
        ("stack_c.safetensors", 0.7, 0.7, "style_a, extra_c")]


def write_stack_files(host) -> None:
    for seed, (name, _, _, trigger) in enumerate(ROWS):
        fx.write_format("loha" if seed == 1 else "kohya", host.loras_dir / name, TINY_TARGETS, rank=4, alpha=2.0,
                        gen=fx.default_generator(40 + seed), metadata={"modelspec.trigger_phrase": trigger})


def rows_json(rows, off: set[str] = frozenset()) -> str:
    return json.dumps([{"lora": n, "on": n not in off, "strength_model": sm, "strength_clip": sc}
                       for n, sm, sc, _ in rows])


def test_stack_renders_like_chained_native_loaders(host):
    write_stack_files(host)
    g = Graph()
    ckpt = checkpoint(g)
    model, clip = out(ckpt, 0), out(ckpt, 1)
    for name, sm, sc, _ in ROWS:
        lora = g.add("LoraLoader", model=model, clip=clip, lora_name=name, strength_model=sm, strength_clip=sc)
        model, clip = out(lora, 0), out(lora, 1)
    native = render(g, model, clip, out(ckpt, 2), "native_chain")
    stack = g.add("LoraLabStackLoras", loras=rows_json(ROWS), model=out(ckpt, 0), clip=out(ckpt, 1))
    ours = render(g, out(stack, 0), out(stack, 1), out(ckpt, 2), "stack")
    base = render(g, out(ckpt, 0), out(ckpt, 1), out(ckpt, 2), "stack_base")
    words = g.add("PreviewAny", source=out(stack, 3))
    entry = host.run(g.nodes)
    native_img, ours_img, base_img = (saved_images(host, entry, n)[0] for n in (native, ours, base))
    assert not np.array_equal(native_img, base_img)
    np.testing.assert_array_equal(ours_img, native_img)
    assert entry["outputs"][words]["text"] == ["style_a, char_b, extra_c"]


def test_toggled_off_row_and_incoming_stack(host):
    write_stack_files(host)
    g = Graph()
    ckpt = checkpoint(g)
    # Upstream stack holds A; downstream rows hold B (off) and C: the result is A then C.
    upstream = g.add("LoraLabStackLoras", loras=rows_json(ROWS[:1]))
    downstream = g.add("LoraLabStackLoras", loras=rows_json(ROWS[1:], off={"stack_b.safetensors"}),
                       lora_stack=out(upstream, 2), model=out(ckpt, 0), clip=out(ckpt, 1))
    stacked = render(g, out(downstream, 0), out(downstream, 1), out(ckpt, 2), "stack_in")
    model, clip = out(ckpt, 0), out(ckpt, 1)
    for name, sm, sc, _ in (ROWS[0], ROWS[2]):
        lora = g.add("LoraLoader", model=model, clip=clip, lora_name=name, strength_model=sm, strength_clip=sc)
        model, clip = out(lora, 0), out(lora, 1)
    native = render(g, model, clip, out(ckpt, 2), "native_ac")
    stack_out = g.add("PreviewAny", source=out(downstream, 2))
    entry = host.run(g.nodes)
    np.testing.assert_array_equal(saved_images(host, entry, stacked)[0], saved_images(host, entry, native)[0])
    listed = json.loads(entry["outputs"][stack_out]["text"][0])
    assert listed == [["stack_a.safetensors", 0.9, 0.5], ["stack_c.safetensors", 0.7, 0.7]]


def test_bad_rows_are_refused_before_running(host):
    g = Graph()
    ckpt = checkpoint(g)
    stack = g.add("LoraLabStackLoras", loras='[{"lora": "x.safetensors", "strength_model": "loud"}]',
                  model=out(ckpt, 0))
    g.add("PreviewAny", source=out(stack, 3))
    status, answer = host.post_json("/prompt", {"prompt": g.nodes, "client_id": "t"})
    assert status == 400 and "strength_model" in json.dumps(answer), answer


def test_missing_file_in_a_row_stops_at_the_stack(host):
    g = Graph()
    ckpt = checkpoint(g)
    stack = g.add("LoraLabStackLoras", loras='[{"lora": "nowhere.safetensors"}]', model=out(ckpt, 0),
                  clip=out(ckpt, 1))
    g.add("PreviewAny", source=out(stack, 3))
    entry = host.wait(host.queue(g.nodes))
    assert entry["status"]["status_str"] == "error"
    assert "nowhere.safetensors" in error_message(entry) and "not found" in error_message(entry)
