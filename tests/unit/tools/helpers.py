"""Shared by the tool tests: fixture LoRAs in any format, and the change a stack of them applies per layer."""
from __future__ import annotations

import math

import torch

from scripts import lora_fixtures as fx
from trainer.adapters.delta import delta_weight, module_delta_shape
from trainer.lora.file import LoraFile, load_lora_file, parse_lora
from trainer.lora.host_keys import entry_roles, host_modules
from trainer.tools.sources import bias_delta, gather_layers, is_text_encoder

TARGETS = fx.SD1_TARGETS  # linear, 1x1 conv, 3x3 conv, text encoder


def fixture(tmp_path, fmt: str, seed: int, rank: int = 4, alpha: float | None = 2.0, targets=TARGETS) -> LoraFile:
    path = tmp_path / f"{fmt}_{seed}_{rank}.safetensors"
    fx.write_format(fmt, path, targets, rank=rank, alpha=alpha, gen=fx.default_generator(seed))
    return load_lora_file(path)


def parsed(tensors: dict[str, torch.Tensor], name: str = "result") -> LoraFile:
    return parse_lora(tensors, {}, name)


def applied(loras: list[tuple[LoraFile, float, float]]) -> dict[str, torch.Tensor]:
    """Host prefix -> the summed fp32 change of the stack, as the adapters' own math computes it (flattened)."""
    total: dict[str, torch.Tensor] = {}
    for lora, strength_model, strength_clip in loras:
        for prefix, entries in host_modules(lora).items():
            roles = entry_roles(entries)
            strength = strength_clip if is_text_encoder(prefix) else strength_model
            shape = module_delta_shape(roles)
            if shape is None:
                continue
            delta = delta_weight(roles, shape).reshape(shape[0], -1) * strength
            total[prefix] = total[prefix] + delta.reshape(total[prefix].shape) if prefix in total else delta
    return total


def biases(loras: list[tuple[LoraFile, float, float]]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    from trainer.tools.sources import Source
    for prefix, contributions in gather_layers([Source(lora, sm, sc) for lora, sm, sc in loras]).items():
        for c in contributions:
            b = bias_delta(c)
            if b is not None:
                out[prefix] = out[prefix] + b if prefix in out else b
    return out


def numel(shape) -> int:
    return math.prod(shape)
