"""Load LoRA and Stack LoRAs show the chosen file's rank, alpha, base model and trigger words, before any run.

The host reads each file once (GET /loralab/loras/info); a file without metadata still shows its rank and alpha,
and a file it cannot read says why, without a failed request (the browser logs each 4xx as a console error).
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from playwright.sync_api import expect

from scripts.lora_fixtures import SD1_TARGETS, write_format, write_truncated

# A subfolder, spaces, '#', '+', '%' and non-ASCII letters: each must reach the host's route intact.
KOHYA = "styles/Ring LoRA #1 + 50% ünï 漢字.safetensors"
LOHA = "loha_sdxl.safetensors"
BARE = "bare.safetensors"  # no __metadata__ at all: rank and alpha from its tensors, base model guessed
MISSING = "gone away.safetensors"
# Sorted first in the folder: each new Load LoRA node of this module asks for its info before a file is chosen.
TRUNCATED = "0 broken/an interrupted download.safetensors"

KOHYA_LINE = "rank 16 · alpha 8 · SD1.5 · trigger: lrlring"
LOHA_LINE = "LyCORIS LoHa · rank 8 · alpha 4 · SDXL"
BARE_LINE = "rank 4 · alpha 2 · SD 1.x?"
MISSING_LINE = "file not found"
TRUNCATED_LINE = re.compile(r"^not a LoRA: is truncated: ")
LINEAR_TARGETS = [t for t in SD1_TARGETS if t.kind != "conv3x3"]  # a 3x3 conv would make it a LoCon


@pytest.fixture(scope="module")
def metadata_loras(host) -> Iterator[dict[str, Path]]:
    """Files with the metadata kohya sd-scripts, LyCORIS and trainer/training/export.py write, and one with none.

    Written after the host starts and before any page opens: the editor reads the loras list on load.
    """
    (host.loras_dir / "styles").mkdir(exist_ok=True)
    (host.loras_dir / "0 broken").mkdir(exist_ok=True)
    write_truncated(host.loras_dir / TRUNCATED)
    kohya_meta = {
        "ss_network_module": "networks.lora", "ss_network_dim": "16", "ss_network_alpha": "8.0",
        "ss_network_args": "{}", "ss_base_model_version": "sd_v1", "ss_v2": "False",
        "modelspec.architecture": "stable-diffusion-v1/lora", "modelspec.trigger_phrase": "lrlring",
        "ss_tag_frequency": json.dumps({"10_lrlring": {"lrlring": 20, "ring": 14, "silver": 3}}),
        "ss_datasets": json.dumps([{"subsets": [{"class_tokens": "lrlring"}]}]),
    }
    loha_meta = {
        "ss_network_module": "lycoris.kohya", "ss_network_dim": "8", "ss_network_alpha": "4",
        "ss_network_args": json.dumps({"algo": "loha", "conv_dim": "4", "conv_alpha": "1"}),
        "ss_base_model_version": "sdxl_base_v1-0",
    }
    paths = {KOHYA: host.loras_dir / KOHYA, LOHA: host.loras_dir / LOHA, BARE: host.loras_dir / BARE}
    write_format("kohya_ldm", paths[KOHYA], LINEAR_TARGETS, rank=16, alpha=8.0, metadata=kohya_meta)
    write_format("loha", paths[LOHA], SD1_TARGETS, rank=8, alpha=4.0, metadata=loha_meta)
    write_format("kohya", paths[BARE], LINEAR_TARGETS, rank=4, alpha=2.0)
    yield paths


@pytest.fixture
def watched(metadata_loras, editor):
    """The editor, with every info request, every failed LoRA Lab request and every console error recorded."""
    editor.info_requests = []
    editor.console_errors = []
    editor.failed_requests = []
    editor.page.on("response", lambda r: editor.failed_requests.append(f"{r.status} {r.url}")
                   if "/loralab/" in r.url and r.status >= 400 else None)
    editor.page.on("request", lambda r: editor.info_requests.append(r.url) if "/loralab/loras/info" in r.url else None)
    editor.page.on("console", lambda m: editor.console_errors.append(f"{m.text} @ {m.location.get('url', '')}")
                   if m.type == "error" else None)
    return editor


def load_lora_info(editor, node_id: int):
    """Load LoRA's info line, as a locator the assertions can wait on."""
    index = editor.js("""const n = app.graph.getNodeById(arg),
            el = n.widgets.find(w => w.name === 'loralab_lora_info').element;
        return [...document.querySelectorAll('[data-testid=loralab-lora-info]')].indexOf(el);""", node_id)
    assert index >= 0, "Load LoRA has no info line in the page"
    return editor.page.locator("[data-testid=loralab-lora-info]").nth(index)


