"""Training jobs as the dashboard sees them: a thread-safe registry of live status, loss history and requests.

The trainer (on the host's worker thread) writes through `Job` methods; the HTTP routes (on the event
loop) read `snapshot()` / `loss_history()` and post control requests that the trainer collects with
`take_requests()`. Every change can be pushed to a `publish(event, data)` callable: progress at most
every `progress_interval` seconds, samples, checkpoints, requests and the end of a run at once.
Nothing here knows the host; the host side wires `publish` to its websocket.
"""

from __future__ import annotations

import logging
import math
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from .errors import JobError
from .timestep_histogram import TimestepHistogram

logger = logging.getLogger(__name__)

Publish = Callable[[str, dict[str, Any]], None]

JOB_ID_PATTERN = re.compile(r"[0-9a-f]{16}")
SAMPLE_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,128}\.png")
ACTIONS = frozenset({"stop", "save", "sample"})
STATES = ("queued", "running", "done", "stopped", "interrupted", "error")
END_STATES = frozenset({"done", "stopped", "interrupted", "error"})
MAX_JOBS = 50
MAX_HISTORY_POINTS = 20_000  # beyond this the older half of the loss history is thinned to every other point
PROGRESS_INTERVAL = 0.25  # seconds: at most ~4 progress events a second
SPEED_SMOOTHING = 0.9  # EMA factor of seconds per step, so the ETA does not jump with each step's time

EVENT_STARTED = "loralab.started"
EVENT_PROGRESS = "loralab.progress"
EVENT_SAMPLE = "loralab.sample"
EVENT_CHECKPOINT = "loralab.checkpoint"
EVENT_FINISHED = "loralab.finished"


def is_job_id(value: object) -> bool:
    """True if `value` has the form of a job id (16 lowercase hex characters); says nothing of existence."""
    return isinstance(value, str) and JOB_ID_PATTERN.fullmatch(value) is not None


def is_sample_name(value: object) -> bool:
    """True if `value` is a bare PNG file name we accept for samples (letters, digits, `_.-`; no path)."""
    return isinstance(value, str) and SAMPLE_NAME_PATTERN.fullmatch(value) is not None and value not in (".", "..")


