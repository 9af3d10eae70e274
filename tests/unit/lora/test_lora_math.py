"""Tests of the LoRA delta math against independent formulations (conv layers, kohya merge, Kronecker identities)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.support.reference import bias_delta, merge_weight, module_bias_numel
from trainer.adapters.delta import delta_weight, module_delta_shape, module_rank, module_scale
from trainer.adapters.loha import loha_delta
from trainer.adapters.lokr import lokr_delta
from trainer.adapters.lora import lora_delta
from trainer.adapters.registry import module_kind
from trainer.errors import LoraShapeError, LoraValueError


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _r(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(shape, generator=gen)


def test_linear_lora_is_scaled_up_at_down(gen: torch.Generator) -> None:
    down, up = _r(gen, 4, 6), _r(gen, 5, 4)
    module = {"down": down, "up": up, "alpha": torch.tensor(2.0)}
    torch.testing.assert_close(delta_weight(module, (5, 6)), up @ down * 0.5)
    assert module_scale(module) == 0.5 and module_rank(module) == 4


def test_missing_alpha_means_scale_one(gen: torch.Generator) -> None:
    down, up = _r(gen, 4, 6), _r(gen, 5, 4)
    torch.testing.assert_close(delta_weight({"down": down, "up": up}, (5, 6)), up @ down)


def test_zero_up_leaves_weight_unchanged(gen: torch.Generator) -> None:
    weight = _r(gen, 5, 6)
    module = {"down": _r(gen, 4, 6), "up": torch.zeros(5, 4), "alpha": torch.tensor(4.0)}
    assert torch.equal(merge_weight(weight, module), weight)


def test_conv3x3_matches_kohya_merge_formula(gen: torch.Generator) -> None:
    down, up = _r(gen, 3, 4, 3, 3), _r(gen, 8, 3, 1, 1)
    kohya = F.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3)  # networks/lora.py merge_to
    torch.testing.assert_close(delta_weight({"down": down, "up": up}, (8, 4, 3, 3)), kohya)


def test_conv_delta_equals_running_the_lora_layers(gen: torch.Generator) -> None:
    x = _r(gen, 1, 4, 7, 7)
    down, up = _r(gen, 3, 4, 3, 3), _r(gen, 8, 3, 1, 1)
    layered = F.conv2d(F.conv2d(x, down, padding=1), up)
    merged = F.conv2d(x, delta_weight({"down": down, "up": up}, (8, 4, 3, 3)), padding=1)
    torch.testing.assert_close(merged, layered, rtol=1e-4, atol=1e-4)


def test_tucker_mid_equals_running_down_mid_up(gen: torch.Generator) -> None:
    x = _r(gen, 1, 4, 6, 6)
    down, mid, up = _r(gen, 3, 4, 1, 1), _r(gen, 3, 3, 3, 3), _r(gen, 8, 3, 1, 1)
    layered = F.conv2d(F.conv2d(F.conv2d(x, down), mid, padding=1), up)
    module = {"down": down, "mid": mid, "up": up}
    assert module_delta_shape(module) == (8, 4, 3, 3)
    merged = F.conv2d(x, delta_weight(module, (8, 4, 3, 3)), padding=1)
    torch.testing.assert_close(merged, layered, rtol=1e-4, atol=1e-4)


def test_flattened_native_conv_down_gives_the_same_delta(gen: torch.Generator) -> None:
    down, up = _r(gen, 3, 4, 3, 3), _r(gen, 8, 3)
    four_d = delta_weight({"down": down, "up": up.reshape(8, 3, 1, 1)}, (8, 4, 3, 3))
    flat = delta_weight({"down": down.flatten(1), "up": up}, (8, 4, 3, 3))
    torch.testing.assert_close(flat, four_d)
    assert module_delta_shape({"down": down.flatten(1), "up": up}) == (8, 36)


def test_loha_is_hadamard_of_two_products(gen: torch.Generator) -> None:
    t = {"hada_w1_a": _r(gen, 5, 2), "hada_w1_b": _r(gen, 2, 6), "hada_w2_a": _r(gen, 5, 2),
         "hada_w2_b": _r(gen, 2, 6), "alpha": torch.tensor(1.0)}
    expected = (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"]) * 0.5
    torch.testing.assert_close(delta_weight(t, (5, 6)), expected)
    assert module_kind(t) == "loha" and module_delta_shape(t) == (5, 6)


def test_loha_tucker_matches_mode_products(gen: torch.Generator) -> None:
    r, out, inp = 2, 5, 3
    t = {"hada_w1_a": _r(gen, r, out), "hada_w1_b": _r(gen, r, inp), "hada_t1": _r(gen, r, r, 3, 3),
         "hada_w2_a": _r(gen, r, out), "hada_w2_b": _r(gen, r, inp), "hada_t2": _r(gen, r, r, 3, 3)}

    def mode(core: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # core [i, j, k, l] -> [out, in, k, l]: contract i with a [i, out] and j with b [j, in]
        return torch.tensordot(torch.tensordot(a.t(), core, dims=([1], [0])), b, dims=([1], [0])).permute(0, 3, 1, 2)

    expected = mode(t["hada_t1"], t["hada_w1_a"], t["hada_w1_b"]) * mode(t["hada_t2"], t["hada_w2_a"], t["hada_w2_b"])
    assert module_delta_shape(t) == (out, inp, 3, 3)
    torch.testing.assert_close(delta_weight(t, (out, inp, 3, 3)), expected)
    assert loha_delta(t).shape == (out, inp * 9)


def test_lokr_is_kronecker_product(gen: torch.Generator) -> None:
    t = {"lokr_w1": _r(gen, 2, 3), "lokr_w2_a": _r(gen, 4, 2), "lokr_w2_b": _r(gen, 2, 5), "alpha": torch.tensor(1.0)}
    expected = torch.kron(t["lokr_w1"], t["lokr_w2_a"] @ t["lokr_w2_b"]) * 0.5
    torch.testing.assert_close(delta_weight(t, (8, 15)), expected)
    assert module_delta_shape(t) == (8, 15) and module_rank(t) == 2


def test_lokr_two_full_factors_ignore_alpha(gen: torch.Generator) -> None:
    t = {"lokr_w1": _r(gen, 2, 2), "lokr_w2": _r(gen, 3, 3), "alpha": torch.tensor(7.0)}
    assert module_scale(t) == 1.0 and module_rank(t) is None
    torch.testing.assert_close(delta_weight(t, (6, 6)), torch.kron(t["lokr_w1"], t["lokr_w2"]))


def test_lokr_conv_unsqueezes_w1(gen: torch.Generator) -> None:
    w1, w2 = _r(gen, 2, 2), _r(gen, 3, 4, 3, 3)
    t = {"lokr_w1": w1, "lokr_w2": w2}
    assert module_delta_shape(t) == (6, 8, 3, 3)
    torch.testing.assert_close(lokr_delta(t), torch.kron(w1, w2.flatten(1)))
    t2 = {"lokr_w1_a": _r(gen, 2, 1), "lokr_w1_b": _r(gen, 1, 2), "lokr_w2_a": _r(gen, 2, 3),
          "lokr_w2_b": _r(gen, 2, 4), "lokr_t2": _r(gen, 2, 2, 3, 3)}
    assert module_delta_shape(t2) == (6, 8, 3, 3) and lokr_delta(t2).shape == (6, 72)


def test_diff_module_and_bias(gen: torch.Generator) -> None:
    diff, diff_b = _r(gen, 4), _r(gen, 4)
    module = {"diff": diff, "diff_b": diff_b}
    torch.testing.assert_close(delta_weight(module, (4,)), diff)
    torch.testing.assert_close(bias_delta(module), diff_b)
    assert module_delta_shape(module) == (4,) and module_bias_numel(module) == 4
    bias_only = {"diff_b": diff_b}
    assert module_delta_shape(bias_only) is None and torch.equal(delta_weight(bias_only, (4, 2)), torch.zeros(4, 2))
    assert module_kind(bias_only) == "diff"
    norm = {"w_norm": diff, "b_norm": diff_b}
    assert module_kind(norm) == "norm" and module_delta_shape(norm) == (4,)
    assert bias_delta({"down": diff, "up": diff}) is None and module_bias_numel({"down": diff}) is None


def test_shape_that_does_not_fit_names_both_shapes(gen: torch.Generator) -> None:
    module = {"down": _r(gen, 2, 6), "up": _r(gen, 5, 2)}
    with pytest.raises(LoraShapeError, match="delta has shape \\[5, 6\\].*model weight has shape \\[5, 7\\]"):
        delta_weight(module, (5, 7))
    with pytest.raises(LoraShapeError, match="Cannot tell the module kind"):
        module_kind({"alpha": torch.tensor(1.0)})


def _comfy_dora(weight: torch.Tensor, delta: torch.Tensor, scale: torch.Tensor, strength: float) -> torch.Tensor:
    """comfy/weight_adapter/base.py weight_decompose, restated for 2-D weights in fp32."""
    calc = weight + delta
    if scale.shape[0] == weight.shape[0]:
        norm = weight.norm(dim=1, keepdim=True)
    else:
        norm = calc.norm(dim=0, keepdim=True)
    calc = calc * (scale / (norm + torch.finfo(torch.float32).eps))
    return weight + strength * (calc - weight)


@pytest.mark.parametrize("axis_shape", [(5, 1), (1, 6)])
@pytest.mark.parametrize("strength", [1.0, 0.5, 0.0])
def test_dora_merge_follows_comfyui(gen: torch.Generator, axis_shape: tuple[int, int], strength: float) -> None:
    weight, down, up = _r(gen, 5, 6), _r(gen, 2, 6), _r(gen, 5, 2)
    scale = _r(gen, *axis_shape).abs() + 0.5
    module = {"down": down, "up": up, "alpha": torch.tensor(1.0), "dora_scale": scale}
    expected = _comfy_dora(weight, up @ down * 0.5, scale, strength)
    torch.testing.assert_close(merge_weight(weight, module, strength), expected)


def test_peft_magnitude_is_applied_on_the_output_axis(gen: torch.Generator) -> None:
    weight, down, up, magnitude = _r(gen, 5, 6), _r(gen, 2, 6), _r(gen, 5, 2), _r(gen, 5).abs()
    merged = merge_weight(weight, {"down": down, "up": up, "magnitude": magnitude})
    torch.testing.assert_close(merged, _comfy_dora(weight, up @ down, magnitude[:, None], 1.0))


def test_plain_merge_with_strength(gen: torch.Generator) -> None:
    weight, down, up = _r(gen, 5, 6), _r(gen, 2, 6), _r(gen, 5, 2)
    torch.testing.assert_close(merge_weight(weight, {"down": down, "up": up}, -0.5), weight - 0.5 * (up @ down))
    assert lora_delta(up, down).dtype == torch.float32


def test_merge_refuses_non_finite_results() -> None:
    module = {"down": torch.full((1, 2), 1e30), "up": torch.full((2, 1), 1e30)}
    with pytest.raises(LoraValueError, match="NaN/Inf.*lower the strength"):
        merge_weight(torch.zeros(2, 2), module)
