"""JobRegistry: throttled events, snapshot contents and ETA, bounded history, safe sample paths, requests."""
from __future__ import annotations

import json
import os
import threading

import pytest

from trainer.errors import JobError
from trainer.jobs import (
    EVENT_CHECKPOINT,
    EVENT_FINISHED,
    EVENT_PROGRESS,
    EVENT_SAMPLE,
    EVENT_STARTED,
    MAX_HISTORY_POINTS,
    Job,
    JobRegistry,
    is_job_id,
)


class FakeClock:
    """A monotonic clock the test advances by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def events() -> list[tuple[str, dict]]:
    return []


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry(events, clock) -> JobRegistry:
    return JobRegistry(publish=lambda event, data: events.append((event, data)), clock=clock,
                       wall_clock=lambda: 1_700_000_000.0)


def make_job(registry: JobRegistry, folder, total: int = 100) -> Job:
    job = registry.create("my-lora", total, str(folder))
    job.start()
    return job


def step(job: Job, n: int, total: int = 100, seconds: float = 0.5, memory: int | None = None) -> None:
    job.record_step(n, total, loss=0.1 * n, smoothed_loss=0.05 * n, lr=1e-4, seconds_per_step=seconds,
                    memory_bytes=memory)


def test_ids_are_opaque_16_hex_and_unique(registry, tmp_path):
    ids = {registry.create("x", 10, str(tmp_path)).id for _ in range(40)}
    assert len(ids) == 40 and all(is_job_id(i) for i in ids)
    assert registry.get("../../etc/passwd") is None and registry.get("A" * 16) is None
    assert registry.get("0" * 16) is None and registry.get(None) is None and registry.get("0" * 16 + "\n") is None


def test_progress_is_throttled_but_sample_checkpoint_and_finish_go_out_at_once(registry, events, clock, tmp_path):
    job = make_job(registry, tmp_path)
    assert [e for e, _ in events] == [EVENT_STARTED]
    events.clear()
    clock.now += 1.0
    for n in range(1, 11):  # ten steps within 90 ms: one progress event
        step(job, n)
        clock.now += 0.01
    assert [e for e, _ in events] == [EVENT_PROGRESS]
    assert events[0][1]["step"] == 1
    clock.now += 0.25
    step(job, 11)
    assert [e for e, _ in events] == [EVENT_PROGRESS, EVENT_PROGRESS]
    assert events[-1][1]["step"] == 11
    # 40 steps over 4 simulated seconds: at most ~4 progress events per second.
    events.clear()
    for n in range(12, 52):
        clock.now += 0.1
        step(job, n)
    assert 10 <= len(events) <= 16
    events.clear()
    (tmp_path / "s_12.png").write_bytes(b"png")
    job.add_sample(12, "s_12.png", "a cat")
    job.add_checkpoint(12, "my-lora_000012.safetensors")
    job.finish("done", lora_name="my-lora.safetensors")
    assert [e for e, _ in events] == [EVENT_SAMPLE, EVENT_CHECKPOINT, EVENT_FINISHED]
    assert events[0][1]["samples"][-1]["name"] == "s_12.png"
    assert events[1][1]["checkpoints"] == [{"step": 12, "lora_name": "my-lora_000012.safetensors"}]
    assert events[2][1]["state"] == "done" and events[2][1]["lora_name"] == "my-lora.safetensors"


def test_snapshot_contents_eta_and_json(registry, clock, tmp_path):
    job = registry.create("my-lora", 100, str(tmp_path))
    snap = job.snapshot()
    assert snap["state"] == "queued" and snap["eta_seconds"] is None and snap["steps_per_second"] is None
    job.start()
    step(job, 40, seconds=0.5, memory=123_456_789)
    job.record_validation(40, 0.25)
    snap = job.snapshot()
    assert json.loads(json.dumps(snap, allow_nan=False)) == snap
    assert set(snap) >= {"id", "name", "state", "step", "total", "loss", "smoothed_loss", "validation_loss", "lr",
                         "steps_per_second", "eta_seconds", "memory_bytes", "samples", "checkpoints", "error",
                         "started_at", "updated_at", "pending_requests"}
    assert snap["id"] == job.id and snap["name"] == "my-lora" and snap["state"] == "running"
    assert (snap["step"], snap["total"]) == (40, 100)
    assert snap["loss"] == pytest.approx(4.0) and snap["smoothed_loss"] == pytest.approx(2.0)
    assert snap["validation_loss"] == 0.25 and snap["lr"] == 1e-4 and snap["memory_bytes"] == 123_456_789
    assert snap["steps_per_second"] == pytest.approx(2.0)
    assert snap["eta_seconds"] == pytest.approx(60 * 0.5)
    assert snap["started_at"] == 1_700_000_000.0 and snap["error"] is None
    assert str(tmp_path) not in json.dumps(snap)  # no server path leaks to the client
    job.finish("done")
    assert job.snapshot()["eta_seconds"] is None


def test_speed_is_smoothed_so_one_slow_step_does_not_swing_the_eta(registry, tmp_path):
    job = make_job(registry, tmp_path)
    for n in range(1, 30):
        step(job, n, seconds=0.5)
    step(job, 30, seconds=50.0)  # e.g. a step that paid for a garbage collection
    assert job.snapshot()["eta_seconds"] < 70 * 6


def test_non_finite_values_become_null(registry, tmp_path):
    job = make_job(registry, tmp_path)
    job.record_step(1, 100, loss=float("nan"), smoothed_loss=float("inf"), lr=1e-4, seconds_per_step=0.0)
    snap = job.snapshot()
    json.dumps(snap, allow_nan=False)
    assert snap["loss"] is None and snap["smoothed_loss"] is None and snap["steps_per_second"] is None
    assert job.loss_history(0) == [[1, None, None]]


def test_loss_history_since_step_and_thinning(registry, tmp_path):
    job = make_job(registry, tmp_path)
    for n in range(1, 6):
        step(job, n)
    assert [p[0] for p in job.loss_history(0)] == [1, 2, 3, 4, 5]
    assert job.loss_history(3) == [[4, pytest.approx(0.4), pytest.approx(0.2)], [5, pytest.approx(0.5),
                                                                                  pytest.approx(0.25)]]
    assert job.loss_history(5) == []
    job.record_validation(5, 0.3)
    assert job.validation_history(0) == [[5, 0.3]] and job.validation_history(5) == []
    for n in range(6, MAX_HISTORY_POINTS + 100):
        step(job, n)
    history = job.loss_history(0)
    steps = [p[0] for p in history]
    assert len(history) <= MAX_HISTORY_POINTS and steps == sorted(steps)
    assert steps[-100:] == list(range(MAX_HISTORY_POINTS, MAX_HISTORY_POINTS + 100))  # recent points all kept


def test_list_is_newest_first_and_bounded_dropping_ended_jobs_first(clock, tmp_path):
    registry = JobRegistry(clock=clock, max_jobs=5)
    running = make_job(registry, tmp_path)  # the oldest, but still running: kept
    jobs = [registry.create(f"j{i}", 10, str(tmp_path)) for i in range(4)]
    for job in jobs:
        job.finish("done")
    newer = [registry.create(f"n{i}", 10, str(tmp_path)) for i in range(3)]
    listed = registry.list()
    assert len(listed) == 5
    assert [j["id"] for j in listed] == [j.id for j in reversed(newer)] + [jobs[3].id, running.id]
    assert registry.get(jobs[0].id) is None and registry.get(running.id) is running
    assert set(listed[0]) >= {"id", "name", "state", "step", "total", "updated_at"}


def test_sample_path_serves_only_registered_names_inside_the_folder(registry, tmp_path):
    folder = tmp_path / "job"
    folder.mkdir()
    job = make_job(registry, folder)
    (folder / "s_10.png").write_bytes(b"png")
    (folder / "other.png").write_bytes(b"png")
    (tmp_path / "outside.png").write_bytes(b"secret")
    os.symlink(tmp_path / "outside.png", folder / "link.png")
    job.add_sample(10, "s_10.png", "a cat")
    job.add_sample(11, "link.png", "planted link")
    job.add_sample(12, "missing.png", "never written")
    assert job.sample_path("s_10.png") == os.path.realpath(folder / "s_10.png")
    assert job.sample_path("other.png") is None  # exists but not registered
    assert job.sample_path("link.png") is None  # resolves outside the folder
    assert job.sample_path("missing.png") is None
    for bad in ("../outside.png", "..%2Foutside.png", "/etc/passwd", "..", "", "s_10.PNG ", "s_10.png\n",
                "a/b.png", "a\\b.png", "x" * 200 + ".png"):
        assert job.sample_path(bad) is None, bad
    snap = job.snapshot()
    assert snap["samples"][0] == {"step": 10, "name": "s_10.png", "label": "a cat",
                                  "url": f"/loralab/jobs/{job.id}/samples/s_10.png"}


@pytest.mark.parametrize("name", ["../x.png", "/tmp/x.png", "sub/x.png", "x.jpg", "x.png.exe", "x y.png", ".png",
                                  "x" * 129 + ".png", "é.png"])
def test_add_sample_refuses_paths_and_odd_names(registry, tmp_path, name):
    job = make_job(registry, tmp_path)
    with pytest.raises(JobError, match="bare name"):
        job.add_sample(1, name, "label")
    assert job.snapshot()["samples"] == []


def test_requests_round_trip_and_end_with_the_job(registry, events, tmp_path):
    job = make_job(registry, tmp_path)
    assert job.take_requests() == set()
    events.clear()
    job.request("sample")
    job.request("save")
    job.request("save")
    assert events and events[-1][0] == EVENT_PROGRESS  # a request shows at once, not throttled away
    assert job.snapshot()["pending_requests"] == ["sample", "save"]
    assert job.take_requests() == {"sample", "save"}
    assert job.take_requests() == set() and job.snapshot()["pending_requests"] == []
    with pytest.raises(JobError, match="Unknown action"):
        job.request("delete")
    job.request("stop")
    job.finish("stopped", lora_name="my-lora.safetensors")
    assert job.snapshot()["pending_requests"] == []
    with pytest.raises(JobError, match="already ended"):
        job.request("save")


def test_finish_validates_and_happens_once(registry, events, tmp_path):
    job = make_job(registry, tmp_path)
    with pytest.raises(JobError, match="expected one of"):
        job.finish("running")
    assert job.finish("error", error="CUDA out of memory at step 3; lower the batch size.")
    assert not job.finish("done")
    snap = job.snapshot()
    assert snap["state"] == "error" and "out of memory" in snap["error"]
    assert [e for e, _ in events].count(EVENT_FINISHED) == 1
    other = make_job(registry, tmp_path)
    other.finish("error")
    assert "host's log" in other.snapshot()["error"]


def test_bad_inputs_name_the_field(registry, tmp_path):
    with pytest.raises(JobError, match="total_steps=0"):
        registry.create("x", 0, str(tmp_path))
    job = make_job(registry, tmp_path)
    with pytest.raises(JobError, match="step=-1"):
        job.record_step(-1, 10, 0.1, 0.1, 1e-4, 0.1)


def test_a_failing_publisher_never_stops_training(clock, tmp_path, caplog):
    def broken(event: str, data: dict) -> None:
        raise RuntimeError("Event loop is closed")

    registry = JobRegistry(publish=broken, clock=clock)
    job = make_job(registry, tmp_path)
    step(job, 1)
    job.finish("done")
    assert job.state == "done"
    assert sum("could not push" in r.message for r in caplog.records) == 1


def test_publisher_may_read_the_job_back(clock, tmp_path):
    """Events go out after the lock is released, so a publisher calling into the job does not deadlock."""
    registry = JobRegistry(clock=clock)
    seen = []
    registry.set_publisher(lambda event, data: seen.append(registry.get(data["id"]).snapshot()["step"]))
    job = make_job(registry, tmp_path)
    clock.now += 1.0
    step(job, 3)
    assert seen == [0, 3]


def test_thread_safety_smoke(tmp_path):
    registry = JobRegistry(publish=lambda event, data: json.dumps(data), max_jobs=8)
    job = make_job(registry, tmp_path)
    errors: list[BaseException] = []

    def trainer() -> None:
        for n in range(1, 3001):
            step(job, n, total=3000, seconds=0.001)
            if n % 500 == 0:
                job.add_checkpoint(n, f"c{n}.safetensors")
            job.take_requests()

    def reader() -> None:
        try:
            for _ in range(120):
                json.dumps(job.snapshot())
                job.loss_history(0)
                registry.list()
                job.request("sample")
                registry.create("other", 5, str(tmp_path)).finish("done")
        except BaseException as e:  # noqa: BLE001 - collected and re-raised in the main thread
            errors.append(e)

    threads = [threading.Thread(target=reader) for _ in range(3)] + [threading.Thread(target=trainer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert job.snapshot()["step"] == 3000 and len(job.loss_history(0)) == 3000
    assert len(job.snapshot()["checkpoints"]) == 6 and registry.get(job.id) is job
    assert len(registry.list()) <= 8


def test_phase_changes_go_out_at_once_and_detail_changes_at_the_progress_rate(registry, events, clock, tmp_path):
    job = registry.create("run", 10, str(tmp_path), node_id=7)
    job.start()
    events.clear()
    job.set_phase("encoding", "1/3")
    job.set_phase("encoding", "2/3")  # same phase, published too recently
    clock.now += 1.0
    job.set_phase("encoding", "3/3")
    job.set_phase("training")  # a new phase: at once
    assert [(e, d["phase"], d["phase_detail"]) for e, d in events] == [
        (EVENT_PROGRESS, "encoding", "1/3"), (EVENT_PROGRESS, "encoding", "3/3"), (EVENT_PROGRESS, "training", None)]
    assert job.phase == "training" and registry.list()[0]["phase"] == "training"
    assert job.snapshot()["node_id"] == "7" and registry.list()[0]["node_id"] == "7"


def test_phase_seconds_add_up_every_spell_of_a_phase_and_stop_at_the_end(registry, clock, tmp_path):
    job = registry.create("run", 10, str(tmp_path))
    job.start()
    assert job.snapshot()["phase_seconds"] == {}
    job.set_phase("encoding", "1/2")
    clock.now += 2.0
    job.set_phase("encoding", "2/2")  # a detail change is the same spell
    clock.now += 1.5
    job.set_phase("sampling", "step 0")
    clock.now += 4.0
    job.set_phase("training")
    clock.now += 10.0
    assert job.snapshot()["phase_seconds"] == {"encoding": 3.5, "sampling": 4.0, "training": 10.0}  # so far
    job.set_phase("sampling", "step 5")
    clock.now += 1.0
    job.set_phase("training")
    clock.now += 2.0
    job.finish("done")
    clock.now += 100.0  # after the end nothing more is counted
    assert job.snapshot()["phase_seconds"] == {"encoding": 3.5, "sampling": 5.0, "training": 12.0}


def test_a_removed_checkpoint_leaves_the_snapshot(registry, events, tmp_path):
    job = registry.create("run", 10, str(tmp_path))
    job.add_checkpoint(1, "run-step1.safetensors")
    job.add_checkpoint(2, "run-step2.safetensors")
    events.clear()
    job.remove_checkpoint("run-step1.safetensors")
    assert [c["lora_name"] for c in job.snapshot()["checkpoints"]] == ["run-step2.safetensors"]
    assert events[-1][0] == EVENT_CHECKPOINT


def test_the_histogram_names_the_runs_timestep_distribution(registry, events, tmp_path):
    job = registry.create("run", 10, str(tmp_path))
    job.set_timestep_sampling("logit_normal")
    assert job.snapshot()["timestep_histogram"] is None, "nothing to draw before the first step"
    job.record_timesteps([0, 999, 512], 1000)
    step(job, 1)
    histogram = events[-1][1]["timestep_histogram"]  # published with the step
    assert histogram["sampling"] == "logit_normal" and histogram["range"] == [0, 1000]
    assert histogram["counts"] == [1] + [0] * 9 + [1] + [0] * 8 + [1]
    assert registry.create("other", 10, str(tmp_path)).snapshot()["timestep_histogram"] is None
    unnamed = registry.create("unnamed", 10, str(tmp_path))
    unnamed.record_timesteps([5], 1000)
    assert unnamed.snapshot()["timestep_histogram"]["sampling"] is None, "a trainer that did not say"