def _finite(value: float | None) -> float | None:
    """The value as a float, or None when absent or NaN/Inf (JSON has no NaN; the dashboard shows a gap)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class Job:
    """One training run's live status. Create through `JobRegistry.create`; every method is thread-safe."""

    def __init__(self, registry: JobRegistry, job_id: str, name: str, total_steps: int, folder: str,
                 node_id: str | None = None) -> None:
        self.id = job_id
        self.name = name
        self.node_id = node_id  # the graph node that runs it, so the editor binds its dashboard to that node
        self._registry = registry
        self._folder = os.path.realpath(folder)
        self._lock = threading.Lock()
        self._state = "queued"
        self._phase: str | None = None
        self._phase_detail: str | None = None
        self._phase_since: float | None = None  # registry clock when the current phase began
        self._phase_seconds: dict[str, float] = {}  # phase -> seconds spent in it so far (all its spells)
        self._step = 0
        self._total = total_steps
        self._loss: float | None = None
        self._smoothed: float | None = None
        self._validation_loss: float | None = None
        self._validation_step: int | None = None
        self._lr: float | None = None
        self._seconds_per_step: float | None = None
        self._memory_bytes: int | None = None
        self._history: list[tuple[int, float | None, float | None]] = []
        self._validation_history: list[tuple[int, float | None]] = []
        self._samples: dict[str, dict[str, Any]] = {}  # name -> entry, in the order added
        self._checkpoints: list[dict[str, Any]] = []
        self._requests: set[str] = set()
        self._error: str | None = None
        self._lora_name: str | None = None
        self._created_at = registry.wall_clock()
        self._started_at: float | None = None
        self._updated_at = self._created_at
        self._last_progress_publish: float | None = None
        self._timesteps = TimestepHistogram()
        self._batch: dict[str, int] | None = None  # images per update and how they are made up
        self._memory_plan: str | None = None  # how the run fits in memory, in words (memory_mode auto may choose)
        self._weights_on_device: dict[str, int] | None = None  # the model's weights the last load left on the device

    # --- written by the trainer -------------------------------------------------------------------
    def start(self) -> None:
        """Marks the job running (called once the model and data are ready) and announces it."""
        with self._lock:
            self._state = "running"
            self._started_at = self._touch()
        self._publish(EVENT_STARTED)

    def set_batch(self, batch_size: int, grad_accumulation: int, world_size: int = 1) -> None:
        """The run's effective batch: batch_size (per process) x grad_accumulation x world_size processes."""
        with self._lock:
            self._batch = {"batch_size": int(batch_size), "grad_accumulation": int(grad_accumulation),
                           "world_size": int(world_size),
                           "effective": int(batch_size) * int(grad_accumulation) * int(world_size)}

    def set_memory_plan(self, description: str) -> None:
        """How the run fits in memory, e.g. "gradient checkpointing (auto): about 5.2 GiB with it, ..."."""
        with self._lock:
            self._memory_plan = description

    def set_weights_on_device(self, on_device_bytes: int, total_bytes: int) -> None:
        """How much of the model's weights the training load left on the device (the rest is offloaded)."""
        with self._lock:
            self._weights_on_device = {"bytes": on_device_bytes, "total_bytes": total_bytes}

    def set_phase(self, phase: str, detail: str | None = None) -> None:
        """What the run is doing now ("encoding", "sampling", "training", ...) and how far ("3/40"); published
        when the phase changes, at the progress rate when only the detail does."""
        with self._lock:
            changed = phase != self._phase
            if changed:
                self._close_phase_locked()
                self._phase_since = self._registry.clock()
            self._phase, self._phase_detail = phase, detail
            self._touch()
            due = changed or self._last_progress_publish is None or \
                self._registry.clock() - self._last_progress_publish >= self._registry.progress_interval
        if due:
            self._publish(EVENT_PROGRESS)

    @property
    def phase(self) -> str | None:
        """The phase with its detail, e.g. "encoding 3/40", or None before the run has begun."""
        with self._lock:
            return " ".join(p for p in (self._phase, self._phase_detail) if p) or None

    @property
    def folder(self) -> str:
        """Where the job's sample images are written (chosen by the trainer, never by a request)."""
        return self._folder

    def record_step(self, step: int, total: int, loss: float, smoothed_loss: float, lr: float,
                    seconds_per_step: float, memory_bytes: int | None = None) -> None:
        """Records one finished update; publishes a progress event unless one went out very recently."""
        step, total = int(step), int(total)
        if step < 0 or total < 1:
            raise JobError(f"record_step got step={step}, total={total}; expected step >= 0 and total >= 1.")
        with self._lock:
            if self._state == "queued":
                self._state, self._started_at = "running", self._registry.wall_clock()
            self._step, self._total = step, total
            self._loss, self._smoothed, self._lr = _finite(loss), _finite(smoothed_loss), _finite(lr)
            seconds = _finite(seconds_per_step)
            if seconds is not None and seconds > 0:
                self._seconds_per_step = seconds if self._seconds_per_step is None else (
                    SPEED_SMOOTHING * self._seconds_per_step + (1 - SPEED_SMOOTHING) * seconds)
            if memory_bytes is not None:
                self._memory_bytes = int(memory_bytes)
            self._history.append((step, self._loss, self._smoothed))
            if len(self._history) > MAX_HISTORY_POINTS:
                half = len(self._history) // 2
                self._history[:half] = self._history[:half:2]
            self._touch()
            now = self._registry.clock()
            due = self._last_progress_publish is None or now - self._last_progress_publish >= \
                self._registry.progress_interval
        if due:
            self._publish(EVENT_PROGRESS)

    def record_timesteps(self, timesteps: Sequence[int], num_timesteps: int) -> None:
        """Counts training timesteps drawn (each in [0, num_timesteps)) into TIMESTEP_BINS equal bins; published
        with the next progress event. A new num_timesteps starts the counts again."""
        with self._lock:
            self._timesteps.record(timesteps, num_timesteps)

    def set_timestep_sampling(self, sampling: str) -> None:
        """Names the distribution the timesteps are drawn from (the run's timestep_sampling setting, e.g.
        "logit_normal"), shown with the histogram."""
        with self._lock:
            self._timesteps.sampling = str(sampling)

    def record_validation(self, step: int, loss: float) -> None:
        """Records the validation loss measured after `step` updates, and publishes it at once."""
        with self._lock:
            self._validation_step, self._validation_loss = int(step), _finite(loss)
            self._validation_history.append((int(step), self._validation_loss))
            self._touch()
        self._publish(EVENT_PROGRESS)

    def add_sample(self, step: int, file_name: str, label: str) -> dict[str, Any]:
        """Registers a sample image already written as `file_name` inside the job's folder; returns its entry.

        Only registered names are ever served, and only from this folder (see `sample_path`).
        """
        if not is_sample_name(file_name):
            raise JobError(f"Sample file name {file_name!r} is not allowed: use a bare name of letters, digits, "
                           "'_', '.' or '-' ending in .png (at most 132 characters), without any folder.")
        entry = {"step": int(step), "name": file_name, "label": str(label),
                 "url": f"/loralab/jobs/{self.id}/samples/{file_name}"}
        with self._lock:
            self._samples.pop(file_name, None)  # a re-written name moves to the end with its new step
            self._samples[file_name] = entry
            self._touch()
        self._publish(EVENT_SAMPLE)
        return dict(entry)

    def add_checkpoint(self, step: int, lora_name: str) -> None:
        """Records a checkpoint saved after `step` updates as `lora_name` (a name in the host's loras list)."""
        with self._lock:
            self._checkpoints.append({"step": int(step), "lora_name": str(lora_name)})
            self._touch()
        self._publish(EVENT_CHECKPOINT)

    def remove_checkpoint(self, lora_name: str) -> None:
        """Forgets a checkpoint the trainer deleted (keep_last), so the dashboard no longer offers it."""
        with self._lock:
            self._checkpoints = [c for c in self._checkpoints if c["lora_name"] != lora_name]
            self._touch()
        self._publish(EVENT_CHECKPOINT)

    def finish(self, state: str, error: str | None = None, lora_name: str | None = None) -> bool:
        """Ends the job as done/stopped/interrupted/error; returns False (and changes nothing) if it had ended."""
        if state not in END_STATES:
            raise JobError(f"finish got state={state!r}; expected one of {', '.join(sorted(END_STATES))}.")
        if state == "error" and not error:
            error = "Training failed without an error message; see the host's log."
        with self._lock:
            if self._state in END_STATES:
                return False
            self._state, self._error, self._lora_name = state, error, lora_name
            self._close_phase_locked()
            self._requests.clear()
            self._touch()
        self._publish(EVENT_FINISHED)
        return True

    def take_requests(self) -> set[str]:
        """The control requests posted since the last call ({"stop", "save", "sample"} subset), now cleared."""
        with self._lock:
            taken, self._requests = self._requests, set()
            if taken:
                self._touch()
        return taken

    # --- called by the routes ---------------------------------------------------------------------
    def request(self, action: str) -> None:
        """Asks the trainer to stop-and-save, save now or sample now; it acts at its next step."""
        if action not in ACTIONS:
            raise JobError(f"Unknown action {action!r}; expected one of {', '.join(sorted(ACTIONS))}.")
        with self._lock:
            if self._state in END_STATES:
                raise JobError(f"Job {self.id} has already ended ({self._state}); it takes no more requests.")
            self._requests.add(action)
            self._touch()
        self._publish(EVENT_PROGRESS)

    @property
    def state(self) -> str:
        with self._lock:
            return self._state

    def snapshot(self) -> dict[str, Any]:
        """Everything the dashboard shows, as plain JSON-able values (no paths)."""
        with self._lock:
            return self._snapshot_locked()

    def summary(self) -> dict[str, Any]:
        """The few fields the job list shows."""
        with self._lock:
            return {"id": self.id, "name": self.name, "node_id": self.node_id, "state": self._state,
                    "phase": self._phase, "step": self._step,
                    "total": self._total, "smoothed_loss": self._smoothed, "created_at": self._created_at,
                    "started_at": self._started_at, "updated_at": self._updated_at}

    def loss_history(self, since_step: int = 0) -> list[list[Any]]:
        """[[step, loss, smoothed_loss], ...] for the steps after `since_step` (older points may be thinned)."""
        with self._lock:
            return [[s, loss, smoothed] for s, loss, smoothed in self._history if s > since_step]

    def validation_history(self, since_step: int = 0) -> list[list[Any]]:
        """[[step, validation_loss], ...] for the measurements after `since_step`."""
        with self._lock:
            return [[s, loss] for s, loss in self._validation_history if s > since_step]

    def sample_path(self, name: str) -> str | None:
        """The file of a registered sample, inside this job's folder; None for any other name or a missing file."""
        if not is_sample_name(name):
            return None
        with self._lock:
            if name not in self._samples:
                return None
        path = os.path.realpath(os.path.join(self._folder, name))
        # realpath also resolves a symlink planted in the folder: the file itself must live there.
        if os.path.dirname(path) != self._folder or not os.path.isfile(path):
            return None
        return path

    # --- internals --------------------------------------------------------------------------------
    def _touch(self) -> float:
        self._updated_at = self._registry.wall_clock()
        return self._updated_at

    def _close_phase_locked(self) -> None:
        """Adds the time since the current phase began to its total."""
        if self._phase is not None and self._phase_since is not None:
            spent = self._registry.clock() - self._phase_since
            self._phase_seconds[self._phase] = self._phase_seconds.get(self._phase, 0.0) + spent
        self._phase_since = None

    def _phase_seconds_locked(self) -> dict[str, float]:
        seconds = dict(self._phase_seconds)
        if self._phase is not None and self._phase_since is not None:  # the phase still under way counts so far
            seconds[self._phase] = seconds.get(self._phase, 0.0) + self._registry.clock() - self._phase_since
        return {phase: round(value, 3) for phase, value in seconds.items()}

    def _snapshot_locked(self) -> dict[str, Any]:
        seconds = self._seconds_per_step
        running = self._state == "running"
        eta = max(0, self._total - self._step) * seconds if running and seconds is not None else None
        return {
            "id": self.id, "name": self.name, "node_id": self.node_id, "state": self._state, "phase": self._phase,
            "phase_detail": self._phase_detail, "step": self._step, "total": self._total,
            "loss": self._loss, "smoothed_loss": self._smoothed, "validation_loss": self._validation_loss,
            "validation_step": self._validation_step, "lr": self._lr,
            "steps_per_second": 1.0 / seconds if seconds else None, "eta_seconds": eta,
            "memory_bytes": self._memory_bytes, "samples": [dict(s) for s in self._samples.values()],
            "checkpoints": [dict(c) for c in self._checkpoints], "error": self._error,
            "lora_name": self._lora_name, "created_at": self._created_at, "started_at": self._started_at,
            "updated_at": self._updated_at, "pending_requests": sorted(self._requests),
            "world_size": self._batch["world_size"] if self._batch else 1,  # training processes (torchrun)
            "batch": dict(self._batch) if self._batch else None,
            "memory_plan": self._memory_plan,
            "weights_on_device": self._weights_on_device,  # None until the model is loaded for training
            "phase_seconds": self._phase_seconds_locked(),  # where the run's time went, phase by phase
            "timestep_histogram": self._timesteps.snapshot(),  # None before any step
        }

    def _publish(self, event: str) -> None:
        """Sends the current snapshot as `event`, outside the lock (a publisher may call back into the job)."""
        with self._lock:
            self._last_progress_publish = self._registry.clock()
            data = self._snapshot_locked()
        self._registry.publish(event, data)


