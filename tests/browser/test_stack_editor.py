"""The Stack LoRAs table in the host's real graph editor: edit, save, reload and run, as a user would."""
from __future__ import annotations

import json
import re
import shutil
import time

from playwright.sync_api import expect

from scripts.comfy_host import TINY_CHECKPOINT_NAME
from scripts.editor import APP, PACK_URL

A, B, C = "loralab_a.safetensors", "loralab_b.safetensors", "loralab_c.safetensors"


def test_pack_scripts_load_without_errors(editor):
    names = editor.js("return app.extensions.map(e => e.name).filter(n => n.startsWith('loralab.'));")
    assert sorted(names) == ["loralab.BlockSliders", "loralab.LoraMetadata", "loralab.StackLoras",
                             "loralab.ToolChart", "loralab.TrainDashboard", "loralab.TriggerWords"]
    assert any(url.endswith("/stack_loras.js") for url in editor.pack_scripts), editor.pack_scripts
    assert any(url.endswith("/lib/stack_rows.js") for url in editor.pack_scripts), editor.pack_scripts
    assert not any(PACK_URL + "package.json" in url for url in editor.pack_scripts), "only .js is imported"
    editor.page.wait_for_timeout(500)  # late console errors from module evaluation
    assert editor.pack_errors == []


def test_nodes_are_in_the_node_library(editor):
    library = editor.js("""const t = LiteGraph.registered_node_types;
        return ['LoraLabStackLoras', 'LoraLabLoadLora'].map(k => t[k]
            && {category: t[k].category, title: t[k].title});""")
    assert library == [{"category": "LoRA Lab", "title": "Stack LoRAs (LoRA Lab)"},
                       {"category": "LoRA Lab", "title": "Load LoRA (LoRA Lab)"}]


def test_table_edits_write_the_rows_json(editor, artifacts):
    node = editor.add_node("LoraLabStackLoras", (200, 200))
    # The editor applies a widget's hidden flag to its DOM element when it next draws the node: wait for that draw.
    hidden = f"(id) => !{APP}.graph.getNodeById(id).widgets.find(w => w.name === 'loras').element.checkVisibility()"
    editor.page.wait_for_function(hidden, arg=node, timeout=10_000)

    editor.add_rows(node, 3)
    assert editor.shown_rows(node) == [{"lora": A, "on": True, "strength_model": 1, "strength_clip": 1}] * 3
    editor.row(node, 1).get_by_test_id("loralab-stack-lora").select_option(B)
    editor.row(node, 2).get_by_test_id("loralab-stack-lora").select_option(C)
    editor.row(node, 1).get_by_test_id("loralab-stack-remove").click()          # [A, C]
    editor.row(node, 0).get_by_test_id("loralab-stack-down").click()            # [C, A]
    editor.row(node, 1).get_by_test_id("loralab-stack-on").uncheck()            # A off
    editor.set_strength(node, 0, "model", "0.75")
    editor.set_strength(node, 0, "clip", "0.5")
    editor.set_strength(node, 1, "model", "-1.234")                             # rounded to 0.01
    editor.set_strength(node, 1, "clip", "250")                                 # clamped to 100

    expected = [{"lora": C, "on": True, "strength_model": 0.75, "strength_clip": 0.5},
                {"lora": A, "on": False, "strength_model": -1.23, "strength_clip": 100}]
    assert json.loads(editor.widget_value(node, "loras")) == expected
    assert editor.shown_rows(node) == expected
    assert editor.row(node, 0).get_by_test_id("loralab-stack-up").is_disabled()
    assert editor.row(node, 1).get_by_test_id("loralab-stack-down").is_disabled()
    editor.page.screenshot(path=str(artifacts / "stack_editor.png"))
    assert editor.pack_errors == []


