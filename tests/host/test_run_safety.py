"""Train LoRA keeps its work and never leaves a stuck job: Cancel and Stop in every phase, caches keyed by the data,
several runs side by side, damaged resume files. Each Cancel is sent once the status route reports the phase,
and each phase is made long (many images, many sampler steps, many steps) so that it is still running then."""
from __future__ import annotations

import resource
import time

import numpy as np
import pytest
import torch
from PIL import Image

from scripts.comfy_host import error_message
from scripts.graphs import Graph, checkpoint, out, saved_images
from scripts.make_demo_dataset import make_demo_dataset
from scripts.training_graphs import train_graph
from trainer.safetensors_io import read_safetensors

LONG = 1000  # steps no run here reaches: every one of these runs ends early


def _job(host, name: str) -> dict | None:
    summary = next((j for j in host.get_json("/loralab/jobs") if j["name"] == name), None)
    return None if summary is None else host.get_json(f"/loralab/jobs/{summary['id']}")


def wait_for_phase(host, name: str, phase: str, detail: str | None = None, timeout: float = 300.0) -> dict:
    """The job called `name` once the route reports `phase` (and `detail`, when given)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = _job(host, name)
        if job and job["state"] != "running":
            raise AssertionError(f"job {name} ended ({job['state']}: {job['error']}) before phase {phase}")
        if job and job["phase"] == phase and (detail is None or job["phase_detail"] == detail):
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {name} did not reach phase {phase} {detail or ''} in {timeout:.0f}s")


def render_base_model(host, variant: bool) -> np.ndarray:
    """The checkpoint's MODEL as the graph holds it (the very object the runs train on), rendered at a fixed seed.
    `variant` routes the CLIP through CLIPSetLastLayer(-1), which changes nothing in the image but makes the host
    sample again instead of answering from its cache."""
    g = Graph()
    ckpt = checkpoint(g)
    clip = out(g.add("CLIPSetLastLayer", clip=out(ckpt, 1), stop_at_clip_layer=-1)) if variant else out(ckpt, 1)
    positive = g.add("CLIPTextEncode", clip=clip, text="a red ring")
    negative = g.add("CLIPTextEncode", clip=clip, text="")
    latent = g.add("EmptyLatentImage", width=64, height=64, batch_size=1)
    sampled = g.add("KSampler", model=out(ckpt, 0), positive=out(positive), negative=out(negative),
                    latent_image=out(latent), seed=11, steps=3, cfg=5.0, sampler_name="euler", scheduler="normal",
                    denoise=1.0)
    decoded = g.add("VAEDecode", samples=out(sampled), vae=out(ckpt, 2))
    save = g.add("SaveImage", images=out(decoded), filename_prefix=f"base_{variant}")
    return saved_images(host, host.run(g.nodes), save)[0]


@pytest.fixture(scope="module")
def base_image(host) -> np.ndarray:
    return render_base_model(host, variant=False)


@pytest.fixture(scope="module")
def many_rings(host) -> str:
    """24 captioned images: encoding them takes long enough to be cancelled half-way."""
    make_demo_dataset(host.input_dir / "many_rings", count=24, size=64)
    return "many_rings"


def _files(host, name: str) -> list[str]:
    return sorted(p.name for p in host.loras_dir.iterdir() if p.name.startswith(f"{name}.") or
                  p.name.startswith(f"{name}-step"))


def assert_cancelled(host, prompt_id: str, name: str, base_image: np.ndarray) -> dict:
    """The prompt ended as interrupted at once, the job is over with a message, the MODEL renders as before."""
    entry = host.wait(prompt_id, timeout=300)
    assert entry["status"]["status_str"] != "success"
    assert any(event == "execution_interrupted" for event, _ in entry["status"]["messages"])
    job = _job(host, name)
    assert job["state"] in ("interrupted", "stopped"), job
    assert job["error"] and name in job["error"], job
    np.testing.assert_array_equal(render_base_model(host, variant=True), base_image)
    return job


def test_cancel_while_the_dataset_is_encoded_keeps_nothing_and_ends_the_job(host, many_rings, base_image):
    g, _ = train_graph("cancel_encoding", steps=LONG, folder=many_rings)
    prompt_id = host.queue(g.nodes)
    wait_for_phase(host, "cancel_encoding", "encoding", "3/24")
    host.post_json("/interrupt", {})
    job = assert_cancelled(host, prompt_id, "cancel_encoding", base_image)
    assert job["state"] == "interrupted" and job["step"] == 0
    assert "while encoding" in job["error"] and "nothing was saved" in job["error"], job["error"]
    assert _files(host, "cancel_encoding") == []


@pytest.mark.parametrize("how", ["cancel", "stop"])
def test_cancel_or_stop_during_the_step_0_sample(host, rings, base_image, how):
    name = f"{how}_baseline"
    g, _ = train_graph(name, steps=LONG, options={"sample_every": LONG - 1, "sample_steps": 12,
                                                  "sample_prompts": "a ring\na red ring\nlrlring"})
    prompt_id = host.queue(g.nodes)
    job = wait_for_phase(host, name, "sampling", "step 0")
    if how == "cancel":
        host.post_json("/interrupt", {})
    else:
        status, answer = host.post_json(f"/loralab/jobs/{job['id']}/stop", {})
        assert status == 200, answer
    job = assert_cancelled(host, prompt_id, name, base_image)
    assert job["state"] == ("interrupted" if how == "cancel" else "stopped") and job["step"] == 0
    assert "nothing was saved" in job["error"], job["error"]
    assert _files(host, name) == []


def test_cancel_during_a_periodic_sample_keeps_the_last_whole_step(host, rings, base_image):
    g, _ = train_graph("cancel_sample", steps=LONG, options={"sample_every": 3, "sample_steps": 12})
    prompt_id = host.queue(g.nodes)
    wait_for_phase(host, "cancel_sample", "sampling", "step 3")
    host.post_json("/interrupt", {})
    job = assert_cancelled(host, prompt_id, "cancel_sample", base_image)
    assert job["state"] == "interrupted" and job["step"] == 3
    assert _files(host, "cancel_sample") == ["cancel_sample-step3.safetensors", "cancel_sample.loralab-resume"]
    assert job["lora_name"] == "cancel_sample-step3.safetensors"
    assert "while sampling step 3" in job["error"], job["error"]
    assert "saved cancel_sample-step3.safetensors and its resume state" in job["error"], job["error"]


def test_cancel_during_the_evaluation_after_training_keeps_the_finished_run(host, many_rings, base_image):
    """Every step is done: the final file is written before the evaluations that follow, so Cancel there keeps it."""
    g, _ = train_graph("cancel_eval", steps=2, folder=many_rings, validation_share=0.5, resolution=128)
    prompt_id = host.queue(g.nodes)
    wait_for_phase(host, "cancel_eval", "validating")
    host.post_json("/interrupt", {})
    job = assert_cancelled(host, prompt_id, "cancel_eval", base_image)
    assert job["state"] == "interrupted" and job["step"] == 2
    assert _files(host, "cancel_eval") == ["cancel_eval.loralab-resume", "cancel_eval.safetensors"]
    assert "saved cancel_eval.safetensors" in job["error"] and "resume on" not in job["error"], job["error"]


def _trained(host, name: str, folder: str) -> dict[str, torch.Tensor]:
    host.run(train_graph(name, steps=2, folder=folder, batch_size=3)[0].nodes, timeout=900)  # every image, every step
    return read_safetensors(host.loras_dir / f"{name}.safetensors")[0]


def _differs(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    assert a.keys() == b.keys()
    return any(not torch.equal(a[k], b[k]) for k in a)


def test_the_encoded_dataset_cache_is_keyed_by_what_the_data_is(host):
    """Twin folders (same names and captions, other pixels), an image edited in place and a changed caption
    each train on their own pixels and captions; an unchanged folder trains bit-identically again."""
    make_demo_dataset(host.input_dir / "twin_a", count=3, size=64, seed=1)
    make_demo_dataset(host.input_dir / "twin_b", count=3, size=64, seed=2)  # same names and captions
    twin_a = _trained(host, "twin_a_1", "twin_a")
    assert _differs(twin_a, _trained(host, "twin_b_1", "twin_b"))
    assert not _differs(twin_a, _trained(host, "twin_a_2", "twin_a"))  # the same data: the same LoRA

    image = host.input_dir / "twin_a" / "ring_00.png"
    Image.fromarray(255 - np.asarray(Image.open(image))).save(image)  # same name, size on disk may even match
    edited = _trained(host, "twin_a_edited", "twin_a")
    assert _differs(twin_a, edited)
    caption = host.input_dir / "twin_a" / "ring_01.txt"
    caption.write_text(caption.read_text() + ", at night")
    assert _differs(edited, _trained(host, "twin_a_recaptioned", "twin_a"))


def test_two_train_nodes_in_one_prompt_and_two_prompts_back_to_back_have_their_own_jobs(host, rings):
    g, first = train_graph("side_a", steps=3, options={"checkpoint_every": 2})
    ckpt, data = g.nodes[first]["inputs"]["model"][0], g.nodes[first]["inputs"]["dataset"][0]
    second = g.add("LoraLabTrainLora", model=out(ckpt, 0), clip=out(ckpt, 1), vae=out(ckpt, 2), dataset=out(data),
                   name="side_b", steps=2, learning_rate=2e-3, rank=4, alpha=4.0, batch_size=1, seed=5)
    entry = host.run(g.nodes, timeout=900)
    assert entry["outputs"][first]["lora_name"] == ["side_a.safetensors"]
    assert entry["outputs"][second]["lora_name"] == ["side_b.safetensors"]
    queued = [host.queue(train_graph(f"queued_{i}", steps=2)[0].nodes) for i in range(2)]
    for prompt_id in queued:
        assert host.wait(prompt_id, timeout=900)["status"]["status_str"] == "success"
    jobs = {name: _job(host, name) for name in ("side_a", "side_b", "queued_0", "queued_1")}
    assert len({j["id"] for j in jobs.values()}) == 4 and all(j["state"] == "done" for j in jobs.values())
    assert jobs["side_a"]["node_id"] == first and jobs["side_b"]["node_id"] == second
    assert [c["lora_name"] for c in jobs["side_a"]["checkpoints"]] == ["side_a-step2.safetensors"]
    assert jobs["side_b"]["checkpoints"] == [] and jobs["side_b"]["total"] == 2 and jobs["side_a"]["total"] == 3
    assert [len(host.get_json(f"/loralab/jobs/{j['id']}/loss")["points"]) for j in jobs.values()] == [3, 2, 2, 2]


def test_a_damaged_or_foreign_resume_file_is_a_clear_error_and_nothing_is_touched(host, rings):
    host.run(train_graph("resumable", steps=2, rank=4)[0].nodes, timeout=900)
    resume = host.loras_dir / "resumable.loralab-resume"
    lora = host.loras_dir / "resumable.safetensors"
    good_state, good_lora = resume.read_bytes(), lora.read_bytes()

    def resume_error(**kwargs) -> str:
        g, _ = train_graph("resumable", steps=4, options={"resume": True}, **kwargs)
        entry = host.wait(host.queue(g.nodes), timeout=300)
        assert entry["status"]["status_str"] == "error"
        assert lora.read_bytes() == good_lora and not list(host.loras_dir.glob("resumable-step*"))
        return error_message(entry)

    message = resume_error(rank=8)  # another rank
    assert "resumable.loralab-resume" in message and "rank" in message, message
    assert resume.read_bytes() == good_state
    resume.write_bytes(good_state[: len(good_state) // 2])  # a partial file
    message = resume_error()
    assert "resumable.loralab-resume" in message and "Traceback" not in message, message
    resume.write_bytes(lora.read_bytes())  # a LoRA saved under the resume file's name
    message = resume_error()
    assert "resumable.loralab-resume" in message and "KeyError" not in message, message


def test_a_full_disk_while_saving_is_a_clear_error_and_the_previous_files_stay_intact(host, rings):
    """The host process may write no file larger than 4 KiB (RLIMIT_FSIZE: a write past it fails as on a full
    disk): resuming a finished run for more steps cannot write its new final file."""
    host.run(train_graph("full_disk", steps=2, options={})[0].nodes, timeout=900)
    before = {p.name: p.read_bytes() for p in host.loras_dir.glob("full_disk*")}
    assert set(before) == {"full_disk.safetensors", "full_disk.loralab-resume"}
    limits = resource.prlimit(host.process.pid, resource.RLIMIT_FSIZE)
    resource.prlimit(host.process.pid, resource.RLIMIT_FSIZE, (4096, limits[1]))
    try:
        g, _ = train_graph("full_disk", steps=4, options={"resume": True})
        entry = host.wait(host.queue(g.nodes), timeout=900)
    finally:
        resource.prlimit(host.process.pid, resource.RLIMIT_FSIZE, limits)
    assert entry["status"]["status_str"] == "error"
    message = error_message(entry)
    assert "full_disk.safetensors" in message and "full" in message.lower(), message
    assert {p.name: p.read_bytes() for p in host.loras_dir.glob("full_disk*")} == before  # no temp file either
    job = _job(host, "full_disk")
    assert job["state"] == "error" and "full_disk.safetensors" in job["error"]