def assert_line_shown(info) -> None:
    """The whole line is on screen: the host gives a DOM widget its height minus margins, so a wrong
    height leaves the element in the page but a few pixels tall."""
    expect(info).to_be_visible()
    assert info.bounding_box()["height"] >= 16, info.bounding_box()


def screenshot(editor, path: Path) -> None:
    # The canvas draws a combo's new value on its next dirty frame, which a headless page may not have had.
    editor.js("app.canvas.setDirty(true, true);")
    editor.page.wait_for_timeout(200)
    editor.page.screenshot(path=str(path))


def row_info(editor, node_id: int, index: int):
    return editor.stack(node_id).locator(
        f'tr.loralab-stack-info-row[data-index="{index}"] [data-testid=loralab-lora-info]')


def requested_names(editor) -> list[str]:
    return [parse_qs(urlparse(url).query)["name"][0] for url in editor.info_requests]


def assert_no_pack_errors(editor) -> None:
    """No error from the pack's scripts, and no console error for its requests (the browser logs each 4xx)."""
    assert editor.pack_errors == []
    assert [e for e in editor.console_errors if "loralab" in e or "gone" in e] == []
    assert editor.failed_requests == []


def test_load_lora_shows_the_chosen_files_metadata(watched, artifacts):
    editor = watched
    node = editor.add_node("LoraLabLoadLora", (200, 200))
    editor.page.wait_for_timeout(300)  # the first draw places the widgets
    editor.choose_combo(node, "lora_name", KOHYA)
    assert editor.widget_value(node, "lora_name") == KOHYA
    info = load_lora_info(editor, node)
    expect(info).to_have_text(KOHYA_LINE, timeout=10_000)
    assert "trigger words: lrlring" in info.get_attribute("title")
    assert_line_shown(info)

    editor.choose_combo(node, "lora_name", LOHA)
    expect(info).to_have_text(LOHA_LINE, timeout=10_000)
    editor.choose_combo(node, "lora_name", BARE)
    expect(info).to_have_text(BARE_LINE, timeout=10_000)
    assert "the layer shapes look like SD 1.x" in info.get_attribute("title")
    screenshot(editor, artifacts / "lora_metadata_load_lora.png")

    editor.choose_combo(node, "lora_name", KOHYA)  # read before: shown from the cache, no new request
    expect(info).to_have_text(KOHYA_LINE)
    names = requested_names(editor)
    assert names.count(KOHYA) == 1 and names.count(LOHA) == 1, names

    # The line sits under the node's own widgets and is not saved: the workflow keeps its values.
    widgets = editor.js("return app.graph.getNodeById(arg).widgets.map(w => w.name);", node)
    assert widgets == ["lora_name", "strength_model", "strength_clip", "block_weights", "loralab_lora_info",
                       "loralab_block_sliders", "loralab_trigger_words"]
    workflow = editor.save_and_reload()
    saved = editor.saved_node(workflow, node)
    assert saved["widgets_values"] == [KOHYA, 1, 1, ""]  # block_weights empty: every block at 1
    expect(load_lora_info(editor, node)).to_have_text(KOHYA_LINE, timeout=10_000)
    assert_no_pack_errors(editor)


def test_stack_rows_show_each_files_metadata(watched, artifacts):
    editor = watched
    node = editor.add_node("LoraLabStackLoras", (200, 150))
    editor.add_rows(node, 4)
    for index, name in enumerate([KOHYA, LOHA, BARE, KOHYA]):
        editor.row(node, index).get_by_test_id("loralab-stack-lora").select_option(name)
    for index, text in enumerate([KOHYA_LINE, LOHA_LINE, BARE_LINE, KOHYA_LINE]):
        expect(row_info(editor, node, index)).to_have_text(text, timeout=10_000)
    assert [r["lora"] for r in editor.shown_rows(node)] == [KOHYA, LOHA, BARE, KOHYA]

    # Rows move with their lines; a row switched off keeps its line.
    editor.row(node, 0).get_by_test_id("loralab-stack-down").click()
    editor.row(node, 0).get_by_test_id("loralab-stack-on").uncheck()
    expect(row_info(editor, node, 0)).to_have_text(LOHA_LINE)
    expect(row_info(editor, node, 1)).to_have_text(KOHYA_LINE)
    box = editor.stack(node).bounding_box()
    last = row_info(editor, node, 3).bounding_box()
    assert last["y"] + last["height"] <= box["y"] + box["height"] + 1, "the last row's line must not be cut off"
    assert_line_shown(row_info(editor, node, 3))
    screenshot(editor, artifacts / "lora_metadata_stack.png")

    names = requested_names(editor)
    assert sorted(set(names)) == sorted(names), f"one request per file name: {names}"
    assert_no_pack_errors(editor)


