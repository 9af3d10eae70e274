"""A console progress bar for one LoRA Lab training job, fed by the pack's status routes while a prompt runs."""
from __future__ import annotations

import threading
import urllib.error
from types import TracebackType

from tqdm import tqdm

from cli.progress import describe
from scripts.comfy_host import ComfyHost, HostError

END_STATES = ("done", "stopped", "interrupted", "error")  # trainer/jobs.py END_STATES


class JobProgress:
    """While inside, polls GET /loralab/jobs (to find the job called `name`) and then GET /loralab/jobs/<id>
    `rate` times a second, and shows its step, loss and ETA (the job's own estimate) in a tqdm bar."""

    def __init__(self, host: ComfyHost, name: str, rate: float = 2.0) -> None:
        self.host, self.name, self.period = host, name, 1.0 / rate
        self.job_id: str | None = None
        self.state: str | None = None
        self._bar = tqdm(desc=f"training {name}", unit="step", dynamic_ncols=True,
                         bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="loralab-progress", daemon=True)

    def __enter__(self) -> JobProgress:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        if exc_type is None and self.state not in END_STATES:
            self.poll()  # the final step and loss, even if the job ended between two polls
        self._bar.close()

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            if self.poll() in END_STATES:
                self._bar.close()  # the prompt goes on (rendering); the bar stops at the job's end
                return

    def poll(self) -> str | None:
        """Updates the bar from the job's snapshot; returns the job's state (None until the job appears)."""
        try:
            if self.job_id is None:
                job = next((j for j in self.host.get_json("/loralab/jobs") if j["name"] == self.name), None)
                if job is None:
                    self._bar.set_postfix_str("loading the model and the dataset", refresh=True)
                    return None
                self.job_id = job["id"]
            job = self.host.get_json(f"/loralab/jobs/{self.job_id}")
        except (HostError, urllib.error.URLError, OSError) as e:
            # The prompt's own wait reports a host that died; here the bar only says that it lost the route.
            self._bar.set_postfix_str(f"status route unavailable: {e}", refresh=True)
            return None
        self._bar.total, self._bar.n = job["total"], job["step"]
        self._bar.set_postfix_str(describe(job), refresh=True)
        self.state = job["state"]
        return self.state


