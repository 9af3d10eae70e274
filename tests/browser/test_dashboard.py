"""The Train LoRA dashboard in the host's real graph editor: follow a run queued from the editor (loss chart and
timestep histogram), stop it from the dashboard, and recover the finished job after a page reload."""
from __future__ import annotations

import re
import time
import uuid

from playwright.sync_api import expect

from scripts.comfy_host import TINY_CHECKPOINT_NAME
from scripts.editor import APP, Editor
from scripts.make_demo_dataset import make_demo_dataset

DATASET = "dash_rings"
STEPS = 400  # far more than the test waits for: the run must still be going when "Stop & save" is clicked
TIMESTEP_WINDOW = (300, 700)  # min_timestep, max_timestep of the run: on bin edges of the histogram (1000 / 20)


def dashboard(editor: Editor, node_id: int):
    return editor.page.locator(f'.loralab-dash[data-node-id="{node_id}"]')


def shown_step(dash) -> int:
    return int(re.match(r"\s*(\d+)", dash.get_by_test_id("loralab-dash-step").inner_text()).group(1))


def job_named(host, name: str) -> dict:
    jobs = [j for j in host.get_json("/api/loralab/jobs") if j["name"] == name]
    assert len(jobs) == 1, jobs
    return host.get_json(f"/api/loralab/jobs/{jobs[0]['id']}")


def drawn_bars(dash) -> list[tuple[int, int, int, int]]:
    """The histogram's bars as the dashboard drew them: (bin, count, first timestep, end timestep) each."""
    return [tuple(bar) for bar in dash.get_by_test_id("loralab-dash-timestep-bar").evaluate_all(
        "rects => rects.map(r => ['bin', 'count', 'lo', 'hi'].map(k => Number(r.dataset[k])))")]