def test_missing_files_say_so_without_a_request_or_console_error(watched, artifacts):
    editor = watched
    rows = json.dumps([{"lora": MISSING, "on": True, "strength_model": 1, "strength_clip": 1},
                       {"lora": KOHYA, "on": True, "strength_model": 1, "strength_clip": 1}])
    nodes = [
        {"id": 1, "type": "LoraLabStackLoras", "pos": [480, 150], "size": [420, 200], "flags": {}, "order": 0,
         "mode": 0, "properties": {}, "widgets_values": [rows]},
        {"id": 2, "type": "LoraLabLoadLora", "pos": [60, 150], "size": [315, 130], "flags": {}, "order": 1,
         "mode": 0, "properties": {}, "widgets_values": [MISSING, 1, 1],
         "inputs": [{"name": "model", "type": "MODEL", "link": None}, {"name": "clip", "type": "CLIP", "link": None}]},
        {"id": 3, "type": "LoraLabLoadLora", "pos": [60, 400], "size": [315, 130], "flags": {}, "order": 2,
         "mode": 0, "properties": {}, "widgets_values": [KOHYA, 1, 1],
         "inputs": [{"name": "model", "type": "MODEL", "link": None}, {"name": "clip", "type": "CLIP", "link": None}]},
    ]
    editor.load_workflow_text(json.dumps({"last_node_id": 3, "last_link_id": 0, "nodes": nodes, "links": [],
                                          "groups": [], "config": {}, "extra": {}, "version": 0.4}))
    editor.stack(1).wait_for()
    expect(row_info(editor, 1, 0)).to_have_text(MISSING_LINE, timeout=10_000)
    expect(row_info(editor, 1, 1)).to_have_text(KOHYA_LINE, timeout=10_000)
    expect(load_lora_info(editor, 2)).to_have_text(MISSING_LINE, timeout=10_000)
    expect(load_lora_info(editor, 3)).to_have_text(KOHYA_LINE, timeout=10_000)
    assert_line_shown(load_lora_info(editor, 2))
    screenshot(editor, artifacts / "lora_metadata_missing.png")

    assert MISSING not in requested_names(editor), "a file the host does not list is not asked for"
    # The browser logs every 404 as a console error; a missing file must not cause one.
    assert_no_pack_errors(editor)


def test_an_unreadable_file_says_why_without_a_console_error(watched, artifacts):
    """Bug (issue 10): the host answered 422 for a file it could not read, and the browser logged a console
    error for every such file in the folder. The route now answers 200 saying the file is unreadable and why."""
    editor = watched
    node = editor.add_node("LoraLabLoadLora", (60, 150))
    editor.page.wait_for_timeout(300)  # the first draw places the widgets
    assert editor.widget_value(node, "lora_name") == TRUNCATED  # the first file of the folder: read at once
    info = load_lora_info(editor, node)
    expect(info).to_have_text(TRUNCATED_LINE, timeout=10_000)
    assert f"{TRUNCATED}\n'{TRUNCATED}' is truncated" in info.get_attribute("title")
    assert str(editor.host.loras_dir) not in info.get_attribute("title"), "the host's folders stay private"
    assert_line_shown(info)

    # Its block sliders say the same (GET /loralab/loras/blocks).
    sliders = editor.page.locator(f'.loralab-blocks[data-node-id="{node}"]')
    sliders.get_by_test_id("loralab-blocks-toggle").click()
    expect(sliders.get_by_test_id("loralab-blocks-status")).to_contain_text("is truncated", timeout=10_000)
    assert sliders.get_by_test_id("loralab-block-slider").count() == 0

    stack = editor.add_node("LoraLabStackLoras", (480, 150))
    editor.add_rows(stack, 1)
    editor.row(stack, 0).get_by_test_id("loralab-stack-lora").select_option(TRUNCATED)
    expect(row_info(editor, stack, 0)).to_have_text(TRUNCATED_LINE, timeout=10_000)
    assert editor.row(stack, 0).get_attribute("data-missing") is None, "a listed file is not missing"
    screenshot(editor, artifacts / "lora_metadata_unreadable.png")

    # Choosing a file again asks again (it may have been replaced since); nothing else was asked for.
    assert set(requested_names(editor)) == {TRUNCATED}, requested_names(editor)
    assert_no_pack_errors(editor)
