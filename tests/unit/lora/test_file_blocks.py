"""The blocks of a LoRA file as the editor's sliders show them: layout order, layer counts, weights under a text."""
from __future__ import annotations

import pytest

from scripts import lora_fixtures as fx
from scripts.tiny_checkpoint import TINY_TARGETS
from trainer.errors import BlockWeightsError
from trainer.lora.block_weights import parse_block_weights
from trainer.lora.file import load_lora_file
from trainer.lora.file_blocks import file_blocks

# TINY_TARGETS: 2 text-encoder layers (BASE), 6 in the first input level (IN01 attention, IN01 res conv: diffusers
# names), 1 middle, 1 output (up_blocks.1.attentions.1 -> OUT04).
EXPECTED = [("BASE", 2), ("IN01", 6), ("M00", 1), ("OUT04", 1)]


@pytest.fixture
def lora(tmp_path):
    path = tmp_path / "tiny.safetensors"
    fx.write_format("kohya", path, TINY_TARGETS, rank=2)
    return load_lora_file(path)


def test_blocks_in_layout_order_with_their_layer_counts(lora):
    blocks, outside = file_blocks(lora)
    assert [(b.block, b.layers) for b in blocks] == EXPECTED and outside == 0
    assert {b.weight for b in blocks} == {1.0}


@pytest.mark.parametrize(("text", "weights"), [
    ("MID=0, OUT04=0.5", [1.0, 1.0, 0.0, 0.5]),
    ("OUTALL", [1.0, 0.0, 0.0, 1.0]),  # the preset's 17 values: text encoder and outputs on
    ("1,0.3,0,0,0,0,0,0.7,0,0.25,0,0,0,0,0,0,0", [1.0, 0.3, 0.7, 0.25]),  # BASE, IN01, ..., MID, OUT03, OUT04
])
def test_each_weight_is_the_loaders_weight_of_that_block(lora, text, weights):
    blocks, _ = file_blocks(lora, text)
    assert [b.weight for b in blocks] == weights
    assert weights == [parse_block_weights(text).weight(b.block) for b in blocks]  # what the loaders apply


def test_a_text_the_loaders_refuse_is_refused_here_too(lora):
    with pytest.raises(BlockWeightsError, match="not a known preset"):
        file_blocks(lora, "SOMETIMES")
    with pytest.raises(BlockWeightsError, match="Flux"):  # SD1 values on a file whose blocks are D00...
        path = lora.source_name.replace("tiny", "flux")
        fx.write_format("kohya", path, [fx.Target("double_blocks.0.img_attn.qkv", "linear", 8, 8)], rank=2)
        file_blocks(load_lora_file(path), "OUTALL")
