"""LoRA attached by hooks: target selection, zero delta at init, merged == unmerged, kohya layout, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.support.tiny_models import COND_DIM, COND_TOKENS, HIDDEN, LATENT, attach, make_model
from trainer.adapters.lora import lora_delta
from trainer.errors import LoraTargetError
from trainer.training.config import LoraShape
from trainer.training.inplace_guard import normalisation_inputs_copied
from trainer.training.layer_selection import select_targets
from trainer.training.trainable_lora import LoraAdapterSet, adapter_parameter_count, release_inference_tensors

BLOCK = "attn.transformer_blocks.0"
ATTENTION = [f"{BLOCK}.attn{i}.{p}" for i in (1, 2) for p in ("to_q", "to_k", "to_v", "to_out.0")]
FEED_FORWARD = ["attn.proj_in", f"{BLOCK}.ff.net.0.proj", f"{BLOCK}.ff.net.2", "attn.proj_out"]
CONV = ["res.in_layers.2", "res.emb_layers.1", "res.out_layers.3"]


def _inputs(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return (torch.randn(batch, *LATENT, generator=g), torch.tensor([10, 900][:batch]),
            torch.randn(batch, COND_TOKENS, COND_DIM, generator=g))


def test_select_targets_per_kind() -> None:
    model = make_model()
    assert sorted(select_targets(model, "attention")) == sorted(ATTENTION)
    assert sorted(select_targets(model, "attention_ff")) == sorted(ATTENTION + FEED_FORWARD)
    assert sorted(select_targets(model, "attention_ff_conv")) == sorted(ATTENTION + FEED_FORWARD + CONV)
    with pytest.raises(ValueError, match="targets = 'everything'"):
        select_targets(model, "everything")


def test_select_targets_knows_clip_and_dit_names() -> None:
    model = nn.Module()
    layer = nn.Module()
    layer.self_attn = nn.Module()
    for p in ("q_proj", "k_proj", "v_proj", "out_proj"):
        setattr(layer.self_attn, p, nn.Linear(4, 4))
    layer.mlp = nn.Module()
    layer.mlp.fc1, layer.mlp.fc2 = nn.Linear(4, 8), nn.Linear(8, 4)
    layer.img_attn = nn.Module()
    layer.img_attn.qkv, layer.img_attn.proj = nn.Linear(4, 12), nn.Linear(4, 4)
    model.layers = nn.ModuleList([layer])
    assert select_targets(model, "attention") == [
        "layers.0.self_attn.q_proj", "layers.0.self_attn.k_proj", "layers.0.self_attn.v_proj",
        "layers.0.self_attn.out_proj", "layers.0.img_attn.qkv", "layers.0.img_attn.proj"]
    assert "layers.0.mlp.fc1" in select_targets(model, "attention_ff")


def test_zero_delta_at_init_leaves_outputs_unchanged() -> None:
    model = make_model()
    x, t, cond = _inputs()
    with torch.no_grad():
        before = model(x, t, cond)
        adapters = attach(model, LoraShape(rank=4, targets="attention_ff_conv"))
        after = model(x, t, cond)
    assert len(adapters) == len(ATTENTION + FEED_FORWARD + CONV)
    assert torch.equal(before, after)
    assert all(torch.count_nonzero(adapters.merged_delta(k)) == 0 for k in adapters.keys())


def test_base_frozen_and_lora_params_fp32() -> None:
    model = make_model().to(torch.bfloat16)
    adapters = attach(model, LoraShape(rank=2, targets="attention_ff_conv"))
    assert not any(p.requires_grad for p in model.parameters())
    assert all(p.requires_grad and p.dtype == torch.float32 for p in adapters.parameters())
    x, t, cond = _inputs()
    out = model(x.bfloat16(), t, cond.bfloat16())  # bf16 base, fp32 LoRA: the hook casts both ways
    assert out.dtype == torch.bfloat16


def _randomise(adapters: LoraAdapterSet) -> None:
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in adapters.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


@pytest.mark.parametrize("layer", [
    nn.Linear(6, 5), nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 3, padding=1),
    nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Conv2d(3, 4, (3, 1), padding=(2, 0), dilation=2)])
def test_merged_equals_unmerged(layer: nn.Module) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(layer)
    x = torch.randn(2, 7, 6) if isinstance(layer, nn.Linear) else torch.randn(2, 3, 9, 9)
    adapters = LoraAdapterSet(rank=2, alpha=3.0, init_seed=1)
    adapters.attach(model, ["0"])
    _randomise(adapters)
    with torch.no_grad():
        hooked = model(x)
        adapters.detach()
        base_weight = layer.weight.clone()
        layer.weight += adapters.merged_delta("0")
        merged = model(x)
    torch.testing.assert_close(hooked, merged, rtol=1e-5, atol=1e-5)
    # lora_math (used by the loader) computes the same delta from the exported tensors
    state = adapters.state_dict()
    delta = lora_delta(state["0.lora_up.weight"], state["0.lora_down.weight"]) * 1.5
    torch.testing.assert_close(delta.reshape(base_weight.shape), adapters.merged_delta("0"))


def test_a_loaded_alpha_scales_the_forward_as_it_scales_the_merged_delta() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(6, 5)
    x = torch.randn(3, 6)
    adapters = LoraAdapterSet(rank=2, alpha=2.0, init_seed=1)
    adapters.attach(nn.Sequential(layer), ["0"])
    _randomise(adapters)
    with torch.no_grad():
        base = torch.nn.functional.linear(x, layer.weight, layer.bias)
        delta_at_alpha_2 = layer(x) - base
        state = adapters.state_dict()
        state["0.alpha"] = torch.tensor(5.0)  # a state saved with another alpha: scale 2.5 instead of 1
        adapters.load_state_dict(state)
        torch.testing.assert_close(layer(x) - base, 2.5 * delta_at_alpha_2)
        torch.testing.assert_close(layer(x) - base, x @ adapters.merged_delta("0").T)


def test_state_dict_kohya_layout_and_round_trip() -> None:
    model = make_model()
    adapters = attach(model, LoraShape(rank=3, alpha=1.5, targets="attention_ff_conv"))
    state = adapters.state_dict()
    assert state[f"{BLOCK}.attn2.to_k.lora_down.weight"].shape == (3, COND_DIM)
    assert state[f"{BLOCK}.attn2.to_k.lora_up.weight"].shape == (HIDDEN, 3)
    assert state["res.in_layers.2.lora_down.weight"].shape == (3, HIDDEN, 3, 3)
    assert state["res.in_layers.2.lora_up.weight"].shape == (HIDDEN, 3, 1, 1)
    assert state["attn.proj_in.lora_down.weight"].shape == (3, HIDDEN, 1, 1)
    assert state["res.in_layers.2.alpha"].ndim == 0 and state["res.in_layers.2.alpha"].item() == 1.5
    _randomise(adapters)
    other = attach(make_model(), LoraShape(rank=3, alpha=1.5, targets="attention_ff_conv"), seed=9)
    other.load_state_dict(adapters.state_dict())
    assert all(torch.equal(a, b)
               for a, b in zip(adapters.state_dict().values(), other.state_dict().values(), strict=True))
    with pytest.raises(LoraTargetError, match="missing"):
        other.load_state_dict({k: v for k, v in state.items() if "proj_in" not in k})
    smaller = attach(make_model(), LoraShape(rank=2, targets="attention_ff_conv"))
    with pytest.raises(LoraTargetError, match=r"has shape \(3, 16, 1, 1\), this layer needs \(2, 16, 1, 1\)"):
        smaller.load_state_dict(state)


def test_same_seed_same_init_whatever_global_rng() -> None:
    torch.manual_seed(1)
    a = attach(make_model(), LoraShape(rank=2), seed=5).state_dict()
    torch.manual_seed(2)
    b = attach(make_model(), LoraShape(rank=2), seed=5).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_rank_above_layer_size_is_refused() -> None:
    model = nn.Sequential(nn.Linear(64, 6))
    with pytest.raises(LoraTargetError, match=r"rank = 8 is larger than layer '0' allows: it maps 64 inputs "
                                               r"to 6 outputs, so rank can be at most 6"):
        LoraAdapterSet(rank=8, alpha=8).attach(model, ["0"])


def test_unknown_or_wrong_layer_is_refused() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.GELU())
    with pytest.raises(LoraTargetError, match="layer 'nope' is not found"):
        LoraAdapterSet(rank=1, alpha=1).attach(model, ["nope"])
    with pytest.raises(LoraTargetError, match="layer '1' is a GELU"):
        LoraAdapterSet(rank=1, alpha=1).attach(model, ["1"])


def test_detach_restores_exact_outputs() -> None:
    model = make_model()
    x, t, cond = _inputs()
    with torch.no_grad():
        base = model(x, t, cond)
        adapters = attach(model, LoraShape(rank=2, targets="attention_ff_conv"))
        _randomise(adapters)
        assert not torch.equal(model(x, t, cond), base)
        adapters.detach()
        assert not adapters.attached
        assert torch.equal(model(x, t, cond), base)


def test_release_inference_tensors_lets_gradients_flow() -> None:
    with torch.inference_mode():
        model = make_model()
    x, t, cond = _inputs()
    with torch.inference_mode(False):
        before = {k: v.clone() for k, v in model.state_dict().items()}
        replaced = release_inference_tensors(model)
        assert replaced == len(list(model.parameters())) + len(list(model.buffers()))
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        adapters = attach(model, LoraShape(rank=2))
        model(x, t, cond).square().mean().backward()
    assert all(p.grad is not None for p in adapters.parameters())


class _InPlaceResidual(torch.nn.Module):
    """The host CLIP's block shape: `x += layer(norm(x))`, in place on the residual stream."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(8)
        self.self_attn = torch.nn.Module()
        self.self_attn.q_proj = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * 1.0
        for _ in range(2):
            x += self.self_attn.q_proj(self.norm(x))
        return x


def test_lora_trains_through_in_place_residual_adds_with_normalisation_inputs_copied() -> None:
    model = _InPlaceResidual()
    adapters = LoraAdapterSet(rank=2, alpha=2.0)
    adapters.attach(model, ["self_attn.q_proj"])
    with torch.no_grad():
        adapters["self_attn.q_proj"].lora_up.weight.fill_(0.1)
    x = torch.randn(3, 8)
    with pytest.raises(RuntimeError, match="inplace"):
        model(x).sum().backward()  # what happens without the guard
    with normalisation_inputs_copied(model) as guarded:
        model(x).sum().backward()
    assert guarded == 1 and adapters["self_attn.q_proj"].lora_down.weight.grad.abs().sum() > 0
    assert not model.norm._forward_pre_hooks  # the hooks are gone afterwards


def test_lora_parameter_count_matches_the_adapters_built() -> None:
    model = make_model()
    names = select_targets(model, "attention_ff_conv")
    adapters = LoraAdapterSet(rank=3, alpha=3.0)
    adapters.attach(model, names)
    assert adapter_parameter_count(model, names, adapters.shape) == sum(p.numel() for p in adapters.parameters()) > 0