class JobRegistry:
    """The jobs of this process, newest last, at most `max_jobs` (finished ones are dropped first)."""

    def __init__(self, publish: Publish | None = None, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time, max_jobs: int = MAX_JOBS,
                 progress_interval: float = PROGRESS_INTERVAL) -> None:
        self._publish = publish
        self.clock = clock
        self.wall_clock = wall_clock
        self.max_jobs = max_jobs
        self.progress_interval = progress_interval
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._publish_failed = False

    def set_publisher(self, publish: Publish | None) -> None:
        """Sets (or clears) where events go, e.g. the host's websocket broadcast."""
        self._publish = publish

    def publish(self, event: str, data: dict[str, Any]) -> None:
        """Hands an event to the publisher; a failing publisher is logged once and never stops training."""
        publish = self._publish
        if publish is None:
            return
        try:
            publish(event, data)
        except Exception:  # noqa: BLE001 - a dashboard failure must not end a training run; the route still works
            if not self._publish_failed:
                logger.exception("LoRA Lab could not push the %s event; live updates stop, polling still works",
                                 event)
            self._publish_failed = True

    def create(self, name: str, total_steps: int, folder: str, node_id: str | None = None) -> Job:
        """A new queued job whose sample images live in `folder` (chosen by the caller, never by a request)."""
        if int(total_steps) < 1:
            raise JobError(f"A job needs at least one step; got total_steps={total_steps}.")
        with self._lock:
            job_id = secrets.token_hex(8)
            while job_id in self._jobs:
                job_id = secrets.token_hex(8)
            job = Job(self, job_id, str(name), int(total_steps), folder, None if node_id is None else str(node_id))
            self._jobs[job_id] = job
            self._evict_locked()
        return job

    def get(self, job_id: object) -> Job | None:
        """The job with this id, or None if the id is malformed or unknown."""
        if not is_job_id(job_id):
            return None
        with self._lock:
            return self._jobs.get(job_id)

    def list(self) -> list[dict[str, Any]]:
        """Summaries of all kept jobs, newest first."""
        with self._lock:
            jobs = list(self._jobs.values())
        return [job.summary() for job in reversed(jobs)]

    def _evict_locked(self) -> None:
        excess = len(self._jobs) - self.max_jobs
        if excess <= 0:
            return
        ended = [jid for jid, job in self._jobs.items() if job.state in END_STATES]
        others = [jid for jid in self._jobs if jid not in ended]
        for jid in (ended + others)[:excess]:  # oldest ended jobs first, running ones only if all else is gone
            del self._jobs[jid]
