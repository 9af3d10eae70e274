"""Headless runs (`python <pack> train workflow.json`): a workflow saved by the editor becomes the API graph the
editor queues, and run without server or editor it writes the LoRA (and resume state) the editor's run writes."""
from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from cli.workflow import ui_to_api
from scripts.comfy_host import DEFAULT_COMFY_DIR, REPO, TINY_CHECKPOINT_NAME, free_port
from scripts.training_graphs import option_defaults
from trainer.data.video_sampling import DEFAULT_VIDEO_FRAMES
from trainer.training.data_options import DataOptions

pytestmark = pytest.mark.host

WORKFLOW = REPO / "workflows" / "train_lora_from_folder.json"
SHIPPED_CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
PROMPTS = "mytrigger, a photo of a cat\nmytrigger, a city street at night"
OPTIONAL_OPTIONS = ("train_text_encoder", "text_encoder_lr", "keep_last", "optimizer_class", "optimizer_args",
                    "optimizer_fallback", "lr_cycles", "lr_power", "decay_steps", "min_lr_ratio", "timestep_sampling",
                    "min_timestep", "max_timestep", "sigmoid_scale", "logit_mean", "logit_std", "discrete_flow_shift",
                    "ema", "ema_decay", "ema_every", "ema_for_samples", "ema_for_final", "eval_images",
                    "workers")


def small_training(name: str) -> dict:
    """The shipped workflow switched to the tiny checkpoint, the test dataset and 3 fp32 steps, by editing its
    widget values where the editor keeps them (the order of the nodes' widgets; `fixed` follows a seed)."""
    workflow = json.loads(WORKFLOW.read_text())
    nodes = {n["id"]: n for n in workflow["nodes"]}
    nodes[1]["widgets_values"] = [TINY_CHECKPOINT_NAME]
    nodes[2]["widgets_values"] = ["rings", "lrlring", 64, False, 0, 0, "fixed"]
    options = nodes[3]["widgets_values"]  # targets ... sample_scheduler (20 values, as the file was saved)
    options[10], options[14] = "no", 0  # mixed_precision, sample_every
    nodes[4]["widgets_values"] = [name, 3, 0.001, 4, 4, 1, 5, "fixed"]  # name steps lr rank alpha batch seed
    return workflow


def expected_graph(name: str) -> dict:
    """Hand-written: what the editor queues for small_training(name) (all five nodes; the Note is not a node)."""
    defaults = option_defaults()
    options = {"targets": "attention", "dropout": 0, "schedule": "constant", "warmup_steps": 0,
               "grad_accumulation": 1, "max_grad_norm": 1, "min_snr_gamma": 0, "noise_offset": 0,
               "optimizer": "adamw", "weight_decay": 0.01, "mixed_precision": "no", "gradient_checkpointing": False,
               "checkpoint_every": 100, "resume": False, "sample_every": 0, "sample_prompts": PROMPTS,
               "sample_steps": 20, "sample_cfg": 7, "sample_sampler": "euler", "sample_scheduler": "simple",
               **{k: defaults[k] for k in OPTIONAL_OPTIONS}}  # not in the saved file: the widgets' defaults
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": TINY_CHECKPOINT_NAME},
              "_meta": {"title": "Load Checkpoint"}},
        "2": {"class_type": "LoraLabDataset", "_meta": {"title": "LoRA Dataset (LoRA Lab)"},
              "inputs": {"folder": "rings", "trigger_word": "lrlring", "resolution": 64, "flip": False,
                         "validation_share": 0, "seed": 0,
                         **{f.name: f.default for f in dataclasses.fields(DataOptions)},  # not in the file
                         "video_frames": DEFAULT_VIDEO_FRAMES, "frame_stride": 1}},  # nor these
        "3": {"class_type": "LoraLabTrainOptions", "inputs": options,
              "_meta": {"title": "Train LoRA Options (LoRA Lab)"}},
        "4": {"class_type": "LoraLabTrainLora", "_meta": {"title": "Train LoRA (LoRA Lab)"},
              "inputs": {"model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "dataset": ["2", 0],
                         "options": ["3", 0], "name": name, "steps": 3, "learning_rate": 0.001, "rank": 4,
                         "alpha": 4, "batch_size": 1, "seed": 5}},
        "5": {"class_type": "LoraLabPreviewSamples", "_meta": {"title": "Preview Samples (LoRA Lab)"},
              "inputs": {"model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "prompts": PROMPTS,
                  "negative": "blurry, low quality, watermark, text",
                  "compare": "checkpoints of a run", "lora_name": "(none)", "strengths": "0, 0.5, 1",
                  "run_name": ["4", 2], "seed": 0, "steps": 20, "cfg": 7, "sampler_name": "euler",
                  "scheduler": "simple", "width": 512, "height": 512}},
    }


