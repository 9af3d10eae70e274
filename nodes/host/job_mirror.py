"""A training job that runs in other processes (the workers' `--serve` status routes), replayed into a job of this
host's registry, so the editor's dashboard, the websocket events and /loralab/jobs show it as any run.

Every change is replayed through the Job's own methods (steps, phases, timesteps, checkpoints, samples,
validation), so the local job publishes the same events an in-process run would; the dashboard's requests to
it are passed on to the workers' routes.
"""
from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from typing import Any

from ...trainer.jobs import Job
from ...trainer.timestep_histogram import TIMESTEP_BINS

log = logging.getLogger(__name__)
HTTP_TIMEOUT = 10.0


class JobMirror:
    """Follows the job of node `node_id` served at `base_url` into `job` (created by the caller, with its own
    sample folder). `poll` reads and replays what changed; `finish` ends the local job as the remote one ended."""

    def __init__(self, job: Job, base_url: str, node_id: str | None) -> None:
        self.job, self.base_url, self.node_id = job, base_url.rstrip("/"), node_id
        self.remote_id: str | None = None
        self.step = 0
        self.phase: tuple[str | None, str | None] = (None, None)
        self.timestep_counts: list[int] = [0] * TIMESTEP_BINS
        self.validation: tuple[int | None, float | None] = (None, None)
        self.checkpoints: dict[str, int] = {}
        self.samples: set[str] = set()
        self.batch_set = False
        self.snapshot: dict[str, Any] | None = None  # the newest remote snapshot

    # --- reading the remote routes ---------------------------------------------------------------------
    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(self.base_url + path, timeout=HTTP_TIMEOUT) as answer:
            return json.loads(answer.read())

    def _find_job(self) -> str | None:
        jobs = self._get("/loralab/jobs")
        mine = [j for j in jobs if self.node_id is None or str(j.get("node_id")) == str(self.node_id)]
        return mine[0]["id"] if mine else None  # newest first; the workers run one job

    def poll(self) -> dict[str, Any] | None:
        """Replays what changed since the last poll; the remote snapshot, or None while nothing is served yet."""
        try:
            if self.remote_id is None:
                self.remote_id = self._find_job()
                if self.remote_id is None:
                    return None
            snapshot = self._get(f"/loralab/jobs/{self.remote_id}")
            points = self._get(f"/loralab/jobs/{self.remote_id}/loss?since={self.step}")["points"]
        except (urllib.error.URLError, OSError, json.JSONDecodeError):
            return None  # not serving yet (starting up) or any more (ended): the process decides
        self.apply(snapshot, points)
        return snapshot

    # --- replaying -------------------------------------------------------------------------------------
    def apply(self, snapshot: dict[str, Any], points: list[list[Any]]) -> None:
        """Replays a remote snapshot and its new loss points [[step, loss, smoothed], ...] into the local job."""
        self.snapshot = snapshot
        if snapshot.get("batch") and not self.batch_set:
            batch = snapshot["batch"]
            self.job.set_batch(batch["batch_size"], batch["grad_accumulation"], batch["world_size"])
            self.batch_set = True
        self._timesteps(snapshot.get("timestep_histogram"))
        seconds = 1.0 / snapshot["steps_per_second"] if snapshot.get("steps_per_second") else None
        for step, loss, smoothed in points:
            if step > self.step:
                self.job.record_step(step, snapshot["total"], loss, smoothed, snapshot.get("lr"), seconds,
                                     snapshot.get("memory_bytes"))
                self.step = step
        if snapshot["step"] > self.step:  # points not read in time (the last snapshot, from the workers' result)
            self.job.record_step(snapshot["step"], snapshot["total"], snapshot.get("loss"),
                                 snapshot.get("smoothed_loss"), snapshot.get("lr"), seconds,
                                 snapshot.get("memory_bytes"))
            self.step = snapshot["step"]
        phase = (snapshot.get("phase"), snapshot.get("phase_detail"))
        if phase != self.phase and phase[0]:
            self.job.set_phase(*phase)
        self.phase = phase
        validation = (snapshot.get("validation_step"), snapshot.get("validation_loss"))
        if validation != self.validation and validation[0] is not None:
            self.job.record_validation(*validation)
        self.validation = validation
        self._checkpoints(snapshot.get("checkpoints") or [])
        for sample in snapshot.get("samples") or []:
            if sample["name"] not in self.samples:
                self._copy_sample(sample)

    def fill_history(self, losses: list[float], total: int) -> None:
        """The steps the last poll missed (the workers end before they are read), from the run's loss history."""
        for step, loss in enumerate(losses, start=1):
            if step > self.step:
                self.job.record_step(step, total, loss, None, None, None)
                self.step = step

    def _timesteps(self, histogram: dict[str, Any] | None) -> None:
        """The remote counts per bin, replayed as draws at each bin's first timestep: the same counts here."""
        if not histogram:
            return
        num_timesteps = int(histogram["range"][1])
        draws = []
        for i, (now, before) in enumerate(zip(histogram["counts"], self.timestep_counts, strict=True)):
            first = -(-i * num_timesteps // TIMESTEP_BINS)  # the smallest t with t * bins // range == i
            draws += [first] * (now - before)
        if draws:
            self.job.record_timesteps(draws, num_timesteps)
        self.timestep_counts = list(histogram["counts"])

    def _checkpoints(self, remote: list[dict[str, Any]]) -> None:
        names = {c["lora_name"]: c["step"] for c in remote}
        for name, step in names.items():
            if name not in self.checkpoints:
                self.job.add_checkpoint(step, name)
        for name in set(self.checkpoints) - set(names):
            self.job.remove_checkpoint(name)
        self.checkpoints = names

    def _copy_sample(self, sample: dict[str, Any]) -> None:
        """The sample image, fetched from the workers' route into the local job's own folder."""
        try:
            with urllib.request.urlopen(self.base_url + sample["url"], timeout=HTTP_TIMEOUT) as answer:
                image = answer.read()
        except (urllib.error.URLError, OSError):
            return  # tried again at the next poll
        with open(os.path.join(self.job.folder, sample["name"]), "wb") as f:
            f.write(image)
        self.job.add_sample(sample["step"], sample["name"], sample["label"])
        self.samples.add(sample["name"])

    # --- the dashboard's requests and the end ------------------------------------------------------------
    def forward_requests(self) -> set[str]:
        """Passes the dashboard's requests (stop, save, sample) on to the workers; returns those not delivered."""
        undelivered = set()
        for action in self.job.take_requests():
            if self.remote_id is None:
                undelivered.add(action)
                continue
            request = urllib.request.Request(f"{self.base_url}/loralab/jobs/{self.remote_id}/{action}", data=b"{}",
                                             method="POST", headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT):
                    pass
            except (urllib.error.URLError, OSError) as e:
                log.warning("LoRA Lab: could not pass '%s' on to the workers: %s", action, e)
                undelivered.add(action)
        return undelivered

    def finish(self, state: str, error: str | None, lora_name: str | None) -> None:
        self.job.finish(state, error=error, lora_name=lora_name)
