"""`torchrun --nproc_per_node N <pack> train workflow.json`: which of the processes this one is.

Each process starts the host as a library and runs the workflow's Train LoRA node; the node joins the process
group (trainer/training/distributed.py, through nodes/host/distributed_run.py), trains its shard of every
batch and lets the main process (rank 0) encode, sample, write the files and report. Here: what the command
line does differently per process: who shows progress, serves the status routes and logs (cli/host.py gives
each process its own GPU).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Processes:
    """This process's place among the processes torchrun started (RANK, LOCAL_RANK, WORLD_SIZE)."""
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Processes:
        return cls(int(environ.get("RANK") or 0), int(environ.get("LOCAL_RANK") or 0),
                   int(environ.get("WORLD_SIZE") or 1))

    @property
    def several(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 shows the progress bar, serves --serve and writes the files; the others run silently."""
        return self.rank == 0

    def label(self) -> str:
        return f"process {self.rank} of {self.world_size}"


def leave_process_group() -> None:
    """Ends this process's part in the process group the Train LoRA node joined, if it joined one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
