"""torchrun from the command line (cli/processes.py, cli/host.py): which process this is and the GPU it gets,
before the host (and CUDA) starts. No host needed: these are the environment decisions alone."""
from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from cli.host import HostSetupError, _device_environment
from cli.processes import Processes, peer_result_files

DEVICE_VARIABLES = ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ASCEND_RT_VISIBLE_DEVICES")


def host_args(cuda_device: int | None = None) -> SimpleNamespace:
    return SimpleNamespace(cuda_device=cuda_device, deterministic=False)


@pytest.fixture()
def environ(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in DEVICE_VARIABLES:  # set first, so that the end of the test restores each as it was
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    return monkeypatch


def test_torchruns_variables_name_the_process() -> None:
    assert Processes.from_env({}) == Processes(0, 0, 1) and not Processes.from_env({}).several
    second = Processes.from_env({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"})
    assert (second.rank, second.local_rank, second.world_size) == (3, 1, 4)
    assert second.several and not second.is_main and second.label() == "process 3 of 4"


def test_each_process_sees_only_the_gpu_of_its_local_rank(environ: pytest.MonkeyPatch) -> None:
    _device_environment(host_args(), Processes(1, 1, 2))
    assert all(os.environ[name] == "1" for name in DEVICE_VARIABLES)
    environ.setenv("CUDA_VISIBLE_DEVICES", "4,6")  # the user's choice of GPUs: the LOCAL_RANK-th of them
    _device_environment(host_args(), Processes(1, 1, 2))
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "6"


def test_one_process_and_cuda_device_keep_their_gpu(environ: pytest.MonkeyPatch) -> None:
    _device_environment(host_args(), Processes())
    assert not any(name in os.environ for name in DEVICE_VARIABLES)  # one process: the host chooses
    _device_environment(host_args(cuda_device=2), Processes(1, 1, 2))
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2"  # --cuda-device wins, as in the host's main.py


def test_more_processes_than_visible_gpus_is_refused(environ: pytest.MonkeyPatch) -> None:
    environ.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with pytest.raises(HostSetupError, match=r"process 2 of 3 has LOCAL_RANK=2, but CUDA_VISIBLE_DEVICES=0,1 names "
                                             r"2 GPUs: start at most one process per GPU"):
        _device_environment(host_args(), Processes(2, 2, 3))


def test_only_the_main_process_writes_the_result_others_beside_it_and_found_by_rank(tmp_path) -> None:
    result = tmp_path / "workers-result.json"
    assert Processes(0, 0, 12).result_file(result) == result
    peers = [Processes(rank, rank, 12).result_file(result) for rank in (10, 2)]
    for path in [*peers, tmp_path / "workers-result.processX.json", tmp_path / "other.process1.json"]:
        path.write_text("{}")
    assert peer_result_files(result) == [tmp_path / "workers-result.process2.json",
                                         tmp_path / "workers-result.process10.json"]