def test_saved_workflow_reloads_with_rows_intact(editor, artifacts):
    node = editor.add_node("LoraLabStackLoras", (200, 200))
    editor.add_rows(node, 2)
    editor.row(node, 1).get_by_test_id("loralab-stack-lora").select_option(B)
    editor.row(node, 0).get_by_test_id("loralab-stack-on").uncheck()
    editor.set_strength(node, 1, "clip", "0.3")
    saved_text = editor.widget_value(node, "loras")

    workflow = editor.save_and_reload()
    saved = editor.saved_node(workflow, node)
    assert saved["widgets_values"] == [saved_text], "only the rows text is saved, not the table"

    editor.stack(node).wait_for()
    assert editor.page.locator(".loralab-stack:visible").count() == 1, "the old node's table must be gone"
    assert editor.widget_value(node, "loras") == saved_text
    assert editor.shown_rows(node) == [
        {"lora": A, "on": False, "strength_model": 1, "strength_clip": 1},
        {"lora": B, "on": True, "strength_model": 1, "strength_clip": 0.3}]
    editor.page.screenshot(path=str(artifacts / "stack_editor_reloaded.png"))
    assert editor.pack_errors == []


def test_undo_restores_the_rows(editor):
    node = editor.add_node("LoraLabStackLoras", (200, 200))
    editor.add_rows(node, 2)
    editor.row(node, 1).get_by_test_id("loralab-stack-lora").select_option(C)
    before = editor.widget_value(node, "loras")
    editor.row(node, 0).get_by_test_id("loralab-stack-remove").click()
    assert editor.rows(node).count() == 1

    editor.page.mouse.click(900, 700)  # empty canvas: undo is a canvas key, not a text-box key
    editor.page.keyboard.press("Control+z")
    editor.page.wait_for_function("(a) => document.querySelectorAll(`.loralab-stack[data-node-id=\"${a}\"] "
                                  "[data-testid=loralab-stack-row]`).length === 2", arg=node)
    assert editor.widget_value(node, "loras") == before
    assert [r["lora"] for r in editor.shown_rows(node)] == [A, C]


def test_table_works_in_the_new_node_renderer(editor, artifacts):
    """ "Nodes 2.0" draws nodes as Vue components; canvas-drawn widgets vanish there, DOM ones must not."""
    set_vue = ("async (on) => { "
               "await window.comfyAPI.app.app.extensionManager.setting.set('Comfy.VueNodes.Enabled', on); }")
    editor.page.evaluate(set_vue, True)
    try:
        node = editor.add_node("LoraLabStackLoras", (200, 200))
        editor.add_node("LoraLabLoadLora", (700, 200))
        editor.add_rows(node, 2)
        editor.row(node, 1).get_by_test_id("loralab-stack-on").uncheck()
        editor.set_strength(node, 0, "clip", "0.4")
        assert json.loads(editor.widget_value(node, "loras")) == [
            {"lora": A, "on": True, "strength_model": 1, "strength_clip": 0.4},
            {"lora": A, "on": False, "strength_model": 1, "strength_clip": 1}]
        assert editor.page.locator("textarea:visible").count() == 0, "the raw rows text must stay hidden"
        assert editor.page.get_by_test_id("loralab-trigger-words").count() == 2  # Stack and Load LoRA
        editor.page.screenshot(path=str(artifacts / "stack_editor_nodes2.png"))
    finally:
        editor.page.evaluate(set_vue, False)
    assert editor.pack_errors == []


def test_unreadable_rows_text_is_reported_not_overwritten(editor):
    # A workflow file as a user might hand-edit it: the node's rows text is cut short.
    node = {"id": 7, "type": "LoraLabStackLoras", "pos": [200, 200], "size": [420, 200], "flags": {}, "order": 0,
            "mode": 0, "properties": {}, "widgets_values": ['[{"lora": "x.safetensors"']}
    editor.load_workflow_text(json.dumps({"last_node_id": 7, "last_link_id": 0, "nodes": [node], "links": [],
                                          "groups": [], "config": {}, "extra": {}, "version": 0.4}))
    editor.stack(7).wait_for()
    assert editor.stack(7).get_by_test_id("loralab-stack-error").is_visible()
    assert editor.rows(7).count() == 0
    assert editor.widget_value(7, "loras") == '[{"lora": "x.safetensors"', "loading must not rewrite the text"
    editor.stack(7).get_by_test_id("loralab-preset-name").fill("unreadable")
    editor.stack(7).get_by_test_id("loralab-preset-save").click()
    expect(editor.stack(7).get_by_test_id("loralab-preset-status")).to_contain_text("cannot be read")
    assert "unreadable" not in [p["name"] for p in editor.host.get_json("/loralab/stack-presets")["presets"]]
    editor.add_rows(7, 1)
    assert json.loads(editor.widget_value(7, "loras")) == [{"lora": A, "on": True, "strength_model": 1,
                                                            "strength_clip": 1}]
    assert not editor.stack(7).get_by_test_id("loralab-stack-error").is_visible()


