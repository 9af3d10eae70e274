"""A training run's share of a data-parallel job (torchrun, started by the command line): which process it is,
the dataset encoded once by the main process and shared, and what only the main process does.

Under torchrun started by the command line (WORLD_SIZE > 1, and the command line's word in
cli/processes.py's GROUP_REQUEST_VARIABLE) the first run joins the process group on the host's device; in the
editor there is none, whatever WORLD_SIZE it inherited, and every function here is the single-process identity.
The engine's part (sharding, gradient sums) is trainer/training/distributed.py.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import comfy.model_management

from ...cli.processes import process_group_requested
from ...trainer.data.latents import EncodedImage
from ...trainer.data.spec import DatasetItem
from ...trainer.training.distributed import DataParallel

if TYPE_CHECKING:  # the host's sampling nodes are not needed to decide who joins a process group
    from .training_samples import SamplePlan

log = logging.getLogger(__name__)
_FIELDS = ("latent", "flipped", "context", "pooled", "mask")  # EncodedImage's tensors; its caption is the item's


def process_group() -> DataParallel | None:
    """This process's place among the training processes torchrun started through the command line; None for
    one process, and in the editor (only the command line starts a process group)."""
    if not process_group_requested(os.environ, os.getpid()):
        if int(os.environ.get("WORLD_SIZE") or 1) > 1:
            log.info("LoRA Lab: WORLD_SIZE=%s is set, but this host was not started by LoRA Lab's command line "
                     "under torchrun: training in this process alone", os.environ["WORLD_SIZE"])
        return None
    return DataParallel.from_env(comfy.model_management.get_torch_device())


def world_size(group: DataParallel | None) -> int:
    return 1 if group is None else group.world_size


def plan_for(group: DataParallel | None, plan: SamplePlan) -> SamplePlan:
    """Samples are rendered by the main process only: the others get a plan without prompts."""
    return plan if group is None or group.is_main else dataclasses.replace(plan, prompts=())


def shared_encoding(group: DataParallel | None, items: tuple[DatasetItem, ...],
                    encode: Callable[[], list[EncodedImage]]) -> list[EncodedImage]:
    """`encode()` on the main process only; the others wait and receive its latents and contexts.

    If the main process cannot encode (a Cancel, an error) it tells the others, which then fail with
    PeerProcessError instead of waiting for the timeout, and it raises its own error.
    """
    if group is None:
        return encode()
    if not group.is_main:
        tensors = group.share_tensors(None)
        return [EncodedImage(caption=item.caption, **{f: tensors.get(f"{i}.{f}") for f in _FIELDS})
                for i, item in enumerate(items)]
    try:
        encoded = encode()
    except BaseException:
        group.share_tensors(None)
        raise
    group.share_tensors({f"{i}.{f}": getattr(image, f) for i, image in enumerate(encoded) for f in _FIELDS
                         if getattr(image, f) is not None})
    return encoded
