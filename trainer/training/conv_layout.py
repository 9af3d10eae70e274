"""Convolution kernels in channels-last layout while a model trains on the CPU; the layout is put back after.

PyTorch's CPU convolution takes its slow im2col path for a batch of 1 with small inputs (the training of a
64-512 px LoRA at batch 1), and at batch > 1 oneDNN reorders every contiguous kernel on every call. With the
kernels channels-last, oneDNN runs them as they are stored: the full-size SD1.5 UNet's forward + backward at
64 px takes about 0.7x the time (measured with benchmarks/profile_train.py --full-size). Only the memory
layout changes: the same values, the same shapes and parameters, one kernel copied at a time. The results
are the same convolution up to float rounding (another summation order), not bit for bit.

Relaying costs two copies of the kernels per run (SD1.5's UNet: about 1.3 s each way on one CPU thread, 59 MB in
35 ms), against about 0.45 s saved per step at 64 px and more at 256 px: it pays for itself after about 7 steps,
so a shorter run keeps the layout it has.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

_FLOAT_KERNELS = (torch.float32, torch.float16, torch.bfloat16)
MIN_STEPS = 10  # runs of fewer steps than this lose more to the two copies than they gain


def _relaid(kernel: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    return kernel.contiguous(memory_format=memory_format)


def _kernels(model: nn.Module) -> list[nn.Parameter]:
    """The 4-D float kernels of the model's 2-D convolutions (quantized ones are cast by the host per call)."""
    return [m.weight for m in model.modules()
            if isinstance(m, nn.Conv2d) and isinstance(m.weight, nn.Parameter) and m.weight.ndim == 4
            and m.weight.dtype in _FLOAT_KERNELS]


@contextlib.contextmanager
def channels_last_kernels(model: nn.Module, device: torch.device, steps: int) -> Iterator[int]:
    """Inside: the model's conv kernels on the CPU are channels-last; on exit the ones it relaid are contiguous
    again. Yields how many it relaid; for a run of fewer than MIN_STEPS `steps`, or on another device (not
    measured there), it changes nothing."""
    if device.type != "cpu" or steps < MIN_STEPS:
        yield 0
        return
    relaid: list[nn.Parameter] = []
    try:
        with torch.no_grad():
            for kernel in _kernels(model):
                if kernel.device.type == "cpu" and not kernel.is_contiguous(memory_format=torch.channels_last):
                    kernel.data = _relaid(kernel.data, torch.channels_last)
                    relaid.append(kernel)
        yield len(relaid)
    finally:
        with torch.no_grad():
            for kernel in relaid:
                kernel.data = _relaid(kernel.data, torch.contiguous_format)
