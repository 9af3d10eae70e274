"""Block weights in a real ComfyUI: Load LoRA and Stack LoRAs rows render as native loading of a file scaled by hand."""
from __future__ import annotations

import json

import numpy as np
import safetensors.torch

from scripts import lora_fixtures as fx
from scripts.graphs import Graph, checkpoint, out, render, saved_images
from scripts.tiny_checkpoint import TINY_TARGETS

STRENGTH_MODEL, STRENGTH_CLIP = 0.8, 0.6
# The tiny model's block of each target (one res block per level: up_blocks.1.attentions.1 is output_blocks.3).
BLOCK = {"down_blocks.0": "IN01", "mid_block": "M00", "up_blocks.1": "OUT03", "text_model": "BASE"}
INS = {"BASE": 1.0, "IN01": 1.0, "M00": 0.0, "OUT03": 0.0}  # the INS preset on these blocks
NAMED = "BASE=0.5, IN01=2, MID=0, OUT03=-1"
NAMED_WEIGHTS = {"BASE": 0.5, "IN01": 2.0, "M00": 0.0, "OUT03": -1.0}


def block_of_target(target: fx.Target) -> str:
    return next(block for head, block in BLOCK.items() if target.name.startswith(head))


def write_full_and_scaled(host, name: str, weights: dict[str, float], seed: int = 11) -> tuple[str, str]:
    """A kohya LoRA on every tiny target, and the same file with each block's lora_up scaled by hand."""
    full = fx.write_format("kohya", host.loras_dir / f"{name}.safetensors", TINY_TARGETS, rank=4, alpha=2.0,
                           gen=fx.default_generator(seed))
    scaled = dict(full.tensors)
    for target, prefix in full.prefixes.items():
        key = f"{prefix}.lora_up.weight"
        scaled[key] = scaled[key] * weights[block_of_target(target)]
    by_hand = f"{name}_by_hand.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in scaled.items()}, str(host.loras_dir / by_hand))
    return full.path.name, by_hand


def native_lora(g: Graph, ckpt: str, name: str) -> str:
    return g.add("LoraLoader", model=out(ckpt, 0), clip=out(ckpt, 1), lora_name=name,
                 strength_model=STRENGTH_MODEL, strength_clip=STRENGTH_CLIP)


def assert_within_one_level(ours: np.ndarray, native: np.ndarray) -> None:
    diff = np.abs(ours.astype(np.int16) - native.astype(np.int16))
    assert diff.max() <= 1, f"images differ by up to {diff.max()}/255 at {int((diff > 1).sum())} values"


def run_images(host, g: Graph, saves: dict[str, str]) -> dict[str, np.ndarray]:
    entry = host.run(g.nodes)
    return {label: saved_images(host, entry, node)[0] for label, node in saves.items()}


def test_load_lora_block_weights_equal_native_loading_of_a_file_scaled_by_hand(host):
    full, ins_by_hand = write_full_and_scaled(host, "bw_ins", INS)
    _, named_by_hand = write_full_and_scaled(host, "bw_named", NAMED_WEIGHTS)
    g = Graph()
    ckpt = checkpoint(g)
    saves = {"base": render(g, out(ckpt, 0), out(ckpt, 1), out(ckpt, 2), "bw_base")}
    for label, name in (("native_full", full), ("native_ins", ins_by_hand), ("native_named", named_by_hand)):
        lora = native_lora(g, ckpt, name)
        saves[label] = render(g, out(lora, 0), out(lora, 1), out(ckpt, 2), label)
    for label, weights in (("ours_ins", "INS"), ("ours_named", NAMED), ("ours_empty", "")):
        lora = g.add("LoraLabLoadLora", model=out(ckpt, 0), clip=out(ckpt, 1), lora_name=full,
                     strength_model=STRENGTH_MODEL, strength_clip=STRENGTH_CLIP, block_weights=weights)
        saves[label] = render(g, out(lora, 0), out(lora, 1), out(ckpt, 2), label)
    images = run_images(host, g, saves)
    # Guards: the LoRA changes the image, and so do the blocks the weights scale.
    assert not np.array_equal(images["native_ins"], images["base"])
    assert not np.array_equal(images["native_ins"], images["native_full"])
    assert not np.array_equal(images["native_named"], images["native_full"])
    assert_within_one_level(images["ours_ins"], images["native_ins"])
    assert_within_one_level(images["ours_named"], images["native_named"])
    np.testing.assert_array_equal(images["ours_empty"], images["native_full"])  # no block weights: as before


def test_stack_row_block_weights_and_a_stack_passed_on(host):
    full, ins_by_hand = write_full_and_scaled(host, "bw_stack", INS, seed=12)
    rows = json.dumps([{"lora": full, "on": True, "strength_model": STRENGTH_MODEL, "strength_clip": STRENGTH_CLIP,
                        "block_weights": "INS"}])
    g = Graph()
    ckpt = checkpoint(g)
    native = native_lora(g, ckpt, ins_by_hand)
    saves = {"native": render(g, out(native, 0), out(native, 1), out(ckpt, 2), "bw_stack_native"),
             "base": render(g, out(ckpt, 0), out(ckpt, 1), out(ckpt, 2), "bw_stack_base")}
    stack = g.add("LoraLabStackLoras", loras=rows, model=out(ckpt, 0), clip=out(ckpt, 1))
    saves["stack"] = render(g, out(stack, 0), out(stack, 1), out(ckpt, 2), "bw_stack")
    # A stack that only collects rows hands them, block weights included, to a later Stack LoRAs node.
    upstream = g.add("LoraLabStackLoras", loras=rows)
    downstream = g.add("LoraLabStackLoras", loras="[]", lora_stack=out(upstream, 2), model=out(ckpt, 0),
                       clip=out(ckpt, 1))
    saves["passed_on"] = render(g, out(downstream, 0), out(downstream, 1), out(ckpt, 2), "bw_stack_passed")
    shown = g.add("PreviewAny", source=out(upstream, 2))
    entry = host.run(g.nodes)
    images = {label: saved_images(host, entry, node)[0] for label, node in saves.items()}
    assert not np.array_equal(images["native"], images["base"])
    assert_within_one_level(images["stack"], images["native"])
    assert_within_one_level(images["passed_on"], images["native"])
    # Other packs still see (name, strength_model, strength_clip).
    assert json.loads(entry["outputs"][shown]["text"][0]) == [[full, STRENGTH_MODEL, STRENGTH_CLIP]]


def test_bad_block_weights_are_refused_before_running(host):
    fx.write_format("kohya", host.loras_dir / "bw_bad.safetensors", TINY_TARGETS, rank=4, alpha=2.0)
    cases = (("LoraLabLoadLora", 2, "hold 3 values",
              {"lora_name": "bw_bad.safetensors", "strength_model": 1.0, "strength_clip": 1.0,
               "block_weights": "1,0,1"}),
             ("LoraLabStackLoras", 3, "not a known preset",
              {"loras": json.dumps([{"lora": "bw_bad.safetensors", "block_weights": "INZ"}])}))
    for class_type, words_output, expected, inputs in cases:
        g = Graph()
        ckpt = checkpoint(g)
        node = g.add(class_type, model=out(ckpt, 0), clip=out(ckpt, 1), **inputs)
        g.add("PreviewAny", source=out(node, words_output))
        status, answer = host.post_json("/prompt", {"prompt": g.nodes, "client_id": "t"})
        assert status == 400 and expected in json.dumps(answer), answer
