"""The process-wide job registry: Train LoRA creates its jobs here, the routes read them and push their events."""
from __future__ import annotations

from ...trainer.jobs import JobRegistry

JOBS = JobRegistry()