def wait_for_new_history(host, before: set[str], timeout: float = 300.0) -> tuple[str, dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for prompt_id, entry in host.get_json("/history").items():
            if prompt_id not in before and entry.get("status", {}).get("completed") is not None and (
                    entry["status"]["completed"] or entry["status"].get("status_str") == "error"):
                return prompt_id, entry
        time.sleep(0.5)
    raise AssertionError(f"no prompt finished within {timeout:.0f}s")


def test_queue_from_editor_runs_the_stack(editor, host, artifacts):
    ckpt = editor.add_node("CheckpointLoaderSimple", (80, 200))
    stack = editor.add_node("LoraLabStackLoras", (420, 200))
    preview = editor.add_node("PreviewAny", (900, 200))
    editor.js("""const g = app.graph, ck = g.getNodeById(arg.ckpt), st = g.getNodeById(arg.stack),
            pv = g.getNodeById(arg.preview);
        ck.widgets.find(w => w.name === 'ckpt_name').value = arg.name;
        ck.connect(0, st, st.findInputSlot('model'));
        ck.connect(1, st, st.findInputSlot('clip'));
        st.connect(st.findOutputSlot('trigger_words'), pv, 0);
        app.canvas.setDirty(true, true);""",
              {"ckpt": ckpt, "stack": stack, "preview": preview, "name": TINY_CHECKPOINT_NAME})
    editor.add_rows(stack, 2)
    editor.row(stack, 1).get_by_test_id("loralab-stack-lora").select_option(B)
    editor.set_strength(stack, 0, "model", "0.5")
    rows_text = editor.widget_value(stack, "loras")

    before = set(host.get_json("/history"))
    editor.page.evaluate("async () => { await window.comfyAPI.app.app.queuePrompt(0); }")
    prompt_id, entry = wait_for_new_history(host, before)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]

    sent = entry["prompt"][2][str(stack)]
    assert sent["class_type"] == "LoraLabStackLoras" and sent["inputs"]["loras"] == rows_text
    assert set(sent["inputs"]) == {"loras", "model", "clip"}, "the table itself must not be sent"
    words = entry["outputs"][str(stack)]["trigger_words"]
    assert words == ["loralab_a, loralab_b"], "each enabled row's modelspec.trigger_phrase, in row order"
    assert entry["outputs"][str(preview)]["text"] == words
    # The editor got the `executed` event and shows the same words under the table.
    shown = editor.stack(stack).get_by_test_id("loralab-trigger-words")
    expect(shown).to_contain_text(words[0], timeout=10_000)
    editor.page.screenshot(path=str(artifacts / "stack_editor_run.png"))
    assert editor.pack_errors == []


