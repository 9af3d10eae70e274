"""`torchrun --nproc_per_node 2 <pack> train workflow.json` on the CPU (gloo): two processes, each with the host
imported as a library, train like one process with twice the batch, and a killed process ends the job with the
last whole step saved (SIGTERM to torchrun, which cancels every process, is the editor's Cancel of its workers:
tests/host/test_train_workers.py). No server runs: the workflow's models and dataset live in a base directory of
our own."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from scripts.comfy_host import DEFAULT_COMFY_DIR, REPO, ensure_tiny_checkpoint, free_port, prepare_base_dir
from scripts.make_demo_dataset import make_demo_dataset
from tests.host.test_headless import job_while_running, small_training

pytestmark = pytest.mark.host

# SGD, not the workflow's AdamW: Adam divides each gradient component by its own magnitude, so components whose
# gradient is near zero (fp32 rounding differs between a batch of 2 and two batches of 1 through the same
# convolutions) move by up to ~2% of a step (1.6e-5 at lr 1e-3, seen); with SGD the files agree to fp32 precision
# (3e-6 of the largest weight, seen), a check of the data-parallel sums and not of Adam's conditioning.
OPTIMIZER = ("--set", "3.optimizer=sgd_nesterov", "--set", "4.learning_rate=0.5")
TOLERANCE = {"rtol": 1e-5, "atol": 1e-7}
HOST_ARGS = ("--comfy", str(DEFAULT_COMFY_DIR), "--cpu", "--disable-api-nodes")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    folder = prepare_base_dir(tmp_path_factory.mktemp("dp-base"), ensure_tiny_checkpoint())
    make_demo_dataset(folder / "input" / "rings", count=4, size=64)
    return folder


def command(base: Path, workflow: Path, processes: int, *args: str) -> list[str]:
    """One process as `python <pack> train`, several as `python -m torch.distributed.run` (torchrun)."""
    cli = [str(REPO), "train", str(workflow), *OPTIMIZER, *args, *HOST_ARGS, "--base-directory", str(base)]
    if processes == 1:
        return [sys.executable, *cli]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
            "--master_port", str(free_port()), *cli]


def workflow_file(folder: Path, name: str, steps: int = 3) -> Path:
    workflow = small_training(name)
    train = next(n for n in workflow["nodes"] if n["id"] == 4)
    train["widgets_values"][1] = steps
    path = folder / f"{name}.json"
    path.write_text(json.dumps(workflow))
    return path


def run(argv: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")  # two cores, shared: one thread per process
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)
    return result


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


def assert_close(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """fp32 tensors to TOLERANCE; those the LoRA file stores in half precision to one rounding step of theirs."""
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        half = value.dtype in (torch.float16, torch.bfloat16)
        tolerance = {"rtol": torch.finfo(value.dtype).eps, "atol": TOLERANCE["atol"]} if half else TOLERANCE
        torch.testing.assert_close(got[key], value, **tolerance, msg=key)


@pytest.fixture(scope="module")
def one_process(base: Path, tmp_path_factory) -> subprocess.CompletedProcess:
    """The reference: one process, batch 2 (and the same SGD)."""
    folder = tmp_path_factory.mktemp("dp-one")
    result = run(command(base, workflow_file(folder, "dp_one"), 1, "--set", "4.batch_size=2"), folder)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def test_two_processes_write_the_files_of_one_process_with_twice_the_batch(base, one_process, tmp_path):
    """Same LoRA and resume state (weights, optimizer statistics, generator, loss history), tensor by tensor;
    the metadata records the effective batch 1 x 1 x 2 = 2 and the two processes; only the main process speaks."""
    result = run(command(base, workflow_file(tmp_path, "dp_two"), 2), tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    loras = base / "models" / "loras"
    for suffix in (".safetensors", ".loralab-resume"):
        assert_close(tensors(loras / f"dp_two{suffix}"), tensors(loras / f"dp_one{suffix}"))
    two, one = metadata(loras / "dp_two.safetensors"), metadata(loras / "dp_one.safetensors")
    assert (two["ss_total_batch_size"], two["ss_batch_size_per_device"], two["loralab.world_size"]) == ("2", "1", "2")
    assert (one["ss_total_batch_size"], one["ss_batch_size_per_device"], one["loralab.world_size"]) == ("2", "2", "1")
    assert "effective batch 1 x 1 accumulation x 2 processes = 2" in result.stderr
    assert result.stderr.count("saved dp_two.safetensors after 3 steps") == 1, "rank 0 reports, rank 1 is silent"
    assert result.stderr.count("training dp_two") >= 1 and "data parallel: process 0 of 2 (gloo)" in result.stderr
    assert not list(loras.glob("dp_two-step*")), "no checkpoint from either process"


def rank_process(launcher: subprocess.Popen, rank: int, timeout: float = 120) -> psutil.Process:
    """The training process of `rank` among torchrun's children."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in psutil.Process(launcher.pid).children(recursive=True):
            try:
                if child.environ().get("RANK") == str(rank) and "train" in child.cmdline():
                    return child
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.2)
    raise AssertionError(f"no training process of rank {rank}")


