"""Data parallelism over several processes (torchrun): one seeded order sharded by rank, LoRA gradients summed.

The exact scheme. Every process runs the single-process loop's randomness in full: it builds the step's
*global* batch (`batch_size x world_size` items, the one seeded order) and draws that batch's noise and
timesteps from the same generator, then keeps only its shard, items `rank, rank + W, ...`. Its loss is the
sum of its items' losses divided by the global batch size (its share of the global mean), so the sum of the
processes' gradients is the gradient of the global batch's mean loss: W processes with batch B train like
one process with batch W x B (same loss history, weights equal up to fp32 summation order). Only the LoRA
gradients travel, in fp32 buckets of about 25 MB; every process then holds the same gradients, clips the
same norm and takes the same optimizer step, so weights, optimizer state and generator stay identical and a
resume state saved by the main process continues the run exactly.

Every collective of a step happens before its update is applied: a process that fails, leaves or is
interrupted mid-step makes the others drop that step (PeerProcessError) and end with the last whole one.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..errors import NonFiniteLossError, PeerProcessError
from .config import Optimisation

logger = logging.getLogger(__name__)

GRADIENT_BUCKET_BYTES = 25 * 2**20  # as DDP's default bucket: large enough to amortise each call's latency
DEFAULT_TIMEOUT = datetime.timedelta(minutes=30)  # the main process may sample for minutes between steps


def effective_batch_size(opt: Optimisation, world_size: int = 1) -> int:
    """Images per optimizer update: batch_size x grad_accumulation x world_size."""
    return opt.batch_size * opt.grad_accumulation * world_size


def describe_batch(opt: Optimisation, world_size: int = 1) -> str:
    """The effective batch for the log, e.g. 'batch 2 x 4 accumulation x 2 processes = 16'."""
    return (f"batch {opt.batch_size} x {opt.grad_accumulation} accumulation x {world_size} "
            f"process{'es' if world_size != 1 else ''} = {effective_batch_size(opt, world_size)}")


def _take(value: Any, index: list[int], batch_size: int) -> Any:
    """The items `index` of a batched value: tensors (dim 0 = batch), captions, dicts and (named) tuples of them.

    A tensor without the batch dimension (shared by every item) is kept whole.
    """
    if isinstance(value, torch.Tensor):
        if value.dim() == 0 or value.shape[0] != batch_size:
            return value
        return value.index_select(0, torch.tensor(index, device=value.device))
    if isinstance(value, dict):
        return {k: _take(v, index, batch_size) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_take(v, index, batch_size) for v in value))
    if isinstance(value, (list, tuple)):
        if len(value) == batch_size and all(isinstance(v, str) for v in value):  # one caption per item
            return type(value)(value[i] for i in index)
        return type(value)(_take(v, index, batch_size) for v in value)
    return value


@dataclass(frozen=True)
class DataParallel:
    """This process's place among `world_size` training processes (rank 0 is the main one, which writes files).

    Build it with `from_env()` under torchrun, or directly once torch.distributed is initialised.
    """

    rank: int
    world_size: int
    device: torch.device  # where the collectives' tensors live: the training device for nccl, else the CPU
    bucket_bytes: int = GRADIENT_BUCKET_BYTES

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: torch.device,
                 timeout: datetime.timedelta = DEFAULT_TIMEOUT) -> DataParallel | None:
        """The process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), joined on the first
        call; None for one process.

        nccl when training on CUDA, gloo on the CPU; `device` is this process's own training device (under
        torchrun, the GPU of its LOCAL_RANK). `timeout` bounds how long a process waits for the others (the main
        process encodes, samples and saves while they wait).
        """
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return None
        if not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
            logger.info("data parallel: process %d of %d (%s)", dist.get_rank(), dist.get_world_size(),
                        dist.get_backend())
        comm_device = device if dist.get_backend() == "nccl" else torch.device("cpu")
        return cls(dist.get_rank(), dist.get_world_size(), comm_device)

    # --- the step's shard ---------------------------------------------------------------------------------

    def shard(self, batch_size: int) -> list[int]:
        """This process's items of a global batch: rank, rank + W, ... (equal-sized when W divides the batch)."""
        return list(range(self.rank, batch_size, self.world_size))

    def take_shard(self, x_t: torch.Tensor, target: torch.Tensor, timesteps: torch.Tensor,
                   cond: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any, float]:
        """This process's items of the global batch's noisy latents, targets, timesteps and condition, and its
        share: the factor that turns the mean loss over the shard into its part of the global mean.

        A process without items (a global batch smaller than W, e.g. a bucket's last batch) computes item 0
        with share 0: zero loss and zero gradients, but the same collectives as the others.
        """
        batch_size = x_t.shape[0]
        index, share = self._shard_or_first(batch_size), len(self.shard(batch_size)) / batch_size
        return (_take(x_t, index, batch_size), _take(target, index, batch_size),
                _take(timesteps, index, batch_size), _take(cond, index, batch_size), share)

    def take_items(self, value: Any, batch_size: int) -> Any:
        """This process's items of any other batched value (a loss mask, item weights; None stays None), as
        take_shard takes them."""
        return _take(value, self._shard_or_first(batch_size), batch_size)

    def _shard_or_first(self, batch_size: int) -> list[int]:
        return self.shard(batch_size) or [0]  # no items: item 0, with share 0

    # --- agreement and reduction --------------------------------------------------------------------------

    def _all_reduce(self, tensor: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> None:
        try:
            dist.all_reduce(tensor, op=op)
        except (RuntimeError, dist.DistBackendError) as e:  # a peer died (connection closed) or hung (timeout)
            raise PeerProcessError(
                f"training process {self.rank} of {self.world_size} lost the others ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else 'no message'}); a process failed or left, so every "
                "process keeps the last whole step") from e

    def agree_to_stop(self, reason: str | None) -> str | None:
        """Poll result of every process -> the one every process acts on (the lowest stopping rank's reason).

        Called before each step, so all processes stop at the same step. A lost peer is a stop too.
        """
        flags = torch.zeros(self.world_size, dtype=torch.float32, device=self.device)
        flags[self.rank] = 1.0 if reason else 0.0
        try:
            self._all_reduce(flags)
        except PeerProcessError as e:
            logger.error("%s", e.reason)
            return e.reason
        stopping = [r for r in range(self.world_size) if flags[r] > 0]
        if not stopping:
            return None
        try:
            return self._broadcast_text(reason or "", src=stopping[0]) or "stop"
        except PeerProcessError as e:
            logger.error("%s", e.reason)
            return e.reason

    def _broadcast_text(self, text: str, src: int) -> str:
        """`text` of process `src` on every process (as UTF-8 bytes: nothing is unpickled)."""
        data = text.encode("utf-8") if self.rank == src else b""
        length = torch.tensor([len(data)], dtype=torch.int64, device=self.device)
        self._broadcast(length, src)
        buffer = torch.zeros(int(length[0]), dtype=torch.uint8, device=self.device)
        if self.rank == src:
            buffer.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        self._broadcast(buffer, src)
        return bytes(buffer.cpu().tolist()).decode("utf-8")

    def _broadcast(self, tensor: torch.Tensor, src: int) -> None:
        try:
            dist.broadcast(tensor, src=src)
        except (RuntimeError, dist.DistBackendError) as e:
            raise PeerProcessError(f"training process {self.rank} of {self.world_size} lost the others while "
                                   f"process {src} spoke ({type(e).__name__}); every process keeps the last whole "
                                   "step") from e

    def abandon_step(self) -> str | None:
        """Tell the others that this process drops the step in progress (it was interrupted); best effort.

        Returns the reason to record when the others are gone (torchrun interrupts the survivors of a failed
        process): the lost process, not the interruption, is why the run ended.
        """
        signal = torch.tensor([1.0, 0.0], dtype=torch.float64, device=self.device)  # as reduce_step's agreement
        try:
            self._all_reduce(signal)
        except PeerProcessError as e:
            logger.error("%s", e.reason)
            return e.reason
        return None

    def reduce_step(self, params: Sequence[nn.Parameter], loss_share: float, step: int) -> float:
        """Agree on the step, then sum the processes' gradients; returns the step's loss (of the global batch).

        Raises PeerProcessError if a process dropped the step or is lost, and NonFiniteLossError on every
        process alike if any loss was not finite; no update has been applied in either case.
        """
        agreement = torch.tensor([0.0, loss_share], dtype=torch.float64, device=self.device)
        self._all_reduce(agreement)
        if agreement[0] > 0:
            raise PeerProcessError("interrupted")
        loss = float(agreement[1])
        if not math.isfinite(loss):
            raise NonFiniteLossError(step + 1, loss)
        self.sum_gradients(params)
        return loss

    def sum_gradients(self, params: Sequence[nn.Parameter]) -> None:
        """Sum each parameter's gradient over the processes, in fp32 buckets of about bucket_bytes."""
        bucket: list[nn.Parameter] = []
        size = 0
        for param in params:
            if param.grad is None:  # unused this step: the same on every process (all run the same graph)
                continue
            bucket.append(param)
            size += param.numel() * 4
            if size >= self.bucket_bytes:
                self._reduce_bucket(bucket)
                bucket, size = [], 0
        if bucket:
            self._reduce_bucket(bucket)

    def _reduce_bucket(self, bucket: list[nn.Parameter]) -> None:
        flat = torch.cat([p.grad.detach().to(self.device, torch.float32).flatten() for p in bucket])  # type: ignore[union-attr]
        self._all_reduce(flat)
        offset = 0
        for param in bucket:
            grad = param.grad
            assert grad is not None
            grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
            offset += grad.numel()

    def share_tensors(self, tensors: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        """The main process's named tensors on every process (e.g. the dataset it encoded), returned on the CPU.

        The others call it with None and wait in it while the main process works. The names, dtypes and shapes
        travel as JSON text, the values as tensors: nothing is unpickled. The main process passes None when it
        could not produce them (it stopped or failed; it gets {} back): the others then raise PeerProcessError.
        """
        header = json.dumps({k: [str(v.dtype).removeprefix("torch."), list(v.shape)] for k, v in tensors.items()}) \
            if self.is_main and tensors is not None else ""
        header = self._broadcast_text(header, src=0)
        if not header:
            if self.is_main:
                return {}
            raise PeerProcessError(f"training process {self.rank} of {self.world_size}: the main process stopped "
                                   "before it shared its work; every process ends")
        shared = {}
        for name, (dtype, shape) in json.loads(header).items():
            if self.is_main:
                buffer = tensors[name].detach().to(self.device).contiguous()  # type: ignore[index]
            else:
                buffer = torch.empty(shape, dtype=getattr(torch, dtype), device=self.device)
            self._broadcast(buffer, src=0)
            shared[name] = buffer.cpu()
        return shared

    def barrier(self) -> None:
        """Wait for every process (e.g. while the main one encodes the dataset)."""
        try:
            dist.barrier()
        except (RuntimeError, dist.DistBackendError) as e:
            raise PeerProcessError(f"training process {self.rank} of {self.world_size} lost the others at a "
                                   f"barrier ({type(e).__name__})") from e
