"""Channels-last conv kernels during CPU training: same values and results, layout restored, nothing else touched."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from trainer.training.conv_layout import MIN_STEPS, channels_last_kernels


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 4, 3, padding=1),
                         nn.Linear(8, 8))


def test_kernels_are_channels_last_inside_with_the_same_values_and_results() -> None:
    model = _model()
    x = torch.randn(1, 4, 8, 8)
    kernels = [model[0].weight, model[3].weight]
    before = [k.detach().clone() for k in kernels]
    expected = model[:4](x)
    with channels_last_kernels(model, torch.device("cpu"), MIN_STEPS) as relaid:
        assert relaid == 2  # the 1x1 kernel is channels-last already, the Linear is not a conv
        for kernel, value in zip(kernels, before, strict=True):
            assert kernel.is_contiguous(memory_format=torch.channels_last) and not kernel.is_contiguous()
            assert torch.equal(kernel, value)
        assert model[0].weight is kernels[0]  # the same parameters: optimizers and hooks still hold them
        inside = model[:4](x)
    torch.testing.assert_close(inside, expected, rtol=1e-5, atol=1e-6)
    for kernel, value in zip(kernels, before, strict=True):
        assert kernel.is_contiguous() and torch.equal(kernel, value)


def test_layout_is_restored_when_the_run_fails_and_gradients_still_flow() -> None:
    model = _model()
    model.requires_grad_(False)
    model[0].weight.requires_grad_(True)
    with pytest.raises(RuntimeError, match="stop"), channels_last_kernels(model, torch.device("cpu"), MIN_STEPS):
        model[:4](torch.randn(2, 4, 8, 8)).square().mean().backward()
        assert model[0].weight.grad is not None and model[0].weight.grad.shape == (8, 4, 3, 3)
        raise RuntimeError("stop")
    assert model[0].weight.is_contiguous() and model[3].weight.is_contiguous()


def test_another_device_or_a_short_run_changes_nothing() -> None:
    model = _model()
    with channels_last_kernels(model, torch.device("cuda"), MIN_STEPS) as relaid:
        assert relaid == 0 and model[0].weight.is_contiguous()
    with channels_last_kernels(model, torch.device("cpu"), MIN_STEPS - 1) as relaid:
        assert relaid == 0 and model[0].weight.is_contiguous()
