"""Train LoRA in a real ComfyUI on the small model: learning, interop of the saved file, cancel and resume."""
from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest
import torch

from scripts.comfy_host import error_message
from scripts.graphs import Graph, checkpoint, out, render, saved_images
from scripts.training_graphs import TRIGGER, train_graph, wait_for_step
from trainer.safetensors_io import read_safetensors


def _native_loader_changes_the_image(host, lora: str, strength_model: float, extra=None) -> tuple[dict, str | None]:
    """Renders with the host's LoraLoader (CLIP strength 1) and without; asserts every key loaded and the image
    changed. `extra(graph, checkpoint_node)` may add nodes to the same prompt; returns the entry and its node."""
    mark = len(host.log_text())
    g = Graph()
    ckpt = checkpoint(g)
    native = g.add("LoraLoader", model=out(ckpt, 0), clip=out(ckpt, 1), lora_name=lora,
                   strength_model=strength_model, strength_clip=1.0)
    with_lora = render(g, out(native, 0), out(native, 1), out(ckpt, 2), f"{lora}_with")
    base = render(g, out(ckpt, 0), out(ckpt, 1), out(ckpt, 2), f"{lora}_without")
    extra_node = extra(g, ckpt) if extra is not None else None
    entry = host.run(g.nodes)
    assert "lora key not loaded" not in host.log_text()[mark:]
    assert not np.array_equal(saved_images(host, entry, with_lora)[0], saved_images(host, entry, base)[0])
    return entry, extra_node


def test_training_learns_and_saves_a_file_every_loader_reads(host, rings):
    g, train = train_graph("learned", steps=16, validation_share=0.25)
    entry = host.run(g.nodes, timeout=900)
    ui = entry["outputs"][train]
    start, end = ui["eval_loss"]
    assert end < 0.8 * start, f"loss at fixed noise did not fall clearly: {start} -> {end}"
    assert ui["validation_loss"][0] is not None
    assert len(ui["loss_history"]) == 16
    path = host.loras_dir / "learned.safetensors"
    tensors, metadata = read_safetensors(path)
    assert all(k.startswith("lora_unet_down_blocks_") or k.startswith(("lora_unet_mid_block", "lora_unet_up_blocks"))
               for k in tensors), sorted(tensors)[:5]
    assert metadata["ss_network_dim"] == "4" and metadata["modelspec.trigger_phrase"] == TRIGGER
    assert metadata["ss_base_model_version"] == "sd_v1" and metadata["ss_steps"] == "16"

    # The native loader reads every key and the image changes; Load LoRA reads the trigger word back.
    def read_trigger_word(g: Graph, ckpt: str) -> str:
        ours = g.add("LoraLabLoadLora", model=out(ckpt, 0), clip=out(ckpt, 1), lora_name="learned.safetensors",
                     strength_model=1.0, strength_clip=1.0)
        return g.add("PreviewAny", source=out(ours, 2))
    entry, words = _native_loader_changes_the_image(host, "learned.safetensors", 1.0, read_trigger_word)
    assert entry["outputs"][words]["text"] == [TRIGGER]


def test_diffusers_reads_the_trained_file(host, rings):
    diffusers = pytest.importorskip("diffusers")
    path = host.loras_dir / "learned.safetensors"
    if not path.exists():
        host.run(train_graph("learned", steps=16, validation_share=0.25)[0].nodes, timeout=900)
    state_dict, alphas = diffusers.StableDiffusionPipeline.lora_state_dict(str(path), return_alphas=True) \
        if "return_alphas" in diffusers.StableDiffusionPipeline.lora_state_dict.__code__.co_varnames \
        else (diffusers.StableDiffusionPipeline.lora_state_dict(str(path))[0], None)
    tensors, _ = read_safetensors(path)
    layers = {k.removesuffix(".lora_down.weight") for k in tensors if k.endswith(".lora_down.weight")}
    converted = {k for k in state_dict if k.endswith("lora_A.weight") or k.endswith("lora.down.weight")}
    assert len(converted) == len(layers) > 0
    assert all(k.startswith("unet.") for k in converted)