def object_info_converter(host):
    info = host.get_json("/object_info")
    return (lambda class_type: info[class_type]["input"] if class_type in info else None,
            {k: v["display_name"] for k, v in info.items()})


def headless(host, *args: str, workflow: dict | None = None, tmp_path: Path | None = None,
             timeout: float = 600) -> subprocess.CompletedProcess:
    """`python <pack> <args>` against the test host's folders (not its server), the workflow written first."""
    if workflow is not None:
        path = tmp_path / "workflow.json"
        path.write_text(json.dumps(workflow))
        args = (args[0], str(path), *args[1:])
    command = [sys.executable, str(REPO), *args, "--comfy", str(DEFAULT_COMFY_DIR), "--cpu",
               "--base-directory", str(host.base_dir), "--disable-api-nodes"]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=tmp_path)


def test_ui_workflow_converts_to_the_graph_the_editor_queues(host):
    input_types, names = object_info_converter(host)
    assert ui_to_api(small_training("x"), input_types, names) == expected_graph("x")


def test_reroutes_primitives_muted_and_bypassed_nodes_convert_as_in_the_editor(host):
    """Train LoRA's MODEL through a Reroute, its steps from a PrimitiveNode (the widget keeps the value), Preview
    Samples' MODEL through a bypassed LoraLoader (passes its MODEL input on), a muted node left out."""
    workflow = small_training("x")
    nodes = {n["id"]: n for n in workflow["nodes"]}
    links = workflow["links"]
    train, preview = nodes[4], nodes[5]
    workflow["nodes"] += [
        {"id": 10, "type": "Reroute", "mode": 0, "inputs": [{"name": "", "type": "*", "link": 20}],
         "outputs": [{"name": "", "type": "MODEL", "links": [21]}]},
        {"id": 11, "type": "PrimitiveNode", "mode": 0, "widgets_values": [3, "fixed"],
         "outputs": [{"name": "INT", "type": "INT", "links": [22], "widget": {"name": "steps"}}]},
        {"id": 12, "type": "LoraLoader", "mode": 4, "widgets_values": ["gone.safetensors", 1, 1],
         "inputs": [{"name": "model", "type": "MODEL", "link": 23}, {"name": "clip", "type": "CLIP", "link": None}],
         "outputs": [{"name": "MODEL", "type": "MODEL", "links": [24]}, {"name": "CLIP", "type": "CLIP"}]},
        {"id": 13, "type": "LoraLabDataset", "mode": 2, "widgets_values": ["muted", "", 512, False, 0, 0, "fixed"]},
    ]
    links[:] = [link for link in links if link[0] not in (1, 6)]  # ckpt MODEL -> Train / Preview, rerouted below
    links += [[20, 1, 0, 10, 0, "MODEL"], [21, 10, 0, 4, 0, "MODEL"], [22, 11, 0, 4, 6, "INT"],
              [23, 1, 0, 12, 0, "MODEL"], [24, 12, 0, 5, 0, "MODEL"]]
    train["inputs"][0]["link"], preview["inputs"][0]["link"] = 21, 24
    next(i for i in train["inputs"] if i["name"] == "steps")["link"] = 22
    input_types, names = object_info_converter(host)
    assert ui_to_api(workflow, input_types, names) == expected_graph("x")


