"""Data parallelism (distributed.py) on the CPU with gloo: two processes train like one with twice the batch.

Each test spawns two processes that run the tiny model; they write their results (weights, loss histories,
stop reasons) to files the test compares with single-process runs made here.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from tests.support.tiny_models import attach, batch_fn, config, dataset, make_model
from trainer.errors import NonFiniteLossError
from trainer.training.config import LoraShape, TrainConfig
from trainer.training.distributed import DataParallel, describe_batch, effective_batch_size
from trainer.training.loop import StepRecord, TrainResult, train
from trainer.training.objective import NoiseSchedule
from trainer.training.resume_state import load_state, save_state

SCHEDULE = NoiseSchedule.scaled_linear()
WORLD = 2
STOP_AT = 3
# As the resume tests' config (noise offset, min-SNR, shuffling, accumulation, warmup + cosine) but without LoRA
# dropout: its masks are drawn per process, so they cannot equal one process's masks for the whole batch.
SHAPE = LoraShape(rank=2, alpha=1.0, targets="attention_ff_conv")
SETTINGS: dict[str, Any] = {"steps": 8, "lora": SHAPE, "grad_accumulation": 2, "noise_offset": 0.1,
                            "min_snr_gamma": 5.0, "schedule": "cosine", "warmup_steps": 2}
PER_PROCESS = config(batch_size=1, **SETTINGS)  # each of the 2 processes: batch 1 of the global batch 2
SINGLE = config(batch_size=2, **SETTINGS)  # one process, twice the batch
# fp32: the same sums in another order. Weights are at most ~0.3 and Adam moves them by ~lr = 1e-2 a step;
# the largest difference seen after 8 steps is 8e-7 (1e-4 of one step).
TOLERANCE = {"rtol": 1e-5, "atol": 2e-6}
# What a main process shares (e.g. its encoded dataset): several dtypes and shapes, a 0-d and an empty tensor.
SHARED = {"0.latent": torch.linspace(-2, 2, 256).view(4, 8, 8),
          "0.context": torch.linspace(0, 1, 64).half().view(2, 32), "steps": torch.arange(5),
          "scalar": torch.tensor(2.5, dtype=torch.float64), "empty": torch.zeros(0, 3)}


class HostCancelled(Exception):
    """Stands for the host's Cancel, raised inside a layer of one process."""


def _train(cfg: TrainConfig, global_batch: int, data_parallel: DataParallel | None = None,
           stop_at: int | None = None, start=None, batches_wrapper=None,
           should_stop=None) -> tuple[dict[str, torch.Tensor], TrainResult, list[StepRecord]]:
    model = make_model()
    adapters = attach(model, cfg.lora, seed=cfg.optimisation.seed)
    latents, cond = dataset()
    batches = batch_fn(latents, cond, global_batch)  # the global batch: the loop takes this process's shard
    if batches_wrapper is not None:
        batches = batches_wrapper(batches)
    records: list[StepRecord] = []
    stop = (lambda: "stop" if records and records[-1].step >= stop_at else None) if stop_at else should_stop
    result = train(model, adapters, batches, SCHEDULE, cfg, records.append, should_stop=stop, start_state=start,
                   data_parallel=data_parallel, interruptions=(HostCancelled,))
    return adapters.state_dict(), result, records


def _write(out: Path, name: str, weights: dict[str, torch.Tensor], result: TrainResult,
           records: list[StepRecord]) -> None:
    save_file({k: v.contiguous() for k, v in weights.items()}, str(out / f"{name}.safetensors"))
    (out / f"{name}.json").write_text(json.dumps({
        "loss_history": list(result.loss_history), "steps": result.steps_completed,
        "stopped_early": result.stopped_early, "on_step_calls": len(records),
        "timesteps": [list(r.timesteps) for r in records]}))


