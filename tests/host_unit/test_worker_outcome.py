"""How the editor's Train LoRA reads its torchrun workers' end (nodes/host/worker_run.py's `finish`): the files
the command line's processes leave in the job folder decide the node's error. When one worker fails on its own
first (it refuses to overwrite the LoRA before the main worker checks), torchrun stops the main worker, whose
outcome then reads as a cancel: the node must still fail with the failing worker's message."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli.processes import Processes
from cli.run import EXIT_ERROR, EXIT_STOPPED
from scripts.host_import import import_pack_module

WHERE = "2 worker processes on the CPU"
REFUSAL = "node 5 (Train LoRA) failed: 'wk.safetensors' already exists in /loras; choose another name"
CANCEL_READ = {"exit_code": EXIT_STOPPED, "message": "the run was cancelled before training started",
               "job": None, "outputs": None}


def write(path: Path, outcome: dict) -> None:
    path.write_text(json.dumps(outcome), encoding="utf-8")


@pytest.fixture()
def ending(tmp_path: Path):
    """finish() on a local job that mirrors workers never polled, with their files in `tmp_path`."""
    worker_run = import_pack_module("nodes.host.worker_run")
    mirror_module, jobs = import_pack_module("nodes.host.job_mirror"), import_pack_module("nodes.host.jobs")
    work = worker_run.WorkerFiles(tmp_path)
    job = jobs.JOBS.create(f"outcome-{tmp_path.name}", 3, str(tmp_path), node_id="5")
    job.start()
    mirror = mirror_module.JobMirror(job, "http://127.0.0.1:9", "5")

    def finish(cancelled: bool = False):
        return worker_run.finish(None, None, mirror, work, 1, cancelled, WHERE)
    return worker_run, work, job, finish


def peer_file(work, rank: int) -> Path:
    return Processes(rank, rank, 2).result_file(work.result)


def test_a_workers_own_error_is_the_nodes_error_when_the_main_worker_was_stopped_for_it(ending) -> None:
    worker_run, work, job, finish = ending
    write(work.result, CANCEL_READ)
    write(peer_file(work, 1), {"exit_code": EXIT_ERROR, "message": REFUSAL, "job": None, "outputs": None})
    with pytest.raises(worker_run.TrainingStopped) as raised:
        finish()
    assert str(raised.value).startswith(REFUSAL) and str(work.log) in str(raised.value)
    assert job.snapshot()["state"] == "error" and job.snapshot()["error"].startswith(REFUSAL)


def test_the_main_workers_own_error_outranks_what_the_others_say_of_it(ending) -> None:
    worker_run, work, job, finish = ending
    write(work.result, {"exit_code": EXIT_ERROR, "message": REFUSAL, "job": None, "outputs": None})
    write(peer_file(work, 1), {"exit_code": EXIT_ERROR, "message": "process 0 of 2 failed", "job": None,
                               "outputs": None})
    with pytest.raises(worker_run.TrainingStopped, match="already exists"):
        finish()


def test_the_hosts_cancel_stays_a_cancel_whatever_a_worker_wrote(ending) -> None:
    worker_run, work, job, finish = ending
    write(work.result, CANCEL_READ)
    write(peer_file(work, 1), {"exit_code": EXIT_ERROR, "message": REFUSAL, "job": None, "outputs": None})
    with pytest.raises(worker_run.comfy.model_management.InterruptProcessingException):
        finish(cancelled=True)
    assert job.snapshot()["state"] == "interrupted"


def test_workers_that_end_without_a_result_name_a_failing_worker_first(ending) -> None:
    """No main result (torchrun killed it): the log's end, unless a worker said why."""
    worker_run, work, job, finish = ending
    work.log.write_text("torch.distributed.elastic... exitcode: 1\n", encoding="utf-8")
    with pytest.raises(worker_run.TrainingStopped, match="exit code 1"):
        finish()
    write(peer_file(work, 1), {"exit_code": EXIT_ERROR, "message": REFUSAL, "job": None, "outputs": None})
    with pytest.raises(worker_run.TrainingStopped, match="already exists"):
        finish()