def expected_bars(histogram: dict) -> list[tuple[int, int, int, int]]:
    """One bar per bin with draws, with the route's count and the bin's timesteps [i * T / bins, (i + 1) * T / bins)."""
    num_timesteps, bins = histogram["range"][1], len(histogram["counts"])
    return [(i, count, -(-i * num_timesteps // bins), -(-(i + 1) * num_timesteps // bins))
            for i, count in enumerate(histogram["counts"]) if count]


def wait_for_state(host, job_id: str, states: set[str], timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snapshot = host.get_json(f"/api/loralab/jobs/{job_id}")
        if snapshot["state"] in states:
            return snapshot
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not reach {states} in {timeout:.0f}s: {snapshot}")


def wait_for_dashboard(editor: Editor, node_id: int, condition: str, what: str, timeout_ms: int = 60_000) -> None:
    """Waits until `condition` (JS over `d`, the node's dashboard element) holds; on timeout says what the
    dashboard and the host's queue showed instead."""
    try:
        editor.page.wait_for_function(
            f"(id) => {{ const d = document.querySelector(`.loralab-dash[data-node-id=\"${{id}}\"]`); "
            f"return !!d && ({condition}); }}",
            arg=node_id, timeout=timeout_ms)
    except Exception as e:  # noqa: BLE001 - re-raised with the page's and the host's side of the story
        shown = dashboard(editor, node_id).all_inner_texts()
        history = [entry.get("status") for entry in editor.host.get_json("/history").values()]
        raise AssertionError(f"dashboard never showed {what}: {shown}; history: {history}; "
                             f"pack errors: {editor.pack_errors}\n{editor.host.log_text()[-3000:]}") from e


def build_training_graph(editor: Editor, name: str) -> int:
    ckpt = editor.add_node("CheckpointLoaderSimple", (40, 160))
    data = editor.add_node("LoraLabDataset", (40, 400))
    options = editor.add_node("LoraLabTrainOptions", (900, 200))
    train = editor.add_node("LoraLabTrainLora", (480, 130))
    editor.js("""const g = app.graph, ck = g.getNodeById(arg.ckpt), ds = g.getNodeById(arg.data),
            tr = g.getNodeById(arg.train);
        const op = g.getNodeById(arg.options);
        const set = (node, values) => {
            for (const [k, v] of Object.entries(values)) node.widgets.find(w => w.name === k).value = v;
        };
        set(ck, {ckpt_name: arg.ckpt_name});
        set(ds, {folder: arg.folder, resolution: 64});
        set(tr, {name: arg.name, steps: arg.steps, rank: 2, alpha: 2, learning_rate: 0.001, batch_size: 1});
        ck.connect(0, tr, tr.findInputSlot('model'));
        ck.connect(1, tr, tr.findInputSlot('clip'));
        ck.connect(2, tr, tr.findInputSlot('vae'));
        ds.connect(0, tr, tr.findInputSlot('dataset'));
        set(op, {sample_steps: 2});  // samples on request only, and quick to render on a CPU
        set(op, {min_timestep: arg.window[0], max_timestep: arg.window[1]});
        op.connect(0, tr, tr.findInputSlot('options'));
        app.canvas.ds.offset = [0, 0]; app.canvas.ds.scale = 1;
        app.canvas.setDirty(true, true);""",
              {"ckpt": ckpt, "data": data, "train": train, "options": options, "ckpt_name": TINY_CHECKPOINT_NAME,
               "folder": DATASET,
               "name": name, "steps": STEPS, "window": TIMESTEP_WINDOW})
    return train


def test_dashboard_follows_a_run_and_stops_it(editor, host, artifacts):
    make_demo_dataset(host.input_dir / DATASET, count=3, size=64)
    name = f"dash_{uuid.uuid4().hex[:8]}"
    train = build_training_graph(editor, name)
    dash = dashboard(editor, train)

    # Before any run: says so, and offers no controls.
    expect(dash.get_by_test_id("loralab-dash-state")).to_contain_text(f"no run named “{name}”", timeout=10_000)
    for control in ("stop", "save", "sample"):
        assert dash.get_by_test_id(f"loralab-dash-{control}").is_disabled()

    editor.page.evaluate("async () => { await window.comfyAPI.app.app.queuePrompt(0); }")

    # Live: websocket events move the step counter, the chart draws the loss and the histogram the timesteps.
    wait_for_dashboard(editor, train, "d.dataset.state === 'running' && parseInt(d.querySelector("
                       "'[data-testid=loralab-dash-step]').textContent) > 0 && Number(d.querySelector("
                       "'[data-testid=loralab-dash-chart]').dataset.points) >= 2 && Number(d.querySelector("
                       "'[data-testid=loralab-dash-timesteps]').dataset.total) >= 2",
                       "a running job with a loss chart and a timestep histogram", timeout_ms=120_000)
    job_id = dash.get_attribute("data-job-id")
    assert job_id == job_named(host, name)["id"], "the node shows the job of its name"
    assert dash.get_by_test_id("loralab-dash-state").inner_text() == "training"
    assert dash.get_by_test_id("loralab-dash-raw").get_attribute("d").count("L") >= 1
    assert dash.get_by_test_id("loralab-dash-smooth").get_attribute("d").startswith("M")
    assert re.fullmatch(r"\d+ / " + str(STEPS), dash.get_by_test_id("loralab-dash-step").inner_text())
    assert dash.get_by_test_id("loralab-dash-lr").inner_text() == "1.00e-3"
    assert re.search(r"(it/s|s/it)$", dash.get_by_test_id("loralab-dash-rate").inner_text())
    assert re.fullmatch(r"(\d+h )?(\d+m )?\d+s|<1s", dash.get_by_test_id("loralab-dash-eta").inner_text())
    assert not dash.get_by_test_id("loralab-dash-stop").is_disabled()
    assert drawn_bars(dash), "the histogram has bars while the run goes on"
    expect(dash.get_by_test_id("loralab-dash-timesteps-caption")).to_have_text("timesteps drawn · uniform")
    editor.page.screenshot(path=str(artifacts / "dashboard_running.png"))

    # "Sample now" and "Save now", asked together so the trainer serves both at its next step: a sample
    # strip (its thumbnail loads from the job's sample route and opens large on click) and a checkpoint,
    # while training goes on.
    dash.get_by_test_id("loralab-dash-sample").click()
    dash.get_by_test_id("loralab-dash-save").click()
    wait_for_dashboard(editor, train, "d.querySelectorAll('[data-testid=loralab-dash-sample-image]').length > 0 && "
                       "d.querySelectorAll('[data-testid=loralab-dash-checkpoint]').length === 1",
                       "a sample thumbnail and the checkpoint of 'Save now'", timeout_ms=120_000)
    thumb = dash.get_by_test_id("loralab-dash-sample-image").first
    assert f"/api/loralab/jobs/{job_id}/samples/" in thumb.get_attribute("src")
    editor.page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=thumb.element_handle(),
                                  timeout=10_000)
    thumb.click()
    overlay = editor.page.get_by_test_id("loralab-dash-overlay")
    expect(overlay).to_be_visible()
    editor.page.screenshot(path=str(artifacts / "dashboard_sample_overlay.png"))
    editor.page.keyboard.press("Escape")
    expect(overlay).to_have_count(0)
    assert dash.get_attribute("data-state") == "running"

    dash.get_by_test_id("loralab-dash-stop").click()
    snapshot = wait_for_state(host, job_id, {"stopped", "done", "error", "interrupted"})
    assert snapshot["state"] == "stopped", snapshot
    assert 0 < snapshot["step"] < STEPS
    assert len(snapshot["checkpoints"]) == 2, "'Save now' and the stop each saved one"
    assert snapshot["samples"], "'Sample now' rendered a strip"
    saved = snapshot["checkpoints"][-1]["lora_name"]
    assert saved == snapshot["lora_name"] == f"{name}-step{snapshot['step']}.safetensors"
    assert (host.loras_dir / saved).is_file()

    # The dashboard got the `loralab.finished` event: final state, checkpoint listed, controls off.
    expect(dash).to_have_attribute("data-state", "stopped", timeout=10_000)
    expect(dash.get_by_test_id("loralab-dash-checkpoint")).to_have_count(2)
    expect(dash.get_by_test_id("loralab-dash-checkpoint").first).to_contain_text(saved)  # newest first
    expect(dash.get_by_test_id("loralab-dash-message")).to_contain_text(f"saved {saved}")
    assert dash.get_by_test_id("loralab-dash-step").inner_text() == f"{snapshot['step']} / {STEPS}"
    for control in ("stop", "save", "sample"):
        assert dash.get_by_test_id(f"loralab-dash-{control}").is_disabled()
    points = int(dash.get_by_test_id("loralab-dash-chart").get_attribute("data-points"))
    # The histogram: the finished job's counts, bar for bar, and only inside [min_timestep, max_timestep).
    histogram = snapshot["timestep_histogram"]
    assert histogram["range"] == [0, 1000] and histogram["sampling"] == "uniform"
    assert sum(histogram["counts"]) == snapshot["step"], "one draw per step of batch 1"
    bars = expected_bars(histogram)
    assert drawn_bars(dash) == bars
    assert all(TIMESTEP_WINDOW[0] <= lo and hi <= TIMESTEP_WINDOW[1] for _, _, lo, hi in bars), bars
    timesteps = dash.get_by_test_id("loralab-dash-timesteps")
    assert timesteps.get_attribute("data-total") == str(snapshot["step"])
    assert timesteps.get_attribute("data-sampling") == "uniform"
    editor.page.screenshot(path=str(artifacts / "dashboard_stopped.png"))
    assert editor.pack_errors == []

    # After a reload the editor restores the workflow; the dashboard finds the job again by its name
    # and draws its whole loss history from the route.
    editor.page.reload()
    editor.page.wait_for_function(f"() => window.comfyAPI?.app?.app?.graph "  # newer frontends define comfyAPI later
                                  f"&& {APP}.extensions?.some(e => e.name === 'loralab.TrainDashboard')",
                                  timeout=120_000)
    editor.dismiss_dialogs()
    recovered = editor.page.locator(f'.loralab-dash[data-job-id="{job_id}"]')
    expect(recovered).to_have_attribute("data-state", "stopped", timeout=20_000)
    expect(recovered.get_by_test_id("loralab-dash-chart")).to_have_attribute("data-points", str(snapshot["step"]))
    assert points >= 2
    expect(recovered.get_by_test_id("loralab-dash-checkpoint")).to_have_count(2)
    expect(recovered.get_by_test_id("loralab-dash-sample-image")).to_have_count(len(snapshot["samples"]))
    assert drawn_bars(recovered) == bars, "the histogram comes back with the job's snapshot"
    editor.page.screenshot(path=str(artifacts / "dashboard_reloaded.png"))
    assert editor.pack_errors == []


def test_dashboard_shows_in_the_new_node_renderer(editor, artifacts):
    """ "Nodes 2.0" draws nodes as Vue components; the dashboard is a DOM widget, so it must show there too."""
    set_vue = ("async (on) => { "
               "await window.comfyAPI.app.app.extensionManager.setting.set('Comfy.VueNodes.Enabled', on); }")
    editor.page.evaluate(set_vue, True)
    try:
        train = editor.add_node("LoraLabTrainLora", (300, 100))
        editor.js("app.graph.getNodeById(arg).widgets.find(w => w.name === 'name').value = 'never_trained';", train)
        dash = dashboard(editor, train)
        expect(dash).to_be_visible(timeout=10_000)
        # A renamed node looks its job up again once typing pauses (the widget's callback fires on edits).
        editor.js("const w = app.graph.getNodeById(arg).widgets.find(w => w.name === 'name'); "
                  "w.callback?.(w.value);", train)
        expect(dash.get_by_test_id("loralab-dash-state")).to_contain_text("no run named “never_trained”")
        for control in ("stop", "save", "sample"):
            expect(dash.get_by_test_id(f"loralab-dash-{control}")).to_be_disabled()
        dash.get_by_test_id("loralab-dash-log").click()
        expect(dash.get_by_test_id("loralab-dash-log")).to_have_attribute("aria-pressed", "true")
        assert editor.js("return app.graph.getNodeById(arg).widgets.find(w => w.name === 'loralab_train_dashboard')"
                         ".options.serialize;", train) is False, "the dashboard is not sent with the prompt"
        editor.page.screenshot(path=str(artifacts / "dashboard_nodes2.png"))
    finally:
        editor.page.evaluate(set_vue, False)
    assert editor.pack_errors == []