def test_presets_save_load_survive_a_reload_and_mark_missing_files(editor, host, artifacts):
    editor.page.on("dialog", lambda dialog: dialog.accept())  # "Replace the preset ...?"
    first, second = editor.add_node("LoraLabStackLoras", (100, 150)), editor.add_node("LoraLabStackLoras", (700, 150))
    editor.add_rows(first, 2)
    editor.row(first, 1).get_by_test_id("loralab-stack-lora").select_option(B)
    editor.row(first, 1).get_by_test_id("loralab-stack-on").uncheck()
    editor.set_strength(first, 0, "model", "0.6")
    expected = [{"lora": A, "on": True, "strength_model": 0.6, "strength_clip": 1},
                {"lora": B, "on": False, "strength_model": 1, "strength_clip": 1}]
    assert json.loads(editor.widget_value(first, "loras")) == expected
    editor.stack(first).get_by_test_id("loralab-preset-name").fill("browser set")
    editor.stack(first).get_by_test_id("loralab-preset-save").click()
    expect(editor.stack(first).get_by_test_id("loralab-preset-status")).to_have_text(
        'Saved preset "browser set" (2 rows).')

    def load(node: int, name: str) -> None:
        select = editor.stack(node).get_by_test_id("loralab-preset-select")
        select.focus()  # opening the menu lists the host's presets again
        expect(select.locator(f'option[value="{name}"]')).to_have_count(1)
        select.select_option(name)
        editor.stack(node).get_by_test_id("loralab-preset-load").click()
        expect(editor.stack(node).get_by_test_id("loralab-preset-status")).to_contain_text(f'Loaded preset "{name}"')

    load(second, "browser set")
    assert json.loads(editor.widget_value(second, "loras")) == expected
    assert editor.shown_rows(second) == expected
    assert editor.stack(second).locator("[data-missing]").count() == 0

    # A preset saved elsewhere names a file this host lacks: the row says so before anything is queued.
    gone = "elsewhere/gone.safetensors"
    rows = [{"lora": gone, "on": True, "strength_model": 1, "strength_clip": 1},
            {"lora": C, "on": True, "strength_model": 0.5, "strength_clip": 0.5}]
    status, body, _ = host.request("PUT", "/loralab/stack-presets/from%20elsewhere",
                                   json.dumps({"rows": rows}).encode(), {"Content-Type": "application/json"})
    assert status == 201, body
    load(second, "from elsewhere")
    expect(editor.stack(second).get_by_test_id("loralab-preset-status")).to_contain_text("1 missing")
    missing_row = editor.row(second, 0)
    expect(missing_row).to_have_attribute("data-missing", "true")
    expect(missing_row).to_have_class(re.compile(r"\bloralab-stack-row-missing\b"))
    expect(missing_row.get_by_test_id("loralab-stack-lora")).to_have_attribute("title", re.compile("not in the host's"))
    assert editor.row(second, 1).get_attribute("data-missing") is None
    assert editor.shown_rows(second)[0]["lora"] == gone, "the missing name is kept, not replaced"
    editor.page.screenshot(path=str(artifacts / "stack_presets.png"))

    # The file comes back: the mark clears when the pointer next comes over the node (names asked at most every 5 s).
    back = host.loras_dir / gone
    back.parent.mkdir()
    shutil.copyfile(host.loras_dir / A, back)
    try:
        editor.page.wait_for_timeout(5_100)
        editor.page.mouse.move(1300, 800)
        editor.stack(second).get_by_test_id("loralab-trigger-words").hover()
        expect(editor.row(second, 0)).not_to_have_attribute("data-missing", "true")
    finally:
        back.unlink()  # later tests expect the first listed LoRA to be A
        back.parent.rmdir()

    # The presets live on the host: a fresh page lists them and loads them into a new node.
    editor.page.reload()
    editor.page.wait_for_function("() => window.comfyAPI?.app?.app?.graph && window.comfyAPI.app.app.extensions"
                                  "?.some(e => e.name === 'loralab.StackLoras')", timeout=120_000)
    editor.dismiss_dialogs()
    editor.js("app.graph.clear();")
    third = editor.add_node("LoraLabStackLoras", (100, 150))
    load(third, "browser set")
    assert json.loads(editor.widget_value(third, "loras")) == expected

    # A shared workflow naming a missing file is marked the same way when it is opened.
    node = {"id": 9, "type": "LoraLabStackLoras", "pos": [700, 150], "size": [480, 300], "flags": {}, "order": 0,
            "mode": 0, "properties": {}, "widgets_values": [json.dumps(rows)]}
    editor.load_workflow_text(json.dumps({"last_node_id": 9, "last_link_id": 0, "nodes": [node], "links": [],
                                          "groups": [], "config": {}, "extra": {}, "version": 0.4}))
    expect(editor.row(9, 0)).to_have_attribute("data-missing", "true")
    assert editor.row(9, 1).get_attribute("data-missing") is None

    editor.stack(9).get_by_test_id("loralab-preset-select").select_option("browser set")
    editor.stack(9).get_by_test_id("loralab-preset-delete").click()
    expect(editor.stack(9).get_by_test_id("loralab-preset-status")).to_have_text('Deleted preset "browser set".')
    assert "browser set" not in [p["name"] for p in host.get_json("/loralab/stack-presets")["presets"]]
    assert editor.pack_errors == []
