"""Load LoRA's per-block sliders in the host's real graph editor: one slider per block of the chosen file, a move
writes the block_weights text, and the value survives saving and reloading the workflow."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect

from scripts.lora_fixtures import write_format
from scripts.tiny_checkpoint import TINY_TARGETS

BLOCKS = "blocks four.safetensors"  # layers in the text encoder, IN01, the middle block and OUT04


@pytest.fixture(scope="module")
def block_lora(host) -> Iterator[Path]:
    """Written before any page opens: the editor reads the loras list on load."""
    path = host.loras_dir / BLOCKS
    write_format("kohya", path, TINY_TARGETS, rank=2)
    yield path


def sliders(editor, node_id: int):
    return editor.page.locator(f'.loralab-blocks[data-node-id="{node_id}"]')


def slider(editor, node_id: int, block: str):
    return sliders(editor, node_id).locator(f'[data-testid=loralab-block-slider][data-block="{block}"]')


def open_sliders(editor, node_id: int) -> None:
    sliders(editor, node_id).get_by_test_id("loralab-blocks-toggle").click()
    expect(sliders(editor, node_id).get_by_test_id("loralab-blocks-status")).to_have_text(
        "4 block(s) in this file", timeout=10_000)


def shown_weights(editor, node_id: int) -> dict[str, str]:
    return sliders(editor, node_id).evaluate("""root => Object.fromEntries([...root.querySelectorAll(
        '[data-testid=loralab-block-slider]')].map(s => [s.dataset.block, s.value]))""")


def test_a_block_slider_writes_the_text_and_survives_save_and_reload(block_lora, editor, artifacts):
    node = editor.add_node("LoraLabLoadLora", (200, 150))
    editor.page.wait_for_timeout(300)  # the first draw places the widgets
    editor.choose_combo(node, "lora_name", BLOCKS)
    open_sliders(editor, node)
    assert shown_weights(editor, node) == {"BASE": "1", "IN01": "1", "M00": "1", "OUT04": "1"}

    # As a user moves it from the keyboard: ten steps of 0.05 down from 1.
    middle = slider(editor, node, "M00")
    middle.focus()
    for _ in range(10):
        editor.page.keyboard.press("ArrowLeft")
    expect(middle).to_have_value("0.5")
    expect(sliders(editor, node).locator('[data-block="M00"] [data-testid=loralab-block-value]')).to_have_text("0.5")
    assert editor.widget_value(node, "block_weights") == "M00=0.5"

    # Saved as the block_weights text, in its own place among the widget values; the sliders are not saved.
    workflow = editor.save_and_reload()
    saved = editor.saved_node(workflow, node)
    assert saved["widgets_values"] == [BLOCKS, 1, 1, "M00=0.5"]
    assert editor.widget_value(node, "block_weights") == "M00=0.5"
    open_sliders(editor, node)  # a new node instance, its sliders set from the reloaded text by the host
    assert shown_weights(editor, node) == {"BASE": "1", "IN01": "1", "M00": "0.5", "OUT04": "1"}

    # A preset typed into the field moves the sliders to the weights the loaders would apply.
    editor.js("""const w = app.graph.getNodeById(arg).widgets.find(w => w.name === 'block_weights');
        w.value = 'OUTALL'; w.callback?.(w.value);""", node)
    expect(slider(editor, node, "IN01")).to_have_value("0", timeout=10_000)
    assert shown_weights(editor, node) == {"BASE": "1", "IN01": "0", "M00": "0", "OUT04": "1"}
    editor.js("app.canvas.setDirty(true, true);")  # the canvas draws the field's new text on its next frame
    editor.page.wait_for_timeout(200)
    editor.page.screenshot(path=str(artifacts / "block_sliders.png"))
    assert editor.pack_errors == []


def row_sliders(editor, node_id: int, index: int):
    return editor.stack(node_id).locator(f'tr.loralab-stack-blocks-row[data-index="{index}"] .loralab-blocks')


def test_a_stack_rows_block_slider_writes_that_rows_weights_and_survives_save_and_reload(block_lora, editor):
    node = editor.add_node("LoraLabStackLoras", (200, 150))
    editor.add_rows(node, 2)
    editor.row(node, 1).get_by_test_id("loralab-stack-lora").select_option(BLOCKS)
    panel = row_sliders(editor, node, 1)
    panel.get_by_test_id("loralab-blocks-toggle").click()
    expect(panel.get_by_test_id("loralab-blocks-status")).to_have_text("4 block(s) in this file", timeout=10_000)
    middle = panel.locator('[data-testid=loralab-block-slider][data-block="M00"]')
    middle.focus()
    for _ in range(4):  # the table redraws after each step; the slider keeps the focus
        editor.page.keyboard.press("ArrowLeft")
    expect(middle).to_have_value("0.8")
    rows = json.loads(editor.widget_value(node, "loras"))
    assert rows[1]["block_weights"] == "M00=0.8" and "block_weights" not in rows[0]
    expect(editor.row(node, 1).get_by_test_id("loralab-stack-blocks")).to_have_value("M00=0.8")
    box, last = editor.stack(node).bounding_box(), panel.bounding_box()
    assert last["y"] + last["height"] <= box["y"] + box["height"] + 1, "the open sliders must not be cut off"

    editor.save_and_reload()
    assert json.loads(editor.widget_value(node, "loras"))[1]["block_weights"] == "M00=0.8"
    panel = row_sliders(editor, node, 1)
    panel.get_by_test_id("loralab-blocks-toggle").click()
    expect(panel.locator('[data-testid=loralab-block-slider][data-block="M00"]')).to_have_value("0.8", timeout=10_000)
    assert editor.pack_errors == []