def test_text_encoder_lora_trains_and_every_loader_reads_it(host, rings):
    g, train = train_graph("with_te", steps=8, options={"train_text_encoder": True, "text_encoder_lr": 1e-3})
    entry = host.run(g.nodes, timeout=900)
    start, end = entry["outputs"][train]["eval_loss"]
    assert end < start, f"loss at fixed noise did not fall: {start} -> {end}"
    path = host.loras_dir / "with_te.safetensors"
    tensors, metadata = read_safetensors(path)
    te_ups = {k: v for k, v in tensors.items() if k.startswith("lora_te_") and k.endswith(".lora_up.weight")}
    # attention_ff on the 12 CLIP layers: q, k, v, out_proj, fc1, fc2 each.
    assert len(te_ups) == 12 * 6, sorted(te_ups)[:4]
    assert "lora_te_text_model_encoder_layers_11_mlp_fc2.lora_up.weight" in te_ups
    assert all(v.abs().max() > 0 for v in te_ups.values()), "a text-encoder LoRA layer did not learn (up still 0)"
    assert any(k.startswith("lora_unet_") for k in tensors)
    assert metadata["ss_network_train_unet_only"] == "False" and metadata["ss_text_encoder_lr"] == "0.001"

    # The native loader reads every key; the CLIP part alone (model strength 0) changes the image.
    _native_loader_changes_the_image(host, "with_te.safetensors", 0.0)

    import diffusers  # a dependency of the pack
    state_dict = diffusers.StableDiffusionPipeline.lora_state_dict(str(path))[0]
    downs = {k for k in state_dict if k.endswith(("lora_A.weight", ".down.weight"))}  # mlp: lora_linear_layer.down
    assert len([k for k in downs if k.startswith("text_encoder.")]) == len(te_ups)
    assert len(downs) == len([k for k in tensors if k.endswith(".lora_down.weight")])


def test_a_run_that_cannot_fit_in_memory_is_refused_before_any_work_with_options_that_fit(host, rings):
    g, _ = train_graph("too_big", steps=2, resolution=1024, batch_size=64, options={"memory_mode": "as_set"})
    mark = len(host.log_text())
    message = error_message(host.wait(host.queue(g.nodes), 300))
    assert "LoraLabTrainLora" in message and "needs about" in message and "GiB are available" in message
    # What it suggests depends on the machine's free memory; whatever it is, each option fits what is free,
    # and none is an optimizer this CPU host cannot run.
    available = float(re.search(r"([0-9.]+) GiB are available", message).group(1))
    offered = [float(m) for m in re.findall(r"about ([0-9.]+) GiB", message.split("Options that fit:", 1)[1])]
    assert "even with" in message or (offered and all(gib <= available for gib in offered)), message
    assert "adamw8bit" not in message
    assert not list(host.loras_dir.glob("too_big*"))
    assert "attached LoRA" not in host.log_text()[mark:]  # refused before the model was touched


def test_memory_mode_auto_turns_on_gradient_checkpointing_when_only_that_makes_the_run_fit(host, rings):
    """The batch is halved from one that cannot fit until the as_set refusal offers gradient checkpointing alone
    (refusals do no work); the same run with memory_mode auto then starts with checkpointing and says so."""
    def refusal(batch: int) -> str:
        g, _ = train_graph(f"auto_memory_{batch}", steps=2, resolution=1024, batch_size=batch,
                           options={"memory_mode": "as_set"})
        message = error_message(host.wait(host.queue(g.nodes), 300))
        assert "needs about" in message, message  # as_set never starts a run that does not fit
        return message

    batch = 256
    while "turn on gradient checkpointing:" not in refusal(batch):
        batch //= 2
        assert batch >= 1, "no batch for which gradient checkpointing alone fits"
    mark = len(host.log_text())
    g, _ = train_graph("auto_memory", steps=2, resolution=1024, batch_size=batch, options={})  # auto: the default
    prompt_id = host.queue(g.nodes)
    deadline = time.monotonic() + 120
    while not (job := next((j for j in host.get_json("/loralab/jobs") if j["name"] == "auto_memory"), None)) \
            or not host.get_json(f"/loralab/jobs/{job['id']}").get("memory_plan"):
        assert time.monotonic() < deadline, "the job never said how it fits in memory"
        time.sleep(0.1)
    host.post_json("/interrupt", {})  # a 1024 px run of that batch is not for a CPU test: its plan is what counts
    plan = host.get_json(f"/loralab/jobs/{job['id']}")["memory_plan"]
    assert plan.startswith("gradient checkpointing (auto): about ") and "without" in plan, plan
    host.wait(prompt_id, 300)
    assert f"LoRA Lab memory: {plan}" in host.log_text()[mark:]
    assert not list(host.loras_dir.glob("auto_memory*"))


