"""One cancellation policy for a whole training run: the host's Cancel and the dashboard's requests, in every phase."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import comfy.model_management

from ...trainer.errors import RunHalted
from ...trainer.jobs import Job

CANCELLED = "cancelled"
STOPPED = "stopped from the dashboard"


class RunControl:
    """Cancel from the host and stop/save/sample requests from the dashboard.

    The host raises InterruptProcessingException from its ops on Cancel and clears its flag as it does, so a
    Cancel caught anywhere must be remembered here; `halted` then stays set for the rest of the run.
    """

    def __init__(self, job: Job) -> None:
        self.job = job
        self.halted: str | None = None
        self.halted_while: str | None = None  # the job's phase when the run was halted, for the message
        self.steps_over = False  # once every step is done Stop has nothing left to stop; Cancel still ends the run
        self.save_requested = False
        self.sample_requested = False

    def should_stop(self) -> str | None:
        """The loop's should_stop: polled before every update, and by `check` between other units of work."""
        if comfy.model_management.processing_interrupted():
            self.halt(CANCELLED)
        requests = self.job.take_requests()
        self.save_requested = self.save_requested or "save" in requests
        self.sample_requested = self.sample_requested or "sample" in requests
        if "stop" in requests:
            self.halt(STOPPED)
        return self.halted

    def halt(self, reason: str) -> None:
        """Remembers the first reason to end the run, and what the run was doing then."""
        if self.halted is None:
            self.halted, self.halted_while = reason, self.job.phase

    def check(self) -> None:
        """Raises RunHalted if the run must end: between images, prompts and phases."""
        reason = self.should_stop()
        if reason == CANCELLED or (reason and not self.steps_over):
            raise RunHalted(reason)

    @contextlib.contextmanager
    def host_work(self) -> Iterator[None]:
        """Around work that runs the host's ops (encoding, samples, evaluations): a Cancel inside becomes RunHalted."""
        self.check()
        try:
            yield
        except comfy.model_management.InterruptProcessingException as e:
            self.halt(CANCELLED)
            raise RunHalted(CANCELLED) from e

    def interrupted_by_host(self, error: BaseException) -> bool:
        """Whether `error` is the host's Cancel; remembered, so the rest of the run sees it."""
        if isinstance(error, comfy.model_management.InterruptProcessingException):
            self.halt(CANCELLED)
            return True
        return False
