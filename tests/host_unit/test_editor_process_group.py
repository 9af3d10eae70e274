"""Only LoRA Lab's command line starts a process group: in the editor a WORLD_SIZE > 1 inherited from the host's
environment (a job scheduler's, a host started from inside a torchrun job) leaves Train LoRA in its own process,
instead of waiting for processes that do not exist."""
from __future__ import annotations

import os

import pytest
import torch.distributed as dist

from cli.processes import GROUP_REQUEST_VARIABLE, request_process_group
from scripts.host_import import import_pack_module


@pytest.fixture()
def torchrun_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """torchrun's variables for the second of two processes, without a rendezvous address: joining fails at once."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    for name in ("MASTER_ADDR", "MASTER_PORT", GROUP_REQUEST_VARIABLE):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_an_inherited_world_size_does_not_make_the_editor_join_a_process_group(torchrun_environment) -> None:
    distributed_run = import_pack_module("nodes.host.distributed_run")
    assert distributed_run.process_group() is None
    torchrun_environment.setenv(GROUP_REQUEST_VARIABLE, str(os.getppid()))  # the command line's word to a parent
    assert distributed_run.process_group() is None
    assert not dist.is_initialized()


def test_the_command_lines_word_to_this_process_joins_it(torchrun_environment) -> None:
    """The same environment with the command line's request for this process: the group is joined (and here
    fails at once for want of MASTER_ADDR, which is how we see it tried)."""
    distributed_run = import_pack_module("nodes.host.distributed_run")
    request_process_group(os.environ, os.getpid())
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        distributed_run.process_group()
    assert not dist.is_initialized()