def _read(out: Path, name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    return load_file(str(out / f"{name}.safetensors")), json.loads((out / f"{name}.json").read_text())


def _join(rank: int, port: int, timeout_s: float) -> DataParallel:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    group = DataParallel.from_env(torch.device("cpu"), timeout=datetime.timedelta(seconds=timeout_s))
    assert group is not None and group.rank == rank and group.world_size == WORLD
    return group


def _runs_worker(rank: int, port: int, out_dir: str) -> None:
    """Full run, stopped + resumed run, a global batch that does not divide by 2, and one rank cancelled."""
    out = Path(out_dir)
    group = _join(rank, port, timeout_s=60)
    try:
        shared = group.share_tensors(SHARED if group.is_main else None)
        save_file(shared, str(out / f"shared_{rank}.safetensors"))
        _write(out, f"full_{rank}", *_train(PER_PROCESS, 2, group))
        # stopped by the main process's Stop only: the other process stops at the same step
        _, first, _ = _train(PER_PROCESS, 2, group, stop_at=STOP_AT if group.is_main else None)
        assert first.steps_completed == STOP_AT and first.stopped_early == "stop", first
        if group.is_main:
            save_state(out / "state.safetensors", first.state)
        group.barrier()
        state = load_state(out / "state.safetensors", expected_config=PER_PROCESS)
        _write(out, f"resumed_{rank}", *_train(PER_PROCESS, 2, group, start=state))
        _write(out, f"uneven_{rank}", *_train(config(batch_size=2, **SETTINGS), 3, group))  # shards of 2 and 1

        def cancel_on_rank_1(batches):
            calls = {"n": 0}

            def cancelling(index: int, generator: torch.Generator):
                calls["n"] += 1
                if rank == 1 and calls["n"] == 2 * STOP_AT + 2:  # rank 1, second micro-batch of step 4
                    raise HostCancelled()
                return batches(index, generator)
            return cancelling

        _write(out, f"cancelled_{rank}", *_train(PER_PROCESS, 2, group, batches_wrapper=cancel_on_rank_1))

        def nan_on_rank_1(batches):
            calls = {"n": 0}

            def poisoned(index: int, generator: torch.Generator):
                calls["n"] += 1
                latents, cond = batches(index, generator)
                if rank == 1 and calls["n"] == 2 * STOP_AT + 1:
                    latents = latents * float("nan")
                return latents, cond
            return poisoned

        try:
            _train(PER_PROCESS, 2, group, batches_wrapper=nan_on_rank_1)
            raised = None
        except NonFiniteLossError as e:
            raised = str(e)
        (out / f"nan_{rank}.json").write_text(json.dumps({"raised": raised}))
    finally:
        dist.destroy_process_group()


def _lost_worker(rank: int, port: int, out_dir: str, how: str) -> None:
    """Rank 1 dies in the middle of step 4 ("killed"), dies between steps 3 and 4 ("between_steps") or hangs in
    step 4 ("hung", until rank 0 is done); rank 0 must end with the state of step 3."""
    out = Path(out_dir)
    group = _join(rank, port, timeout_s=3 if how == "hung" else 30)
    polls = {"n": 0}

    def poll() -> None:
        polls["n"] += 1
        if rank == 1 and how == "between_steps" and polls["n"] == STOP_AT + 1:  # after step 3, before step 4
            os._exit(3)

    def failing(batches):
        calls = {"n": 0}

        def batch(index: int, generator: torch.Generator):
            calls["n"] += 1
            if rank == 1 and calls["n"] == 2 * STOP_AT + 1:  # rank 1, first micro-batch of step 4
                if how == "hung":
                    while not (out / "killed_0.json").exists():
                        time.sleep(0.05)
                    os._exit(4)
                if how == "killed":
                    os._exit(3)
            return batches(index, generator)
        return batch

    weights, result, records = _train(PER_PROCESS, 2, group, batches_wrapper=failing, should_stop=poll)
    save_state(out / "last_state.safetensors", result.state)
    _write(out, f"killed_{rank}", weights, result, records)
    # no destroy_process_group: the peer is gone


def _spawn(worker, out: Path, *extra: Any) -> list[int | None]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # A fresh interpreter per process (never fork a process that has run torch), started from one server that
    # has imported torch and the engine once: the two spawns of this module share its start-up.
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(["torch", "torch.distributed", "trainer.training.loop", "tests.support.tiny_models",
                                    __name__])
    processes = [context.Process(target=worker, args=(rank, port, str(out), *extra)) for rank in range(WORLD)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=120)
        if p.is_alive():
            p.kill()
    return [p.exitcode for p in processes]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dp_runs")
    assert _spawn(_runs_worker, out) == [0, 0]
    return out


def _assert_close(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, **TOLERANCE, msg=key)


def test_two_processes_equal_one_with_twice_the_batch(runs: Path) -> None:
    single, single_result, single_records = _train(SINGLE, 2)
    assert _read(runs, "full_0")[1]["timesteps"] == [list(r.timesteps) for r in single_records]  # the whole batch's
    for rank in range(WORLD):
        weights, info = _read(runs, f"full_{rank}")
        assert info["steps"] == 8 and info["stopped_early"] is None
        assert info["loss_history"] == pytest.approx(list(single_result.loss_history), rel=1e-5)
        _assert_close(weights, single)
    rank0, rank1 = _read(runs, "full_0")[0], _read(runs, "full_1")[0]
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)  # the same update on every process, bit for bit


