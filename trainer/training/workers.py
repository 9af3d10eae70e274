"""Train LoRA's `workers` setting: train in the host's process, or in torchrun worker processes beside it.

    ""                 train in this process (the default)
    "2"                two worker processes: on a CUDA host the two GPUs after the host's own, on a CPU host
                       two gloo processes on the CPU
    "cuda:1,cuda:2"    one worker process on each of these GPUs (numbered as the host numbers them)

Pure: which devices the workers get is decided from what the host sees, passed in (host/worker_launch.py).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import ConfigError

MAX_WORKERS = 64
_DEVICE = re.compile(r"cuda:(\d{1,3})")
EXPECTED = ("'' (train in this process), a number of worker processes such as 2, or the GPUs to train on such as "
            "cuda:1,cuda:2")


@dataclass(frozen=True)
class WorkerRequest:
    """How many worker processes, and the GPUs named for them (None: the ones after the host's own)."""
    count: int
    devices: tuple[int, ...] | None = None


def parse_workers(text: str) -> WorkerRequest | None:
    """The request a `workers` text makes; None for '' (train in this process). Raises ConfigError naming it."""
    value = text.strip().lower()
    if not value:
        return None
    if value.isascii() and value.isdigit():
        count = int(value)
        if not 1 <= count <= MAX_WORKERS:
            raise ConfigError(f"workers = {text!r} is not allowed; expected between 1 and {MAX_WORKERS} processes.")
        return WorkerRequest(count)
    parts = [p.strip() for p in value.split(",")]
    matches = [_DEVICE.fullmatch(p) for p in parts]
    if not all(matches):
        raise ConfigError(f"workers = {text!r} is not allowed; expected {EXPECTED}.")
    devices = tuple(int(m.group(1)) for m in matches if m)
    if len(set(devices)) != len(devices):
        raise ConfigError(f"workers = {text!r} names a GPU twice; name each GPU once (one process per GPU).")
    return WorkerRequest(len(devices), devices)


def cuda_worker_devices(request: WorkerRequest, host_index: int, visible: Sequence[str]) -> tuple[str, ...]:
    """The CUDA_VISIBLE_DEVICES entries of the workers' GPUs, one per process.

    `visible` lists the GPUs the host can use, as CUDA_VISIBLE_DEVICES entries in the host's cuda:N order;
    `host_index` is the host's own (cuda:host_index), which stays the graph's and never trains a worker.
    """
    if request.devices is None:
        wanted = tuple(range(host_index + 1, host_index + 1 + request.count))
        if wanted[-1] >= len(visible):
            free = len(visible) - host_index - 1
            raise ConfigError(f"workers = {request.count}: the host uses cuda:{host_index} and sees {len(visible)} "
                              f"GPUs, so {max(free, 0)} follow its own; ask for at most {max(free, 0)}, or name "
                              "the GPUs (cuda:1,cuda:2)")
    else:
        wanted = request.devices
        if host_index in wanted:
            raise ConfigError(f"workers names cuda:{host_index}, the host's own GPU, which the graph keeps; "
                              "name other GPUs")
        missing = [d for d in wanted if d >= len(visible)]
        if missing:
            raise ConfigError(f"workers names cuda:{missing[0]}, but the host sees {len(visible)} GPUs "
                              f"(cuda:0 to cuda:{len(visible) - 1})")
    return tuple(visible[d] for d in wanted)
