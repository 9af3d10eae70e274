"""LoRA Lab's example workflows (workflows/*.json): listed by the host, opened from the editor's Templates
browser as a user would, switched to the tiny test checkpoint and small settings in the page, and queued."""
from __future__ import annotations

import io
import json
import time
import uuid
from pathlib import Path

import pytest
from PIL import Image

from scripts.comfy_host import PACK_NAME, TINY_CHECKPOINT_NAME
from scripts.editor import APP, Editor
from scripts.make_demo_dataset import make_demo_dataset

WORKFLOWS_DIR = Path(__file__).resolve().parents[2] / "workflows"
NAMES = ["train_lora_from_folder", "stack_loras_txt2img", "compare_lora_strengths", "resume_stopped_run"]
USER_CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
DATASET = "workflow_rings"
A, B = "loralab_a.safetensors", "loralab_b.safetensors"
# Small enough for a busy 2-core machine: every render is one prompt, 64 px, 2 steps at cfg 1 (no
# negative pass). Training: 4 steps, a checkpoint at step 3, live samples at step 0 and 4.
PROMPT = "mytrigger, a red ring"
TRAIN_SMALL = {"rank": 2, "alpha": 2, "learning_rate": 0.001}
OPTIONS_SMALL = {"sample_every": 4, "checkpoint_every": 3, "sample_steps": 2, "sample_cfg": 1.0,
                 "sample_prompts": PROMPT}
PREVIEW_SMALL = {"steps": 2, "cfg": 1.0, "width": 64, "height": 64, "prompts": PROMPT}

DIALOGS = ".p-dialog:visible, [role=dialog]:visible"


@pytest.fixture(scope="module")
def dataset(host) -> str:
    make_demo_dataset(host.input_dir / DATASET, count=3, size=64)
    return DATASET


# --- helpers -----------------------------------------------------------------------------------------
def open_from_template_browser(editor: Editor, name: str, screenshot: Path | None = None) -> None:
    """Templates dialog -> the pack's entry under Extensions -> the workflow's card, as a user clicks."""
    page = editor.page
    page.evaluate(f"async () => {{ await {APP}.extensionManager.command.execute('Comfy.BrowseTemplates'); }}")
    dialog = page.locator(DIALOGS).first
    dialog.wait_for(timeout=30_000)
    dialog.get_by_text(PACK_NAME, exact=True).first.click()
    card = dialog.get_by_test_id(f"template-workflow-{name}")
    card.wait_for(timeout=30_000)
    if screenshot:  # every example has a card with its thumbnail
        for other in NAMES:
            dialog.get_by_test_id(f"template-workflow-{other}").wait_for(timeout=30_000)
        card.scroll_into_view_if_needed()
        page.wait_for_function(  # the frontend shows the fetched .jpg through a blob: URL
            "(names) => names.every(n => [...document.querySelectorAll(`[data-testid=template-workflow-${n}] img`)]"
            ".some(i => i.complete && i.naturalWidth === 512))", arg=NAMES, timeout=30_000)
        page.screenshot(path=str(screenshot))
    card.click()
    page.wait_for_function(
        f"(n) => {APP}.graph._nodes.some(x => x.type === 'Note') && "
        f"{APP}.graph._nodes.length === n", arg=len(saved(name)["nodes"]), timeout=30_000)
    page.wait_for_timeout(1000)  # a missing-node or missing-model dialog would open now
    shown = page.locator(DIALOGS)
    assert shown.count() == 0, f"a dialog opened over the template: {shown.first.inner_text()[:500]}"


def saved(name: str) -> dict:
    return json.loads((WORKFLOWS_DIR / f"{name}.json").read_text())


def node_ids(editor: Editor, node_type: str) -> list[int]:
    return editor.js("return app.graph._nodes.filter(n => n.type === arg).map(n => n.id);", node_type)


def widget_values(editor: Editor, node_type: str) -> dict:
    return editor.js("const n = app.graph._nodes.find(n => n.type === arg);"
                     "return Object.fromEntries(n.widgets.map(w => [w.name, w.value]));", node_type)


def set_widgets(editor: Editor, node_type: str, values: dict) -> None:
    """Sets widgets by name on every node of a type, the way the editor does after a user edit."""
    editor.js("""const nodes = app.graph._nodes.filter(n => n.type === arg.type);
        if (!nodes.length) throw new Error(`no ${arg.type} in the graph`);
        for (const n of nodes) for (const [k, v] of Object.entries(arg.values)) {
          const w = n.widgets.find(w => w.name === k);
          if (!w) throw new Error(`${arg.type} has no widget ${k}`);
          w.value = v; w.callback?.(v, app.canvas, n);
        }
        app.canvas.setDirty(true, true);""", {"type": node_type, "values": values})