def test_bad_settings_are_clear_errors(host, rings):
    for kwargs, expected in (({"steps": 0}, "steps"), ({"lr": 0.0}, "learning_rate"),
                             ({"rank": 2000}, "rank")):
        steps = kwargs.get("steps", 2)
        g, _ = train_graph("bad", steps=steps, lr=kwargs.get("lr", 1e-3), rank=kwargs.get("rank", 4))
        status, answer = host.post_json("/prompt", {"prompt": g.nodes, "client_id": "t"})
        if status == 200:
            entry = host.wait(answer["prompt_id"])
            assert entry["status"]["status_str"] == "error"
            message = error_message(entry)
        else:
            message = json.dumps(answer)
        assert expected in message, message


@pytest.mark.parametrize("name", ["../escape", "a/b", ""])
def test_output_name_must_be_a_plain_file_name(host, rings, name):
    g, _ = train_graph(name, steps=2)
    entry = host.wait(host.queue(g.nodes))
    assert entry["status"]["status_str"] == "error"
    assert "output name" in error_message(entry)


def test_existing_output_name_is_not_overwritten(host, rings):
    (host.loras_dir / "taken.safetensors").write_bytes(b"keep me")
    g, _ = train_graph("taken", steps=2)
    entry = host.wait(host.queue(g.nodes))
    assert "already exists" in error_message(entry)
    assert (host.loras_dir / "taken.safetensors").read_bytes() == b"keep me"


def test_cancel_keeps_a_checkpoint_and_resume_finishes_like_an_uninterrupted_run(host, rings):
    steps = 30  # the cancel lands at step 2 of 30: the run cannot have finished, however fast the machine
    # Uninterrupted reference run.
    host.run(train_graph("straight", steps=steps, options={})[0].nodes, timeout=900)
    # The same run, cancelled part-way through.
    g, train = train_graph("resumed", steps=steps, options={})
    prompt_id = host.queue(g.nodes)
    job = wait_for_step(host, "resumed", 2)
    assert job["step"] < steps, "the run finished before it could be cancelled"
    host.post_json("/interrupt", {})
    entry = host.wait(prompt_id)
    assert entry["status"]["status_str"] != "success"
    assert any(event == "execution_interrupted" for event, _ in entry["status"]["messages"])
    checkpoints = sorted(host.loras_dir.glob("resumed-step*.safetensors"))
    assert checkpoints, "cancel left no checkpoint"
    assert not (host.loras_dir / "resumed.safetensors").exists()
    # Resume to the end.
    entry = host.run(train_graph("resumed", steps=steps, options={"resume": True})[0].nodes, timeout=900)
    ui = entry["outputs"][train]
    assert len(ui["loss_history"]) == steps
    straight, _ = read_safetensors(host.loras_dir / "straight.safetensors")
    resumed, _ = read_safetensors(host.loras_dir / "resumed.safetensors")
    assert straight.keys() == resumed.keys()
    for key in straight:
        torch.testing.assert_close(resumed[key].float(), straight[key].float(), rtol=1e-3, atol=1e-5)


def _dataset_error(host, folder: str, trigger: str = "") -> str:
    g = Graph()
    data = g.add("LoraLabDataset", folder=folder, trigger_word=trigger, resolution=64, flip=False,
                 validation_share=0.0, seed=0)
    ckpt = checkpoint(g)
    g.add("LoraLabTrainLora", model=out(ckpt, 0), clip=out(ckpt, 1), vae=out(ckpt, 2), dataset=out(data),
          name="never", steps=2, learning_rate=1e-3, rank=2, alpha=2.0, batch_size=1, seed=0)
    entry = host.wait(host.queue(g.nodes))
    assert entry["status"]["status_str"] == "error"
    assert not (host.loras_dir / "never.safetensors").exists()
    return error_message(entry)


