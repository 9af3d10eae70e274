"""Train LoRA Options' `workers` in the editor: the real host queues a graph whose run trains in two torchrun
worker processes (gloo on the CPU) while the host follows it. The LoRA they write is the one an in-editor run with
twice the batch writes, the node returns it applied, the host's /loralab/jobs shows the job (2 processes), and the
host's Cancel (SIGTERM to torchrun, passed on to every worker: how a user's `kill` of a headless torchrun run
cancels it too) ends it with the last whole step saved."""
from __future__ import annotations

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.torch import load_file

from scripts.comfy_host import error_message
from scripts.graphs import Graph, checkpoint, out, render, saved_images
from scripts.training_graphs import train_graph, wait_for_step
from tests.host.test_headless_distributed import assert_close

pytestmark = pytest.mark.host

# SGD at a large rate, as the headless 2-process test: Adam's per-component scaling amplifies fp32 rounding.
SGD = {"optimizer": "sgd_nesterov", "eval_images": "off"}


def job_named(host, name: str) -> dict:
    summary = next(j for j in host.get_json("/loralab/jobs") if j["name"] == name)
    return host.get_json(f"/loralab/jobs/{summary['id']}")


def test_two_workers_train_like_the_editor_with_twice_the_batch_and_the_node_returns_their_lora(host, rings):
    reference, reference_node = train_graph("wk_one", steps=3, lr=0.5, options=SGD, batch_size=2)
    one = host.run(reference.nodes)["outputs"][reference_node]
    g, train = train_graph("wk_two", steps=3, lr=0.5, options={**SGD, "workers": "2"}, batch_size=1)
    trained_image = render(g, out(train, 0), out(train, 1), out("1", 2), "wk_two_model", steps=1)
    entry = host.run(g.nodes)

    outputs = entry["outputs"][train]
    assert outputs["lora_name"] == ["wk_two.safetensors"]
    assert outputs["text"][0].startswith("saved wk_two.safetensors after 3 steps")
    assert "2 worker processes on the CPU" in outputs["text"][0]
    assert outputs["loss_history"] == pytest.approx(one["loss_history"], rel=1e-5)
    assert_close(load_file(str(host.loras_dir / "wk_two.safetensors")),
                 load_file(str(host.loras_dir / "wk_one.safetensors")))
    with safe_open(str(host.loras_dir / "wk_two.safetensors"), framework="pt") as f:
        assert f.metadata()["loralab.world_size"] == "2"

    job = job_named(host, "wk_two")  # the host's own registry follows the workers' job
    assert (job["state"], job["step"], job["node_id"], job["lora_name"]) == ("done", 3, train, "wk_two.safetensors")
    assert job["world_size"] == 2 and job["batch"]["effective"] == 2
    assert [p[0] for p in host.get_json(f"/loralab/jobs/{job['id']}/loss")["points"]] == [1, 2, 3]
    assert job["timestep_histogram"] == job_named(host, "wk_one")["timestep_histogram"], "the same draws"

    # The MODEL it returns is the base with that file applied, as the host's own LoraLoader applies it.
    check = Graph()
    base = checkpoint(check)
    loaded = check.add("LoraLoader", model=out(base, 0), clip=out(base, 1), lora_name="wk_two.safetensors",
                       strength_model=1.0, strength_clip=1.0)
    with_file = render(check, out(loaded, 0), out(loaded, 1), out(base, 2), "wk_two_file", steps=1)
    without = render(check, out(base, 0), out(base, 1), out(base, 2), "wk_two_base", steps=1)
    shown = host.run(check.nodes)
    from_node = saved_images(host, entry, trained_image)[0]
    assert np.array_equal(from_node, saved_images(host, shown, with_file)[0])
    assert not np.array_equal(from_node, saved_images(host, shown, without)[0]), "the LoRA changes the image"


def test_cancel_in_the_host_ends_the_workers_with_the_last_whole_step_saved(host, rings):
    g, train = train_graph("wk_cancel", steps=500, options={**SGD, "workers": "2"})
    prompt_id = host.queue(g.nodes)
    wait_for_step(host, "wk_cancel", 3, timeout=240)
    status, _ = host.post_json("/interrupt", {})
    assert status == 200
    entry = host.wait(prompt_id, timeout=240)
    assert any(event == "execution_interrupted" for event, _ in entry["status"]["messages"]), entry["status"]

    job = job_named(host, "wk_cancel")
    step = job["step"]
    assert job["state"] == "interrupted" and 3 <= step < 500, job
    assert f"was cancelled at step {step} of 500; saved wk_cancel-step{step}.safetensors and its resume state" \
        in job["error"], job["error"]
    with safe_open(str(host.loras_dir / "wk_cancel.loralab-resume"), framework="pt") as f:
        assert int(f.metadata()["loralab.state.step"]) == step
    assert (host.loras_dir / f"wk_cancel-step{step}.safetensors").is_file()
    # The host's Cancel is SIGTERM to torchrun, which passes it on to every worker: each cancels as on one Ctrl+C
    # and they stop at the same step (no worker is killed for hanging: torchrun's grace period is not used up).
    log = next(host.output_dir.glob("loralab/wk_cancel-*/workers.log")).read_text()
    assert log.count("Cancelling (SIGTERM)") == 1, "the main worker says so; the other one is silent"
    assert "SIGKILL" not in log, log[-4000:]


def test_an_error_in_the_workers_is_the_nodes_error_with_their_message(host, rings):
    """The workers refuse to overwrite a LoRA (the first test wrote wk_two): the host's prompt fails with that."""
    if not (host.loras_dir / "wk_two.safetensors").exists():
        pytest.skip("needs the LoRA of the first test")
    g, train = train_graph("wk_two", steps=3, lr=0.1, options={**SGD, "workers": "2"})
    entry = host.wait(host.queue(g.nodes), timeout=240)
    assert entry["status"]["status_str"] == "error"
    message = error_message(entry)
    assert "'wk_two.safetensors' already exists in" in message and "choose another name" in message, message
    assert "workers.log" in message
    assert job_named(host, "wk_two")["state"] == "error"


def test_the_dashboards_stop_reaches_the_workers_and_the_node_returns_the_last_step(host, rings):
    """Stop on the host's job is passed on to the workers' own route: they stop and save as an in-process run
    does (state stopped, the step checkpoint is the node's LoRA), and the prompt succeeds."""
    g, train = train_graph("wk_stop", steps=500, options={**SGD, "workers": "2"})
    prompt_id = host.queue(g.nodes)
    job = wait_for_step(host, "wk_stop", 3, timeout=240)
    status, _ = host.post_json(f"/loralab/jobs/{job['id']}/stop", {})
    assert status == 200
    entry = host.wait(prompt_id, timeout=240)
    assert entry["status"]["status_str"] == "success", error_message(entry)
    job = job_named(host, "wk_stop")
    step = job["step"]
    assert job["state"] == "stopped" and 3 <= step < 500, job
    assert entry["outputs"][train]["lora_name"] == [f"wk_stop-step{step}.safetensors"] == [job["lora_name"]]
    assert len(entry["outputs"][train]["loss_history"]) == step
