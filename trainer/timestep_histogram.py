"""The histogram of the training timesteps a run has drawn, as a job publishes it (not thread-safe: the job locks)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .errors import JobError

TIMESTEP_BINS = 20  # bars of the histogram of the training timesteps drawn


class TimestepHistogram:
    """Draws counted into TIMESTEP_BINS equal bins of [0, num_timesteps), with the distribution's name."""

    def __init__(self) -> None:
        self._counts = [0] * TIMESTEP_BINS
        self._num_timesteps: int | None = None
        self.sampling: str | None = None  # the run's timestep_sampling setting, e.g. "logit_normal"

    def record(self, timesteps: Sequence[int], num_timesteps: int) -> None:
        """Counts timesteps drawn (each in [0, num_timesteps)); a new num_timesteps starts the counts again."""
        if int(num_timesteps) < 1:
            raise JobError(f"record_timesteps got num_timesteps={num_timesteps}; expected at least 1.")
        if self._num_timesteps != int(num_timesteps):
            self._num_timesteps, self._counts = int(num_timesteps), [0] * TIMESTEP_BINS
        for t in timesteps:
            if not 0 <= int(t) < self._num_timesteps:
                raise JobError(f"timestep {t} is outside [0, {self._num_timesteps}).")
            self._counts[int(t) * TIMESTEP_BINS // self._num_timesteps] += 1

    def snapshot(self) -> dict[str, Any] | None:
        """counts[i]: draws in [i * range / bins, (i + 1) * range / bins); sampling: the distribution's setting
        name, None when the trainer did not say. None before any draw was recorded."""
        if self._num_timesteps is None:
            return None
        return {"range": [0, self._num_timesteps], "counts": list(self._counts), "sampling": self.sampling}