def job_while_running(port: int, name: str, process: subprocess.Popen, timeout: float = 300) -> dict:
    """The headless run's job as its --serve routes report it, polled until it appears."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/loralab/jobs", timeout=5) as answer:
                jobs = json.loads(answer.read())
            job = next((j for j in jobs if j["name"] == name), None)
            if job is not None:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/loralab/jobs/{job['id']}",
                                            timeout=5) as answer:
                    return json.loads(answer.read())
        except (urllib.error.URLError, ConnectionError):
            pass  # not serving yet
        time.sleep(0.2)
    raise AssertionError(f"no job {name} on the --serve routes; the run ended with {process.poll()}")


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


def test_headless_run_of_the_editors_workflow_writes_the_editors_lora_and_resume_state(host, rings, tmp_path):
    """The same run queued in the editor (the API graph it queues) and run headless from the saved UI workflow,
    with --serve: the LoRA and the resume state are equal (fp32 tolerance), with the same settings, in the same
    loras folder layout, and the status routes follow the headless job."""
    editor_graph = {k: v for k, v in expected_graph("hl_editor").items() if k != "5"}  # Train LoRA and its inputs
    host.run(editor_graph)

    workflow = tmp_path / "workflow.json"
    workflow.write_text(json.dumps(small_training("hl_headless")))
    port = free_port()
    command = [sys.executable, str(REPO), "train", str(workflow), "--serve", str(port), "--comfy",
               str(DEFAULT_COMFY_DIR), "--cpu", "--base-directory", str(host.base_dir), "--disable-api-nodes"]
    log = tmp_path / "headless.log"
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
        try:
            job = job_while_running(port, "hl_headless", process)
            assert process.wait(timeout=600) == 0, log.read_text()[-4000:]
        finally:
            if process.poll() is None:
                process.kill()
    text = log.read_text()
    assert job["node_id"] == "4" and job["total"] == 3
    assert "3/3" in text and "training hl_headless" in text, "the progress bar reached the last step"
    assert "saved hl_headless.safetensors after 3 steps" in text

    loras = host.loras_dir
    for suffix in (".safetensors", ".loralab-resume"):
        editor, headless_file = loras / f"hl_editor{suffix}", loras / f"hl_headless{suffix}"
        assert_same_tensors(load_file(str(editor)), load_file(str(headless_file)))
        settings = {k: v for k, v in metadata(editor).items() if k.startswith("loralab.")
                    and k != "loralab.state.smoothed_loss"}
        assert settings and settings == {k: v for k, v in metadata(headless_file).items() if k in settings}


@pytest.fixture()
def api_graph() -> dict:
    return {k: v for k, v in expected_graph("hl_errors").items() if k != "5"}


def test_missing_model_file_names_the_loader_node_the_file_and_what_the_folder_has(host, tmp_path):
    workflow = small_training("hl_missing")
    workflow["nodes"][0]["widgets_values"] = [SHIPPED_CHECKPOINT]
    result = headless(host, "train", workflow=workflow, tmp_path=tmp_path)
    assert result.returncode == 1
    error = result.stderr[result.stderr.index("error:"):]
    assert "#1 'Load Checkpoint' (CheckpointLoaderSimple)" in error and f"'{SHIPPED_CHECKPOINT}'" in error
    assert "checkpoints folder" in error and str(host.base_dir / "models" / "checkpoints") in error
    assert TINY_CHECKPOINT_NAME in error, "lists what the folder has"


def test_a_node_type_the_host_does_not_know_is_named(host, tmp_path):
    workflow = small_training("hl_unknown")
    workflow["nodes"].append({"id": 30, "type": "SomeOtherPackNode", "title": "Upscale it", "mode": 0,
                              "widgets_values": []})
    result = headless(host, "train", workflow=workflow, tmp_path=tmp_path)
    assert result.returncode == 1
    assert "#30 'Upscale it' (SomeOtherPackNode)" in result.stderr and "custom_nodes" in result.stderr


def test_no_train_lora_node_and_two_without_node_are_refused_before_loading(host, api_graph, tmp_path):
    none = {k: v for k, v in api_graph.items() if k != "4"}
    result = headless(host, "train", workflow=none, tmp_path=tmp_path)
    assert result.returncode == 1 and "no Train LoRA node" in result.stderr
    assert "Total VRAM" not in result.stderr, "refused before the host was imported"

    two = {**api_graph, "9": copy.deepcopy(api_graph["4"])}
    two["9"]["_meta"]["title"] = "Second run"
    result = headless(host, "train", workflow=two, tmp_path=tmp_path)
    assert result.returncode == 1
    assert "2 Train LoRA nodes" in result.stderr and "#9 'Second run'" in result.stderr
    assert "--node" in result.stderr

    result = headless(host, "train", "--node", "1", workflow=two, tmp_path=tmp_path)
    assert result.returncode == 1 and "is not a Train LoRA node" in result.stderr