def interrupted_run(base: Path, folder: Path, name: str, interrupt,
                    processes: int = 2) -> tuple[int, str, int, list[float]]:
    """A 500-step run in `processes` processes, `interrupt(launcher)` once the main process has done 4 steps;
    returns the launcher's exit code, its output, and the step and loss history of the resume state left."""
    port = free_port()
    log = folder / "torchrun.log"
    with open(log, "w") as out:
        launcher = subprocess.Popen(command(base, workflow_file(folder, name, steps=500), processes, "--serve",
                                            str(port)),
                                    stdout=out, stderr=subprocess.STDOUT, cwd=folder,
                                    env=dict(os.environ, OMP_NUM_THREADS="1"))
        try:
            deadline = time.monotonic() + 300
            while job_while_running(port, name, launcher)["step"] < 4 and time.monotonic() < deadline:
                time.sleep(0.2)
            interrupt(launcher)
            code = launcher.wait(timeout=300)
        finally:
            if launcher.poll() is None:
                launcher.kill()
    state_file = base / "models" / "loras" / f"{name}.loralab-resume"
    step = int(metadata(state_file)["loralab.state.step"])
    history = tensors(state_file)["history::loss"].tolist()
    assert 4 <= step < 500 and len(history) == step
    assert (base / "models" / "loras" / f"{name}-step{step}.safetensors").is_file(), "the last whole step's LoRA"
    return code, log.read_text(), step, history


def test_a_killed_process_ends_the_job_with_the_last_whole_step_saved(base, one_process, tmp_path):
    """Rank 1 is killed (SIGKILL) while the job trains: rank 0 ends with a message naming the lost process, and
    the checkpoint and resume state of its last whole step, whose loss history is the reference run's."""
    code, text, step, history = interrupted_run(
        base, tmp_path, "dp_killed", lambda launcher: rank_process(launcher, 1).send_signal(signal.SIGKILL))
    assert code != 0, text[-4000:]
    assert "lost the others" in text and "keeps the last whole step" in text, text[-4000:]
    assert f"at step {step} of 500" in text or f"after {step} steps" in text, text[-4000:]
    reference = tensors(base / "models" / "loras" / "dp_one.loralab-resume")["history::loss"].tolist()
    assert history[:3] == pytest.approx(reference, rel=1e-5), "the same run as the 1-process one, batch 2"


def test_sigterm_twice_to_one_process_cancels_once_and_saves(base, tmp_path):
    """`kill` (SIGTERM) is Ctrl+C once, and a second SIGTERM does not kill the run while it saves."""
    def terminate_twice(launcher: subprocess.Popen) -> None:
        launcher.terminate()
        time.sleep(0.05)
        launcher.terminate()

    code, text, step, _ = interrupted_run(base, tmp_path, "hl_term", terminate_twice, processes=1)
    assert code == 3, text[-4000:]  # cancelled or stopped, with what was saved
    assert text.count("Cancelling (SIGTERM)") == 1
    assert f"Training 'hl_term' was cancelled at step {step} of 500; saved hl_term-step{step}.safetensors" in text
