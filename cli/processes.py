"""`torchrun --nproc_per_node N <pack> train workflow.json`: which of the processes this one is.

Each process starts the host as a library and runs the workflow's Train LoRA node; the node joins the process
group (trainer/training/distributed.py, through nodes/host/distributed_run.py), trains its shard of every
batch and lets the main process (rank 0) encode, sample, write the files and report. Here: what the command
line does differently per process: who shows progress, serves the status routes and logs (cli/host.py gives
each process its own GPU).
"""
from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path

# Set by the command line to its own process id: Train LoRA joins a process group only in the process that set
# it (nodes/host/distributed_run.py), so a WORLD_SIZE inherited by an editor (a job scheduler's environment, a
# host started from inside a torchrun job) never makes it wait for processes that do not exist.
GROUP_REQUEST_VARIABLE = "LORALAB_PROCESS_GROUP_PID"


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

    def result_file(self, path: Path) -> Path:
        """Where this process writes its --result: the main one at `path`; another one, only when it fails on
        its own, beside it (torchrun then stops the main process, whose outcome reads as a cancel)."""
        return path if self.is_main else path.with_name(f"{path.stem}.process{self.rank}{path.suffix}")


def peer_result_files(path: Path) -> list[Path]:
    """The other processes' own failures written beside the main process's --result `path`, by rank."""
    ranks = {p: p.stem.rsplit(".process", 1)[1] for p in path.parent.glob(f"{path.stem}.process*{path.suffix}")}
    return sorted((p for p, rank in ranks.items() if rank.isdigit()), key=lambda p: int(ranks[p]))


def leave_process_group() -> None:
    """Ends this process's part in the process group the Train LoRA node joined, if it joined one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def request_process_group(environ: MutableMapping[str, str], pid: int) -> None:
    """The command line's word that this process (`pid`) is one of torchrun's training processes."""
    environ[GROUP_REQUEST_VARIABLE] = str(pid)


def process_group_requested(environ: Mapping[str, str], pid: int) -> bool:
    """Whether the command line asked process `pid` to join the process group (not a parent's inherited word)."""
    return environ.get(GROUP_REQUEST_VARIABLE) == str(pid)
