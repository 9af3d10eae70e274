"""Train LoRA in torchrun worker processes beside the host (the `workers` option): the host keeps its own device
for the graph, its dashboard follows the workers' job, and the node returns what an in-process run returns.

The workers run LoRA Lab's command line on this node's part of the queued graph, in this host's folders (the
files land in the same loras folder). The host's Cancel is SIGTERM to torchrun, which every worker takes as
Cancel (the last whole step is saved); the dashboard's requests go to the workers' own routes. At the end the
written LoRA is applied to the graph's MODEL and CLIP with the host's own patches.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import comfy.cli_args
import comfy.model_management
import comfy.utils
import folder_paths

from ...cli.processes import peer_result_files
from ...cli.run import EXIT_ERROR
from ...trainer.errors import TrainingStopped
from ...trainer.training.config import Optimisation
from ...trainer.training.workers import WorkerRequest
from .job_mirror import JobMirror
from .jobs import JOBS
from .lora_files import parsed_loras
from .patching import patch_model_and_clip
from .run_files import RunFiles
from .worker_launch import free_port, placement, worker_command, worker_environment, worker_prompt

log = logging.getLogger(__name__)
POLL_SECONDS = 0.25  # as often as the job publishes progress
LOG_TAIL_LINES = 12
STOP_GRACE = 120.0  # seconds the workers get to save their last whole step when the host itself fails


@dataclass
class WorkerRunResult:
    model: object
    clip: object
    lora_name: str
    loss_history: list[float]
    ui: dict[str, Any]  # the workers' node outputs: the summary, lora_name, losses, as an in-process run shows


@dataclass
class WorkerFiles:
    """The workers' graph, their outcome and their log, in the local job's folder."""
    folder: Path

    @property
    def prompt(self) -> Path:
        return self.folder / "workers-prompt.json"

    @property
    def result(self) -> Path:
        return self.folder / "workers-result.json"

    @property
    def log(self) -> Path:
        return self.folder / "workers.log"

    def log_tail(self) -> str:
        lines = [line for line in self.log.read_text(errors="replace").splitlines() if line.strip()] \
            if self.log.exists() else []
        return "\n".join(lines[-LOG_TAIL_LINES:])


def run_on_workers(model, clip, request: WorkerRequest, prompt: dict[str, Any] | None, node_id: str | None,
                   files: RunFiles, opt: Optimisation) -> WorkerRunResult:
    """Trains this node's run in worker processes and returns the graph's MODEL and CLIP with the LoRA applied."""
    if prompt is None or node_id is None:
        raise TrainingStopped("workers: this Train LoRA node was not given the queued graph; queue it from the "
                              "editor (or run the workflow headless with LoRA Lab's command line)")
    where = placement(request)
    root = os.path.join(folder_paths.get_output_directory(), "loralab")
    os.makedirs(root, exist_ok=True)
    work = WorkerFiles(Path(tempfile.mkdtemp(prefix=f"{files.name}-{int(time.time())}-", dir=root)))
    job = JOBS.create(files.name, opt.steps, str(work.folder), node_id=node_id)
    job.set_batch(opt.batch_size, opt.grad_accumulation, where.count)
    job.set_timestep_sampling(opt.timestep_sampling)
    job.start()
    job.set_phase("starting workers", where.describe())
    work.prompt.write_text(json.dumps(worker_prompt(prompt, node_id)), encoding="utf-8")
    port = free_port()
    mirror = JobMirror(job, f"http://127.0.0.1:{port}", node_id)
    command = worker_command(where, work.prompt, port, work.result, comfy.cli_args.args)
    log.info("LoRA Lab: training '%s' in %s: %s", files.name, where.describe(), " ".join(command))
    with open(work.log, "w", encoding="utf-8") as out:
        launcher = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=worker_environment(where),
                                    cwd=work.folder)
        try:
            cancelled = follow(launcher, mirror, opt.steps, node_id)
        except BaseException as e:
            stop_workers(launcher)
            job.finish("error", error=f"following the workers failed: {e}")
            raise
    return finish(model, clip, mirror, work, launcher.returncode, cancelled, where.describe())


def follow(launcher: subprocess.Popen, mirror: JobMirror, total: int, node_id: str) -> bool:
    """Mirrors the workers' job until torchrun exits; the host's Cancel (and a Stop the workers cannot take yet)
    is SIGTERM to torchrun, which passes it on to every worker. Returns whether the host cancelled."""
    progress = comfy.utils.ProgressBar(total, node_id=node_id)
    while launcher.poll() is None:
        mirror.poll()
        stop_undelivered = "stop" in mirror.forward_requests()  # the workers do not serve yet
        if host_cancelled(progress, mirror.step, total):
            launcher.send_signal(signal.SIGTERM)
            while launcher.poll() is None:  # sent once: the workers save their last whole step and end
                mirror.poll()
                time.sleep(POLL_SECONDS)
            return True
        if stop_undelivered:
            launcher.send_signal(signal.SIGTERM)
        time.sleep(POLL_SECONDS)
    return False


def stop_workers(launcher: subprocess.Popen) -> None:
    """SIGTERM, which torchrun passes on (a SIGKILL would leave its workers running); SIGKILL after STOP_GRACE."""
    launcher.terminate()
    try:
        launcher.wait(timeout=STOP_GRACE)
    except subprocess.TimeoutExpired:
        launcher.kill()
        launcher.wait()


def host_cancelled(progress: comfy.utils.ProgressBar, step: int, total: int) -> bool:
    """The host's Cancel: its flag, or its progress hook raising (which clears the flag as it raises)."""
    if comfy.model_management.processing_interrupted():
        return True
    try:
        progress.update_absolute(step, total)
    except comfy.model_management.InterruptProcessingException:
        return True
    return False