def test_bad_datasets_stop_at_the_dataset_node_with_the_file_named(host):
    from PIL import Image
    root = host.input_dir
    (root / "empty_set").mkdir(exist_ok=True)
    message = _dataset_error(host, "empty_set")
    assert message.startswith("LoraLabDataset") and "empty_set" in message, message
    (root / "corrupt_set").mkdir(exist_ok=True)
    (root / "corrupt_set" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (root / "corrupt_set" / "broken.txt").write_text("a caption")
    assert "broken.png" in _dataset_error(host, "corrupt_set")
    (root / "tiny_set").mkdir(exist_ok=True)
    Image.new("RGB", (1, 1)).save(root / "tiny_set" / "dot.png")
    (root / "tiny_set" / "dot.txt").write_text("a dot")
    message = _dataset_error(host, "tiny_set")
    assert "dot.png" in message and "1x1" in message
    (root / "uncaptioned").mkdir(exist_ok=True)
    Image.new("RGB", (64, 64), "red").save(root / "uncaptioned" / "red.png")
    assert "red.png" in _dataset_error(host, "uncaptioned")


def test_odd_images_train(host):
    """RGBA, grey and a 6000x4000 photo-sized image go through scanning, encoding and a training step."""
    from PIL import Image
    folder = host.input_dir / "odd_images"
    folder.mkdir(exist_ok=True)
    Image.new("RGBA", (80, 64), (255, 0, 0, 128)).save(folder / "rgba.png")
    Image.new("L", (64, 96), 128).save(folder / "grey.png")
    Image.new("RGB", (6000, 4000), (10, 200, 30)).save(folder / "huge.jpg", quality=80)
    for name in ("rgba", "grey", "huge"):
        (folder / f"{name}.txt").write_text(f"an odd {name} image")
    g, train = train_graph("odd", steps=2, folder="odd_images")
    entry = host.run(g.nodes, timeout=900)
    assert len(entry["outputs"][train]["loss_history"]) == 2


def test_keep_last_deletes_the_older_step_checkpoints_of_the_run_only(host, rings):
    (host.loras_dir / "pruned-step99.safetensors").write_bytes(b"an earlier run's checkpoint")
    g, _ = train_graph("pruned", steps=5, options={"checkpoint_every": 1, "keep_last": 2})
    host.run(g.nodes, timeout=900)
    kept = sorted(p.name for p in host.loras_dir.glob("pruned*"))
    assert kept == ["pruned-step3.safetensors", "pruned-step4.safetensors", "pruned-step99.safetensors",
                    "pruned.loralab-resume", "pruned.safetensors"]
    job = next(j for j in host.get_json("/loralab/jobs") if j["name"] == "pruned")
    checkpoints = host.get_json(f"/loralab/jobs/{job['id']}")["checkpoints"]
    assert [c["step"] for c in checkpoints] == [3, 4]


def test_eval_images_off_skips_both_measurements_and_the_job_says_where_the_time_went(host, rings):
    g, train = train_graph("unmeasured", steps=1, options={"eval_images": "off"})
    entry = host.run(g.nodes, timeout=900)
    ui = entry["outputs"][train]
    assert ui["eval_loss"] == [None, None] and "fixed noise" not in ui["text"][0]
    assert (host.loras_dir / "unmeasured.safetensors").exists()
    job = next(j for j in host.get_json("/loralab/jobs") if j["name"] == "unmeasured")
    phases = host.get_json(f"/loralab/jobs/{job['id']}")["phase_seconds"]
    assert "evaluating" not in phases and phases["training"] > 0 and phases["saving"] > 0
    stamps = {event: data["timestamp"] for event, data in entry["status"]["messages"]}
    prompt_seconds = (stamps["execution_success"] - stamps["execution_start"]) / 1000
    assert sum(phases.values()) <= prompt_seconds + 0.05
