"""The terminal's view of a headless run: a tqdm bar fed by LoRA Lab's own job events (`loralab.*`)."""
from __future__ import annotations

import threading
from typing import Any

from tqdm import tqdm

END_STATES = ("done", "stopped", "interrupted", "error")  # trainer/jobs.py END_STATES


def describe(job: dict[str, Any]) -> str:
    """`training, loss 0.1234 (smoothed 0.1300), ETA 00:42` from a job snapshot."""
    phase = " ".join(p for p in (job.get("phase"), job.get("phase_detail")) if p)
    parts = [job["state"]] if job["state"] != "running" else [phase] if phase else []
    if job.get("loss") is not None:
        smoothed = job.get("smoothed_loss")
        parts.append(f"loss {job['loss']:.4f}" + (f" (smoothed {smoothed:.4f})" if smoothed is not None else ""))
    if job.get("eta_seconds") is not None:
        parts.append(f"ETA {tqdm.format_interval(job['eta_seconds'])}")
    return ", ".join(parts) or "starting"


class TrainingBar:
    """A bar for the job of one Train LoRA node; `on_event` is the stand-in server's listener."""

    def __init__(self, node_id: str, enabled: bool = True) -> None:
        self.node_id = node_id
        self.enabled = enabled
        self.job: dict[str, Any] | None = None  # the newest snapshot of the node's job
        self._bar: tqdm | None = None
        self._lock = threading.Lock()

    def on_event(self, event: str, data: Any) -> None:
        if not (isinstance(event, str) and event.startswith("loralab.") and isinstance(data, dict)):
            return  # the executor's own events (executing, progress...) have nothing the bar shows
        if str(data.get("node_id")) != self.node_id:
            return
        with self._lock:
            self.job = data
            if not self.enabled:
                return
            if self._bar is None:
                self._bar = tqdm(total=data["total"], desc=f"training {data['name']}", unit="step",
                                 dynamic_ncols=True,
                                 bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
                                            "[{elapsed}{postfix}]")
            self._bar.total, self._bar.n = data["total"], data["step"]
            self._bar.set_postfix_str(describe(data), refresh=True)
            if data["state"] in END_STATES:
                self._close_locked()

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