def read_outcome(work: WorkerFiles, exit_code: int) -> dict[str, Any]:
    """The command line's --result (exit code, message, job snapshot, node outputs), or the log's end without it."""
    if work.result.exists():
        return json.loads(work.result.read_text(encoding="utf-8"))
    return {"exit_code": exit_code, "message": f"the workers ended (exit code {exit_code}) before the run did:\n"
                                               f"{work.log_tail()}", "job": None, "outputs": None}


def peer_failure(work: WorkerFiles) -> str | None:
    """The first error another worker wrote of its own (e.g. it refused to overwrite the LoRA before the main
    one did): torchrun then stops the main worker, whose own outcome reads as a cancel."""
    peers = peer_result_files(work.result)
    if not peers:
        return None
    peer = json.loads(peers[0].read_text(encoding="utf-8"))
    return ((peer.get("job") or {}).get("error") or peer["message"]).strip()


def finish(model, clip, mirror: JobMirror, work: WorkerFiles, exit_code: int, cancelled: bool,
           where: str) -> WorkerRunResult:
    """Ends the local job as the workers' ended; the LoRA applied to MODEL and CLIP, or the workers' error."""
    outcome = read_outcome(work, exit_code)
    remote = outcome.get("job") or mirror.snapshot or {}
    outputs = outcome.get("outputs")
    if outputs:  # the steps the last poll missed, before the end's snapshot
        mirror.fill_history(outputs.get("loss_history") or [], remote.get("total") or mirror.job.snapshot()["total"])
    if remote:
        mirror.apply(remote, [])
    main_failed = work.result.exists() and outcome["exit_code"] == EXIT_ERROR  # its own error outranks the others'
    failure = None if cancelled or outputs or main_failed else peer_failure(work)
    state, error = ("error", failure) if failure else (remote.get("state"), remote.get("error"))
    if state in ("done", "stopped", "interrupted", "error"):
        mirror.finish(state, error, remote.get("lora_name"))
    if cancelled or (outputs is None and state in ("stopped", "interrupted")):
        if state not in ("stopped", "interrupted"):
            mirror.finish("interrupted", outcome["message"], remote.get("lora_name"))
        raise comfy.model_management.InterruptProcessingException()  # the prompt ends as interrupted
    if outputs is None:
        message = (error or outcome["message"]).strip()
        mirror.finish("error", message, remote.get("lora_name"))
        raise TrainingStopped(f"{message} (in {where}; their log: {work.log})")
    lora_name = outputs["lora_name"][0]
    new_model, new_clip, _ = patch_model_and_clip(model, clip, parsed_loras.get(lora_name), 1.0, 1.0)
    ui = {**outputs, "text": [f"{' '.join(outputs.get('text') or [])} ({where})"]}
    return WorkerRunResult(new_model, new_clip, lora_name, list(outputs.get("loss_history") or []), ui)
