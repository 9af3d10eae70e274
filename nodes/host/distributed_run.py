"""A training run's share of a data-parallel job (torchrun, started by the command line): which process it is,
the dataset encoded once by the main process and shared, and what only the main process does.

Under torchrun (WORLD_SIZE > 1) the first run joins the process group on the host's device; in the editor
there is none and every function here is the single-process identity. The engine's part (sharding, gradient sums) is
trainer/training/distributed.py.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import comfy.model_management

from ...trainer.data.latents import EncodedImage
from ...trainer.data.spec import DatasetItem
from ...trainer.training.distributed import DataParallel
from .training_samples import SamplePlan

_FIELDS = ("latent", "flipped", "context", "pooled")  # EncodedImage's tensors; its caption is the item's


def process_group() -> DataParallel | None:
    """This process's place among the training processes torchrun started; None for one process."""
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
