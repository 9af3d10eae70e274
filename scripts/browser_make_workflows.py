"""Builds LoRA Lab's example workflows (workflows/*.json + same-name .jpg thumbnails) inside the host's real
graph editor, so every widget order and link is exactly what the frontend itself serialises.

    .venv/bin/python scripts/browser_make_workflows.py [--out workflows]

Starts a throwaway ComfyUI with the pack linked in, opens the editor in headless Chromium, adds the nodes
with LiteGraph, sets widgets by name, connects them, fits the view, saves `app.graph.serialize()` and a
screenshot of the canvas (resized to 512 px wide) as the template's thumbnail.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from scripts.comfy_host import ComfyHost, ensure_tiny_checkpoint, prepare_base_dir  # noqa: E402 - after the sys.path line above

CHECKPOINT = "v1-5-pruned-emaonly.safetensors"  # what most users have; change it in the workflow
TRIGGER = "mytrigger"
NEGATIVE = "blurry, low quality, watermark, text"
THUMB_WIDTH = 512
FIXED = {"control_after_generate": "fixed"}  # training seeds stay put between queues

TRAIN_NOTE = (
    "Train a LoRA from a folder of images\n\n"
    "Change first:\n"
    "1. Load Checkpoint: your SD 1.5 / SDXL checkpoint.\n"
    "2. LoRA Dataset > folder: a folder in ComfyUI/input (or an absolute path) with images and same-name .txt "
    "captions. trigger_word is put in front of every caption.\n"
    "3. Train LoRA > name: the LoRA file name (saved to models/loras). steps: ~100 per image is a good start.\n"
    "4. Train LoRA Options: sample_every renders live samples on the node's dashboard; checkpoint_every "
    "saves <name>-stepN files that Preview Samples compares side by side.\n\n"
    "Queue it; Cancel or 'Stop & save' keeps the work done so far (continue with the resume workflow).")
RESUME_NOTE = (
    "Continue a stopped (or finished) training run\n\n"
    "Change first:\n"
    "1. Train LoRA > name: exactly the name of the run to continue (its <name>.loralab-resume state in "
    "models/loras is read).\n"
    "2. Keep checkpoint, dataset, rank, alpha and Train LoRA Options targets/dropout as in that run.\n"
    "3. steps: the new total (at least the step the run reached), e.g. raise 500 to 800 to train longer.\n\n"
    "Train LoRA Options > resume is on: it continues from the saved step instead of starting over.")
STACK_NOTE = (
    "Generate with several LoRAs\n\n"
    "Change first:\n"
    "1. Load Checkpoint: your checkpoint.\n"
    "2. Stack LoRAs: pick your LoRA files in the table (+ adds a row; the switch turns a row off; "
    "model/clip strengths per row).\n"
    "3. Concatenate > string_b: your prompt. The enabled LoRAs' trigger words are put in front of it.\n"
    "4. KSampler steps/seed, Empty Latent Image size.")
COMPARE_NOTE = (
    "Compare a LoRA at several strengths\n\n"
    "Change first:\n"
    "1. Load Checkpoint: the checkpoint the LoRA was trained on.\n"
    "2. Preview Samples > lora_name: your LoRA; strengths: one grid column each (e.g. 0, 0.5, 1).\n"
    "3. prompts: one per line, one grid row each (include the trigger word).\n\n"
    "Every tile uses the same seed, so only the LoRA strength differs. Set compare to 'checkpoints of a run' "
    "and run_name to a Train LoRA name to compare its saved checkpoints instead.")


def _ckpt(pos=(40, 120)):
    return {"key": "ckpt", "type": "CheckpointLoaderSimple", "pos": list(pos), "widgets": {"ckpt_name": CHECKPOINT}}


def _note(text, pos, size=(400, 330)):
    return {"key": "note", "type": "Note", "pos": list(pos), "size": list(size), "widgets": {0: text}}


def _training(resume: bool) -> dict:
    nodes = [
        _ckpt((40, 110)),
        {"key": "data", "type": "LoraLabDataset", "pos": [40, 330],
         "widgets": {"folder": "lora_dataset", "trigger_word": TRIGGER, "resolution": 512, **FIXED}},
        {"key": "opts", "type": "LoraLabTrainOptions", "pos": [40, 600],
         "widgets": {"checkpoint_every": 100, "sample_every": 100, "resume": resume,
                     "sample_prompts": f"{TRIGGER}, a photo of a cat\n{TRIGGER}, a city street at night",
                     "sample_steps": 20}},
        {"key": "train", "type": "LoraLabTrainLora", "pos": [500, 110],
         "widgets": {"name": "my_lora", "steps": 800 if resume else 500, "learning_rate": 0.0001, "rank": 16,
                     "alpha": 16.0, **FIXED}},
        {"key": "preview", "type": "LoraLabPreviewSamples", "pos": [960, 110],
         "widgets": {"prompts": f"{TRIGGER}, a photo of a cat\n{TRIGGER}, a city street at night",
                     "negative": NEGATIVE, "compare": "checkpoints of a run", "run_name": "my_lora", "steps": 20,
                     **FIXED}},
        _note(RESUME_NOTE if resume else TRAIN_NOTE, (960, 620), (420, 360)),
    ]
    links = [("ckpt", "MODEL", "train", "model"), ("ckpt", "CLIP", "train", "clip"), ("ckpt", "VAE", "train", "vae"),
             ("data", "dataset", "train", "dataset"), ("opts", "options", "train", "options"),
             ("ckpt", "MODEL", "preview", "model"), ("ckpt", "CLIP", "preview", "clip"),
             ("ckpt", "VAE", "preview", "vae"),
             # the run's name: Preview Samples runs after training and compares its checkpoints
             ("train", "lora_name", "preview", "run_name")]
    return {"nodes": nodes, "links": links}


def _stack() -> dict:
    rows = [{"lora": "my_style.safetensors", "on": True, "strength_model": 0.8, "strength_clip": 0.8},
            {"lora": "my_character.safetensors", "on": True, "strength_model": 1.0, "strength_clip": 1.0}]
    nodes = [
        _ckpt((40, 130)),
        {"key": "stack", "type": "LoraLabStackLoras", "pos": [420, 130], "widgets": {"loras": json.dumps(rows)}},
        {"key": "concat", "type": "StringConcatenate", "pos": [900, 40], "title": "Prompt (after trigger words)",
         "widgets": {"string_b": "a portrait photo in a garden, soft light", "delimiter": ", "}},
        {"key": "pos", "type": "CLIPTextEncode", "pos": [1260, 40], "title": "Positive"},
        {"key": "neg", "type": "CLIPTextEncode", "pos": [1260, 300], "title": "Negative",
         "widgets": {"text": NEGATIVE}},
        {"key": "latent", "type": "EmptyLatentImage", "pos": [1260, 540]},
        {"key": "ks", "type": "KSampler", "pos": [1680, 40],
         "widgets": {"seed": 42, **FIXED, "steps": 20, "cfg": 7.0}},
        {"key": "decode", "type": "VAEDecode", "pos": [2040, 40]},
        {"key": "save", "type": "SaveImage", "pos": [2040, 160], "widgets": {"filename_prefix": "loralab/stack"}},
        _note(STACK_NOTE, (40, 420)),
    ]
    links = [("ckpt", "MODEL", "stack", "model"), ("ckpt", "CLIP", "stack", "clip"),
             ("stack", "trigger_words", "concat", "string_a"), ("concat", 0, "pos", "text"),
             ("stack", "CLIP", "pos", "clip"), ("stack", "CLIP", "neg", "clip"),
             ("stack", "MODEL", "ks", "model"), ("pos", 0, "ks", "positive"), ("neg", 0, "ks", "negative"),
             ("latent", 0, "ks", "latent_image"), ("ks", 0, "decode", "samples"), ("ckpt", "VAE", "decode", "vae"),
             ("decode", 0, "save", "images")]
    return {"nodes": nodes, "links": links}


def _compare() -> dict:
    nodes = [
        _ckpt((40, 130)),
        {"key": "preview", "type": "LoraLabPreviewSamples", "pos": [440, 130],
         "widgets": {"prompts": f"{TRIGGER}, a photo of a cat\n{TRIGGER}, a city street at night",
                     "negative": NEGATIVE, "compare": "lora strengths", "lora_name": "my_lora.safetensors",
                     "strengths": "0, 0.5, 1", "seed": 42, "steps": 20, **FIXED}},
        _note(COMPARE_NOTE, (40, 400), (360, 360)),
    ]
    links = [("ckpt", "MODEL", "preview", "model"), ("ckpt", "CLIP", "preview", "clip"),
             ("ckpt", "VAE", "preview", "vae")]
    return {"nodes": nodes, "links": links}


WORKFLOWS = {
    "train_lora_from_folder": lambda: _training(False),
    "stack_loras_txt2img": _stack,
    "compare_lora_strengths": _compare,
    "resume_stopped_run": lambda: _training(True),
}

BUILD_JS = """
const app = window.comfyAPI.app.app, LiteGraph = window.LiteGraph;
app.graph.clear();
const made = {};
for (const s of spec.nodes) {
  const n = LiteGraph.createNode(s.type);
  if (!n) throw new Error(`unknown node type ${s.type}`);
  n.pos = s.pos;
  if (s.title) n.title = s.title;
  app.graph.add(n);
  for (const [name, value] of Object.entries(s.widgets || {})) {
    const w = /^\\d+$/.test(name) ? n.widgets[Number(name)] : n.widgets?.find((w) => w.name === name);
    if (!w) throw new Error(`${s.type} has no widget ${name}`);
    w.value = value;
  }
  n.loralabStack?.sync();
  if (s.size) n.setSize(s.size);
  made[s.key] = n;
}
const slot = (list, key, finder) => typeof key === 'number' ? key : finder(key);
for (const [from, out, to, inp] of spec.links) {
  const a = made[from], b = made[to];
  const o = slot(a.outputs, out, (k) => a.findOutputSlot(k));
  const i = slot(b.inputs, inp, (k) => b.findInputSlot(k));
  if (o < 0 || i < 0) throw new Error(`no slot ${from}.${out} -> ${to}.${inp}`);
  if (!a.connect(o, b, i)) throw new Error(`could not connect ${from}.${out} -> ${to}.${inp}`);
}
"""

FIT_JS = """() => {
const app = window.comfyAPI.app.app, c = app.canvas;
let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
for (const n of app.graph._nodes) {
  x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - 36);
  x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
}
const r = c.canvas.getBoundingClientRect();
const area = {x: 70, y: 135, width: r.width - 90, height: r.height - 155};  // clear of menus and tabs
const scale = Math.min(area.width / (x1 - x0), area.height / (y1 - y0), 1);
c.ds.scale = scale;
c.ds.offset[0] = area.x / scale - x0 + (area.width / scale - (x1 - x0)) / 2;
c.ds.offset[1] = area.y / scale - y0;
c.setDirty(true, true);
const m = 12;
return {x: r.x + (x0 + c.ds.offset[0]) * scale - m, y: r.y + (y0 + c.ds.offset[1]) * scale - m,
        width: (x1 - x0) * scale + 2 * m, height: (y1 - y0) * scale + 2 * m};
}"""


def build(editor, name: str) -> tuple[str, bytes]:
    """Builds one workflow in the open editor; returns its JSON text and a JPEG thumbnail."""
    from PIL import Image

    spec = WORKFLOWS[name]()
    editor.page.evaluate(f"(spec) => {{ {BUILD_JS} }}", spec)
    rect = editor.page.evaluate(FIT_JS)
    editor.page.wait_for_timeout(800)  # DOM widgets follow the canvas on the next frames
    png = editor.page.screenshot(clip=rect)
    text = editor.page.evaluate("() => JSON.stringify(window.comfyAPI.app.app.graph.serialize())")
    image = Image.open(io.BytesIO(png)).convert("RGB")
    image = image.resize((THUMB_WIDTH, round(image.height * THUMB_WIDTH / image.width)), Image.LANCZOS)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85, optimize=True)
    return json.dumps(json.loads(text), indent=2) + "\n", out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "workflows")
    parser.add_argument("--only", nargs="*", choices=sorted(WORKFLOWS), help="build only these")
    args = parser.parse_args(argv)

    from playwright.sync_api import sync_playwright

    from scripts.editor import CHROMIUM, CHROMIUM_ARGS, Editor

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="loralab-workflows-") as tmp:
        host = ComfyHost(prepare_base_dir(Path(tmp), ensure_tiny_checkpoint()))
        host.start()
        try:
            host.post_json("/settings/Comfy.TutorialCompleted", True)  # no Templates dialog over the canvas
            host.post_json("/settings/Comfy.Minimap.Visible", False)  # nor the minimap in the thumbnails
            with sync_playwright() as pw:
                chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                editor = Editor.open(chromium, host)
                for name in args.only or WORKFLOWS:
                    text, jpeg = build(editor, name)
                    (args.out / f"{name}.json").write_text(text)
                    (args.out / f"{name}.jpg").write_bytes(jpeg)
                    print(f"wrote {name}.json and {name}.jpg")
                assert editor.pack_errors == [], editor.pack_errors
                chromium.close()
        finally:
            host.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
