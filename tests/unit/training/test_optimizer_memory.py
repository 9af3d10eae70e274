"""The optimizer part of the memory estimate: per optimizer kind, the bytes its library's state really holds."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tests.support.tiny_models import attach, make_model
from trainer.training import optimizers
from trainer.training.config import LoraShape, Optimisation
from trainer.training.memory import adapter_parameter_shapes, estimate_training_memory, optimizer_state_bytes

# LoRA down/up of a Linear, of a 3x3 conv (down) and its 1x1 up, a DoRA magnitude, a vector, one tensor above
# bitsandbytes' 4096-element threshold.
SHAPES = [(4, 40), (24, 4), (4, 8, 3, 3), (16, 4, 1, 1), (1, 40), (7,), (3000, 2)]
KINDS = [("adamw", {}), ("lion", {}), ("adafactor", {}), ("prodigy", {"learning_rate": 1.0}),
         ("adamw_schedulefree", {}), ("sgd_nesterov", {}), ("custom", {"optimizer_class": "torch.optim.Adam"})]
# optimizer_args that change the state: Prodigy's slice_p (s and p0 over every 11th element) and beta1 = 0 (no
# exp_avg), AdamW's amsgrad (max_exp_avg_sq).
WITH_ARGS = [("prodigy", {"learning_rate": 1.0, "optimizer_args": "slice_p=11"}),
             ("prodigy", {"learning_rate": 1.0, "optimizer_args": "betas=(0.0, 0.999)"}),
             ("adamw", {"optimizer_args": "amsgrad=True"})]


def _state_bytes_after_one_step(kind: str, settings: dict[str, object]) -> int:
    generator = torch.Generator().manual_seed(0)
    params = [nn.Parameter(torch.randn(shape, generator=generator)) for shape in SHAPES]
    opt = Optimisation(optimizer=kind, **settings)  # type: ignore[arg-type]
    optimizer, _ = optimizers.build_optimizer([{"params": params, "lr": opt.learning_rate, "base_lr": opt.learning_rate,
                                                "group_name": "unet"}], opt, torch.device("cpu"))
    if optimizers.has_averaged_weights(optimizer):
        optimizer.train()  # type: ignore[attr-defined]
    for param in params:
        param.grad = torch.randn(param.shape, generator=generator)
    optimizer.step()
    return sum(value.numel() * value.element_size() for state in optimizer.state.values()
               for value in state.values() if isinstance(value, torch.Tensor))


@pytest.mark.parametrize(("kind", "settings"), KINDS + WITH_ARGS,
                         ids=[f"{kind}-{settings.get('optimizer_args', '')}" for kind, settings in KINDS + WITH_ARGS])
def test_state_bytes_equal_the_real_optimizers_state_after_one_step(kind: str, settings: dict[str, object]) -> None:
    arguments = Optimisation(optimizer=kind, **settings).optimizer_kwargs()  # type: ignore[arg-type]
    assert optimizer_state_bytes(kind, SHAPES, arguments) == _state_bytes_after_one_step(kind, settings)


def test_the_kinds_rank_as_their_libraries_do() -> None:
    numel = sum(math.prod(shape) for shape in SHAPES)
    by_kind = {kind: optimizer_state_bytes(kind, SHAPES) for kind, _ in KINDS}
    assert by_kind["prodigy"] == 16 * numel  # s, p0, exp_avg, exp_avg_sq
    assert by_kind["adamw"] == 8 * numel + 4 * len(SHAPES)  # two moments and a 0-d fp32 step per tensor
    assert by_kind["adamw_schedulefree"] == 8 * numel  # z and exp_avg_sq
    assert by_kind["lion"] == by_kind["sgd_nesterov"] == 4 * numel
    # factored: a LoRA down [4, 40] keeps a row of 4 and a column of 40; a 1x1 up [16, 4, 1, 1] gains nothing
    assert optimizer_state_bytes("adafactor", [(4, 40)]) == 4 * (4 + 40) + 4
    assert optimizer_state_bytes("adafactor", [(16, 4, 1, 1)]) == 4 * 2 * 64 + 4
    assert by_kind["adafactor"] < by_kind["lion"]


def test_adamw8bit_follows_bitsandbytes_thresholds() -> None:
    # bitsandbytes (not installed here; it needs CUDA): fp32 states under 4096 elements, else two uint8 states
    # and two fp32 block maxima per 256 elements.
    assert optimizer_state_bytes("adamw8bit", [(4095,)]) == 8 * 4095
    assert optimizer_state_bytes("adamw8bit", [(64, 64)]) == 2 * 4096 + 2 * 4 * 16
    assert optimizer_state_bytes("adamw8bit", [(4097,)]) == 2 * 4097 + 2 * 4 * 17
    assert optimizer_state_bytes("adamw8bit", [(4097,)], {"min_8bit_size": 8192}) == 8 * 4097


@pytest.mark.parametrize("adapter", ["lora", "loha", "lokr", "dora"])
def test_adapter_parameter_shapes_equal_the_built_adapters(adapter: str) -> None:
    shape = LoraShape(rank=2, targets="attention_ff_conv", adapter=adapter)
    model = make_model()
    adapters = attach(model, shape)
    layers = adapters.keys()
    built = sorted(tuple(param.shape) for _, param in adapters.named_parameters())
    assert sorted(adapter_parameter_shapes(make_model(), layers, shape)) == built


def test_the_estimate_counts_the_optimizer_state_of_the_shapes() -> None:
    numel = sum(math.prod(shape) for shape in SHAPES)
    for kind, _ in KINDS:
        estimate = estimate_training_memory(10**9, numel, 1, 512, optimizer=kind, parameter_shapes=SHAPES)
        assert estimate.optimizer_bytes == optimizer_state_bytes(kind, SHAPES), kind
    sliced = estimate_training_memory(10**9, numel, 1, 512, optimizer="prodigy", parameter_shapes=SHAPES,
                                      optimizer_args={"slice_p": 11})
    assert sliced.optimizer_bytes == optimizer_state_bytes("prodigy", SHAPES, {"slice_p": 11}) < 16 * numel
    flat = estimate_training_memory(10**9, numel, 1, 512, optimizer="adafactor")
    assert flat.optimizer_bytes == 4 * numel + 4  # without shapes: one flat tensor, the unfactored upper bound
    with pytest.raises(ValueError, match="parameter_shapes hold 160 elements; expected trainable_params = 161"):
        estimate_training_memory(10**9, 161, 1, 512, parameter_shapes=[(4, 40)])