def test_the_main_processs_tensors_are_shared_with_every_process(runs: Path) -> None:
    for rank in range(WORLD):
        shared = load_file(str(runs / f"shared_{rank}.safetensors"))
        assert shared.keys() == SHARED.keys()
        assert all(torch.equal(shared[k], v) and shared[k].dtype == v.dtype for k, v in SHARED.items())


def test_only_the_main_process_reports(runs: Path) -> None:
    assert _read(runs, "full_0")[1]["on_step_calls"] == 8
    assert _read(runs, "full_1")[1]["on_step_calls"] == 0


def test_two_processes_stopped_and_resumed_equal_uninterrupted(runs: Path) -> None:
    full, full_info = _read(runs, "full_0")
    for rank in range(WORLD):
        resumed, info = _read(runs, f"resumed_{rank}")
        assert info["loss_history"] == full_info["loss_history"]  # one continuous history
        assert all(torch.equal(resumed[k], full[k]) for k in full)  # bit for bit: the same operations


def test_a_state_saved_by_two_processes_resumes_in_one_with_their_global_batch(
        runs: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The resume state does not depend on the number of processes (every process holds the same weights,
    optimizer statistics and generator): one process with batch 2 continues the 2 x batch 1 run exactly, and
    is not told that its result will differ; one process with batch 1 (half the global batch) is."""
    full, full_info = _read(runs, "full_0")
    state = load_state(runs / "state.safetensors", expected_config=SINGLE)
    assert state.world_size == WORLD
    with caplog.at_level(logging.WARNING, logger="trainer.training.resume_checks"):
        weights, result, _ = _train(SINGLE, 2, start=state)
    assert list(result.loss_history) == pytest.approx(full_info["loss_history"], rel=1e-5)
    _assert_close(weights, full)
    assert not [r for r in caplog.records if "will differ" in r.getMessage()]
    assert result.state.world_size == 1

    with caplog.at_level(logging.WARNING, logger="trainer.training.resume_checks"):
        _train(PER_PROCESS, 1, start=state)
    assert "changed optimisation settings ['batch_size x processes (1 x 2 -> 1 x 1)']" in caplog.text


def test_a_global_batch_with_unequal_shards_equals_one_process(runs: Path) -> None:
    """3 items over 2 processes: shares 2/3 and 1/3 of the global mean, summed, are the global mean."""
    single, single_result, _ = _train(config(batch_size=3, **SETTINGS), 3)
    for rank in range(WORLD):
        weights, info = _read(runs, f"uneven_{rank}")
        assert info["loss_history"] == pytest.approx(list(single_result.loss_history), rel=1e-5)
        _assert_close(weights, single)


def test_a_cancel_on_one_process_stops_every_process_at_the_last_whole_step(runs: Path) -> None:
    full, _ = _read(runs, "full_0")
    single_at_3, _, _ = _train(SINGLE, 2, stop_at=STOP_AT)
    for rank in range(WORLD):
        weights, info = _read(runs, f"cancelled_{rank}")
        assert info["stopped_early"] == "interrupted" and info["steps"] == STOP_AT
        _assert_close(weights, single_at_3)


def test_a_non_finite_loss_on_one_process_raises_on_every_process(runs: Path) -> None:
    for rank in range(WORLD):
        raised = json.loads((runs / f"nan_{rank}.json").read_text())["raised"]
        assert raised is not None and f"step {STOP_AT + 1}" in raised, raised


@pytest.mark.parametrize(("how", "exit_code"), [("killed", 3), ("between_steps", 3), ("hung", 4)])
def test_a_lost_process_ends_the_other_with_the_last_whole_step(tmp_path: Path, how: str, exit_code: int) -> None:
    """A process killed mid-step or between steps (the connection closes) or hung (the 3 s timeout)."""
    assert _spawn(_lost_worker, tmp_path, how) == [0, exit_code]
    weights, info = _read(tmp_path, "killed_0")
    assert info["steps"] == STOP_AT
    assert "lost the others" in info["stopped_early"] and "keeps the last whole step" in info["stopped_early"]
    state = load_state(tmp_path / "last_state.safetensors", expected_config=PER_PROCESS)
    assert state.step == STOP_AT and state.loss_history == info["loss_history"]
    single_at_3, _, _ = _train(SINGLE, 2, stop_at=STOP_AT)
    _assert_close(state.lora, single_at_3)
    _assert_close(weights, single_at_3)


# --- without processes: the shard arithmetic and the effective batch ---------------------------------------

@pytest.mark.parametrize(("batch", "rank", "items", "share"), [
    (4, 0, [0, 2], 0.5), (4, 1, [1, 3], 0.5), (3, 0, [0, 2], 2 / 3), (3, 1, [1], 1 / 3), (1, 1, [0], 0.0)])
def test_shard_items_and_share(batch: int, rank: int, items: list[int], share: float) -> None:
    group = DataParallel(rank=rank, world_size=2, device=torch.device("cpu"))
    x = torch.arange(batch, dtype=torch.float32)[:, None]
    cond = {"context": torch.arange(batch)[:, None] * 10, "shared": torch.ones(5)}
    captions = tuple(f"c{i}" for i in range(batch))
    x_t, target, timesteps, (taken, names), got_share = group.take_shard(x, -x, torch.arange(batch),
                                                                        (cond, captions))
    assert x_t[:, 0].tolist() == items and target[:, 0].tolist() == [-i for i in items]
    assert timesteps.tolist() == items and names == tuple(f"c{i}" for i in items)
    assert taken["context"][:, 0].tolist() == [10 * i for i in items] and taken["shared"].shape == (5,)
    assert got_share == pytest.approx(share)  # an empty shard computes item 0 with share 0


def test_effective_batch() -> None:
    opt = config(batch_size=2, grad_accumulation=4).optimisation
    assert effective_batch_size(opt, 2) == 16 and effective_batch_size(opt) == 8
    assert describe_batch(opt, 2) == "batch 2 x 4 accumulation x 2 processes = 16"
    assert describe_batch(opt) == "batch 2 x 4 accumulation x 1 process = 8"


def test_one_process_has_no_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert DataParallel.from_env(torch.device("cpu")) is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert DataParallel.from_env(torch.device("cpu")) is None


def test_metadata_records_the_total_batch() -> None:
    from trainer.training.export import TrainingSummary, kohya_metadata
    cfg = config(batch_size=2, grad_accumulation=4)
    summary = TrainingSummary(output_name="x", num_train_images=4, resolution=(64, 64), steps_completed=1)
    metadata = kohya_metadata(cfg, summary, "sd_v1")
    assert metadata["ss_batch_size_per_device"] == "2" and metadata["ss_total_batch_size"] == "8"
    two = TrainingSummary(output_name="x", num_train_images=4, resolution=(64, 64), steps_completed=1, world_size=2)
    assert metadata["loralab.world_size"] == "1"
    two_metadata = kohya_metadata(cfg, two, "sd_v1")
    assert two_metadata["ss_total_batch_size"] == "16"  # kohya: x accumulation x processes
    assert two_metadata["loralab.world_size"] == "2" and two_metadata["ss_batch_size_per_device"] == "2"


def test_the_job_snapshot_carries_the_processes_and_the_effective_batch() -> None:
    from trainer.jobs import JobRegistry
    job = JobRegistry().create("x", 10, ".")
    assert job.snapshot()["world_size"] == 1 and job.snapshot()["batch"] is None  # until the run says
    job.set_batch(2, 4, 3)
    snapshot = job.snapshot()
    assert snapshot["world_size"] == 3
    assert snapshot["batch"] == {"batch_size": 2, "grad_accumulation": 4, "world_size": 3, "effective": 24}