def queue_and_wait(editor: Editor, timeout: float = 900.0) -> dict:
    host = editor.host
    before = set(host.get_json("/history"))
    editor.page.evaluate(f"async () => {{ await {APP}.queuePrompt(0); }}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for prompt_id, entry in host.get_json("/history").items():
            status = entry.get("status", {})
            if prompt_id not in before and (status.get("completed") or status.get("status_str") == "error"):
                assert status.get("status_str") == "success", json.dumps(status)[:3000]
                return entry
        time.sleep(0.5)
    raise AssertionError(f"no prompt finished within {timeout:.0f}s\n{host.log_text()[-3000:]}")


def outputs_of(entry: dict, class_type: str) -> list[dict]:
    prompt = entry["prompt"][2]
    return [entry["outputs"][i] for i, node in prompt.items()
            if node["class_type"] == class_type and i in entry["outputs"]]


def grid_image(host, entry: dict, class_type: str) -> Image.Image:
    [out] = outputs_of(entry, class_type)
    [image] = out["images"]
    return Image.open(io.BytesIO(host.view(image)))


def use_tiny_training(editor: Editor, dataset: str, name: str, steps: int) -> None:
    set_widgets(editor, "CheckpointLoaderSimple", {"ckpt_name": TINY_CHECKPOINT_NAME})
    set_widgets(editor, "LoraLabDataset", {"folder": dataset, "resolution": 64})
    set_widgets(editor, "LoraLabTrainOptions", OPTIONS_SMALL)
    set_widgets(editor, "LoraLabTrainLora", {**TRAIN_SMALL, "name": name, "steps": steps})
    set_widgets(editor, "LoraLabPreviewSamples", PREVIEW_SMALL)


def wait_for_shown_image(editor: Editor, node_type: str) -> None:
    """The editor got the `executed` event and shows the node's output image, as the user sees it: loaded into the
    node's canvas images (frontend 1.28), or (1.49 and newer) as a loaded page image of the node's output file."""
    editor.page.wait_for_function(
        f"""(t) => {APP}.graph._nodes.filter(n => n.type === t).every(n => {{
            if (n.imgs?.length > 0) return n.imgs[0].complete;
            const files = ({APP}.nodeOutputs?.[n.id]?.images ?? [])
                .map(i => `filename=${{encodeURIComponent(i.filename)}}`);
            const shown = [...document.querySelectorAll("img")].filter(i => i.complete && i.naturalWidth > 0);
            return files.length > 0 && files.every(f => shown.some(i => i.src.includes(f)));
        }})""", arg=node_type, timeout=30_000)


def job_named(host, name: str) -> dict:
    jobs = [j for j in host.get_json("/api/loralab/jobs") if j["name"] == name]
    return host.get_json(f"/api/loralab/jobs/{jobs[-1]['id']}")


# --- tests -------------------------------------------------------------------------------------------
def test_templates_are_listed_and_served(host):
    assert sorted(host.get_json("/api/workflow_templates")[PACK_NAME]) == sorted(NAMES)
    assert sorted(p.stem for p in WORKFLOWS_DIR.glob("*.json")) == sorted(NAMES), "only the examples live there"
    known = host.get_json("/object_info")
    for name in NAMES:
        status, body, _ = host.request("GET", f"/api/workflow_templates/{PACK_NAME}/{name}.json")
        assert status == 200, name
        workflow = json.loads(body)
        assert {"nodes", "links", "last_node_id", "last_link_id", "version"} <= set(workflow), "UI format"
        types = {n["type"] for n in workflow["nodes"]}
        assert types - {"Note"} <= set(known), f"{name}: unknown node types {types - set(known)}"
        [note] = [n for n in workflow["nodes"] if n["type"] == "Note"]
        assert "Change first" in note["widgets_values"][0]
        [ckpt] = [n for n in workflow["nodes"] if n["type"] == "CheckpointLoaderSimple"]
        assert ckpt["widgets_values"] == [USER_CHECKPOINT], "ships with the name users have"
        status, body, _ = host.request("GET", f"/api/workflow_templates/{PACK_NAME}/{name}.jpg")
        assert status == 200, f"{name}.jpg"
        thumb = Image.open(io.BytesIO(body))
        assert thumb.format == "JPEG" and 256 <= thumb.width <= 768, (thumb.format, thumb.size)


def test_train_then_resume_from_templates(editor, host, dataset, artifacts):
    name = f"wf_{uuid.uuid4().hex[:8]}"

    open_from_template_browser(editor, "train_lora_from_folder", artifacts / "workflow_template_browser.png")
    options = widget_values(editor, "LoraLabTrainOptions")
    assert options["sample_every"] > 0 and options["resume"] is False, "samples on, resume off"
    use_tiny_training(editor, dataset, name, steps=4)
    entry = queue_and_wait(editor)
    [train] = outputs_of(entry, "LoraLabTrainLora")
    assert train["lora_name"] == [f"{name}.safetensors"]
    assert "after 4 steps" in train["text"][0]
    assert (host.loras_dir / f"{name}-step3.safetensors").exists(), "checkpoint_every writes step files"
    grid = grid_image(host, entry, "LoraLabPreviewSamples")  # a column per checkpoint and the final LoRA
    assert grid.width >= 2 * 64 and grid.height >= 64
    job = job_named(host, name)
    assert job["state"] == "done" and job["samples"], "sample_every > 0 renders live samples"
    wait_for_shown_image(editor, "LoraLabPreviewSamples")
    editor.page.screenshot(path=str(artifacts / "workflow_train_lora_from_folder.png"))

    open_from_template_browser(editor, "resume_stopped_run")
    assert widget_values(editor, "LoraLabTrainOptions")["resume"] is True
    use_tiny_training(editor, dataset, name, steps=6)  # the same run, two steps further
    entry = queue_and_wait(editor)
    [train] = outputs_of(entry, "LoraLabTrainLora")
    assert train["lora_name"] == [f"{name}.safetensors"]
    assert "after 6 steps" in train["text"][0]
    assert len(train["loss_history"]) == 6, "continued from step 4, not restarted"
    grid_image(host, entry, "LoraLabPreviewSamples")
    wait_for_shown_image(editor, "LoraLabPreviewSamples")
    editor.page.screenshot(path=str(artifacts / "workflow_resume_stopped_run.png"))
    assert editor.pack_errors == []


def test_stack_loras_txt2img_from_template(editor, host, artifacts):
    open_from_template_browser(editor, "stack_loras_txt2img")
    [stack] = node_ids(editor, "LoraLabStackLoras")
    assert editor.rows(stack).count() == 2
    # The shipped names are placeholders: pick installed LoRAs in the table, as a user would.
    editor.show_node(stack)
    editor.row(stack, 0).get_by_test_id("loralab-stack-lora").select_option(A)
    editor.row(stack, 1).get_by_test_id("loralab-stack-lora").select_option(B)
    assert [r["lora"] for r in json.loads(editor.widget_value(stack, "loras"))] == [A, B]
    set_widgets(editor, "CheckpointLoaderSimple", {"ckpt_name": TINY_CHECKPOINT_NAME})
    set_widgets(editor, "KSampler", {"steps": 2, "cfg": 1.0})
    set_widgets(editor, "EmptyLatentImage", {"width": 64, "height": 64})
    entry = queue_and_wait(editor)
    assert entry["outputs"][str(stack)]["trigger_words"] == ["loralab_a, loralab_b"]
    [concat] = [i for i, n in entry["prompt"][2].items() if n["class_type"] == "StringConcatenate"]
    assert entry["prompt"][2][concat]["inputs"]["string_a"] == [str(stack), 3], "trigger words lead the prompt"
    image = grid_image(host, entry, "SaveImage")
    assert image.size == (64, 64)
    wait_for_shown_image(editor, "SaveImage")
    editor.page.screenshot(path=str(artifacts / "workflow_stack_loras_txt2img.png"))
    assert editor.pack_errors == []


def test_compare_lora_strengths_from_template(editor, host, artifacts):
    open_from_template_browser(editor, "compare_lora_strengths")
    values = widget_values(editor, "LoraLabPreviewSamples")
    assert values["compare"] == "lora strengths" and values["strengths"] == "0, 0.5, 1"
    set_widgets(editor, "CheckpointLoaderSimple", {"ckpt_name": TINY_CHECKPOINT_NAME})
    set_widgets(editor, "LoraLabPreviewSamples", {**PREVIEW_SMALL, "lora_name": A})
    entry = queue_and_wait(editor)
    grid = grid_image(host, entry, "LoraLabPreviewSamples")
    assert grid.width >= 3 * 64 and grid.height >= 64, "a column per strength"
    wait_for_shown_image(editor, "LoraLabPreviewSamples")
    editor.page.screenshot(path=str(artifacts / "workflow_compare_lora_strengths.png"))
    assert editor.pack_errors == []
