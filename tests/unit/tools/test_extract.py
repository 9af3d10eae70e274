"""Extract LoRA: (base + a LoRA's change, base) at the LoRA's rank gives back that change; the quantile clamp is
sd-scripts' formula; unchanged layers are left out; every validation message is reached."""
from __future__ import annotations

import json

import pytest
import torch

from tests.unit.tools.helpers import applied, fixture, parsed
from trainer.adapters.delta import delta_weight, module_delta_shape
from trainer.errors import LoraShapeError, LoraToolError, LoraValueError
from trainer.lora.host_keys import entry_roles, host_modules
from trainer.tools.extract import ExtractPlan, extract_layer, extract_lora, quantile
from trainer.tools.metadata import bake_metadata
from trainer.tools.rank import RankRule

CPU = torch.device("cpu")


def _model_pairs(lora, seed: int = 3) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(prefix, base, base + the LoRA's change) for every layer of `lora`, base weights random, kernels kept."""
    gen = torch.Generator().manual_seed(seed)
    pairs = []
    for prefix, entries in host_modules(lora).items():
        roles = entry_roles(entries)
        shape = module_delta_shape(roles)
        base = torch.randn(shape, generator=gen)
        pairs.append((prefix, base, base + delta_weight(roles, shape).reshape(shape)))
    return pairs


@pytest.mark.parametrize("alpha", [None, 1.0])
def test_extract_at_the_loras_rank_recovers_its_change(tmp_path, alpha):
    lora = fixture(tmp_path, "kohya", 11, rank=4, alpha=2.0)  # linear, 1x1 conv, 3x3 conv, text encoder
    pairs = _model_pairs(lora)
    result = extract_lora(pairs, RankRule(4), total=len(pairs), clamp_quantile=1.0, alpha=alpha, save_dtype="fp32",
                          device="cpu", svd_method="exact")
    got, want = applied([(parsed(result.tensors), 1.0, 1.0)]), applied([(lora, 1.0, 1.0)])
    assert sorted(got) == sorted(want)
    for prefix, delta in want.items():
        torch.testing.assert_close(got[prefix], delta, rtol=1e-5, atol=1e-5)
    assert {r.rank for r in result.layers} == {4}
    assert all(r.error < 1e-4 * r.norm and r.kept_share > 1 - 1e-6 for r in result.layers)
    conv = "lora_unet_down_blocks_0_resnets_0_conv1"  # kohya LoCon layout: down [r, in, 3, 3], up [out, r, 1, 1]
    assert result.tensors[f"{conv}.lora_down.weight"].shape == (4, 4, 3, 3)
    assert result.tensors[f"{conv}.lora_up.weight"].shape == (8, 4, 1, 1)
    assert float(result.tensors[f"{conv}.alpha"]) == (alpha or 4.0)
    metadata = result.metadata
    assert metadata["loralab.tool.method"] == "extract" and metadata["ss_network_dim"] == "4"
    assert json.loads(metadata["ss_network_args"])["conv_dim"] == "4"
    assert metadata["loralab.tool.clamp_quantile"] == "off"


def test_a_rank_above_the_change_keeps_it_exactly_and_never_exceeds_the_layer():
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=gen)
    delta = torch.randn(6, 2, generator=gen) @ torch.randn(2, 5, generator=gen)
    out, report = extract_layer("lora_unet_x", base, base + delta, ExtractPlan(RankRule(64), clamp_quantile=1.0))
    assert report.rank == 5  # min(out, in)
    torch.testing.assert_close(out["lora_unet_x.lora_up.weight"] @ out["lora_unet_x.lora_down.weight"], delta,
                               rtol=1e-5, atol=1e-5)


def test_the_clamp_is_sd_scripts_formula():
    """sd-scripts: U_k diag(S_k) and Vh_k, h = torch.quantile of their entries together, both clamped to [-h, h]."""
    gen = torch.Generator().manual_seed(4)
    base = torch.randn(40, 30, generator=gen)
    delta = torch.randn(40, 30, generator=gen) * torch.logspace(0, -1, 30)
    rank, q = 6, 0.9
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    up, down = u[:, :rank] @ torch.diag(s[:rank]), vh[:rank]
    high = torch.quantile(torch.cat([up.flatten(), down.flatten()]), q)
    want = up.clamp(-high, high) @ down.clamp(-high, high)

    plan = ExtractPlan(RankRule(rank), clamp_quantile=q, svd_method="exact")
    out, report = extract_layer("lora_unet_x", base, base + delta, plan)
    got = out["lora_unet_x.lora_up.weight"] @ out["lora_unet_x.lora_down.weight"]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(want, up @ down, atol=1e-3)  # the clamp did something
    assert report.error == pytest.approx(float(torch.linalg.matrix_norm(delta - want)), rel=1e-4)
    # the halves carry sqrt(S) each, not S and 1
    torch.testing.assert_close(out["lora_unet_x.lora_down.weight"].norm(dim=1), s[:rank].sqrt(), rtol=0.2, atol=0)


def test_quantile_equals_torch_quantile():
    gen = torch.Generator().manual_seed(1)
    values = torch.randn(1001, generator=gen)
    for q in (0.0, 0.25, 0.5, 0.9, 0.99, 0.999, 1.0):
        assert quantile(values, q) == pytest.approx(float(torch.quantile(values.double(), q)), abs=1e-12)
        # torch.quantile on fp32 places q * (n - 1) in fp32: the same to fp32 rounding
        assert quantile(values, q) == pytest.approx(float(torch.quantile(values, q)), rel=1e-5)


def test_unchanged_layers_are_left_out_by_min_diff():
    gen = torch.Generator().manual_seed(2)
    base = {name: torch.randn(8, 8, generator=gen) for name in ("lora_unet_a", "lora_unet_b", "lora_unet_c")}
    bumps = {"lora_unet_a": 0.0, "lora_unet_b": 0.005, "lora_unet_c": 0.02}
    pairs = [(n, w, w + torch.full_like(w, bumps[n])) for n, w in base.items()]
    calls = []
    result = extract_lora(pairs, RankRule(2), total=3, min_diff=0.01, device="cpu",
                          on_layer=lambda done, total, prefix: calls.append((done, total, prefix)))
    assert [r.prefix for r in result.layers] == ["lora_unet_c"]
    assert result.unchanged == ("lora_unet_a", "lora_unet_b")
    assert result.metadata["loralab.tool.unchanged_layers"] == "2"
    assert calls == [(1, 3, "lora_unet_a"), (2, 3, "lora_unet_b"), (3, 3, "lora_unet_c")]
    assert "2 unchanged layers left out" in result.summary()
    # min_diff 0: only the exactly equal layer is left out
    assert [r.prefix for r in extract_lora(pairs, RankRule(2), device="cpu").layers] == ["lora_unet_b",
                                                                                          "lora_unet_c"]
    with pytest.raises(LoraToolError, match="the same in all 3 layers"):
        extract_lora(pairs, RankRule(2), min_diff=0.05, device="cpu")


def test_a_dynamic_rank_is_chosen_from_the_layers_spectrum():
    q1, _ = torch.linalg.qr(torch.randn(12, 12, generator=torch.Generator().manual_seed(6)))
    q2, _ = torch.linalg.qr(torch.randn(10, 10, generator=torch.Generator().manual_seed(7)))
    s = torch.tensor([10.0, 5.0, 2.0, 1.0, 0.5, 0, 0, 0, 0, 0])
    delta = q1[:, :10] @ torch.diag(s) @ q2
    result = extract_lora([("lora_unet_x", torch.zeros(12, 10), delta)], RankRule(8, "sv_ratio", 4.0),
                          clamp_quantile=1.0, device="cpu", svd_method="exact")
    assert result.layers[0].rank == 2  # S > 10 / 4
    assert result.layers[0].error == pytest.approx((4 + 1 + 0.25) ** 0.5, rel=1e-4)
    assert result.metadata["loralab.tool.rank_rule"] == "sv_ratio 4 (max 8)"


def test_what_cannot_be_extracted_is_named():
    w = torch.zeros(4, 4)
    for kwargs, message in [({"clamp_quantile": 0.0}, "clamp_quantile must be in"),
                            ({"clamp_quantile": 1.5}, "clamp_quantile must be in"),
                            ({"min_diff": -1.0}, "min_diff must be 0 or more"),
                            ({"alpha": -2.0}, "alpha must be a positive"),
                            ({"svd_method": "fast"}, "SVD method 'fast' is unknown"),
                            ({"save_dtype": "fp8"}, "precision 'fp8' is unknown")]:
        with pytest.raises(LoraToolError, match=message):
            extract_lora([("lora_unet_x", w, w + 1)], RankRule(2), device="cpu", **kwargs)
    with pytest.raises(LoraShapeError, match="different architectures"):
        extract_lora([("lora_unet_x", w, torch.zeros(4, 5))], RankRule(2), device="cpu")
    with pytest.raises(LoraShapeError, match="has no LoRA form"):
        extract_lora([("lora_unet_norm", torch.zeros(4), torch.ones(4))], RankRule(2), device="cpu")
    with pytest.raises(LoraValueError, match="NaN/Inf"):
        extract_lora([("lora_unet_x", w, torch.full((4, 4), float("nan")))], RankRule(2), device="cpu")


def test_bake_metadata_records_the_loras_and_the_patched_weights():
    loras = [{"name": "a.safetensors", "strength_model": 0.8, "strength_clip": 0.5, "sha256": "0" * 64}]
    metadata = bake_metadata("baked", "bf16", loras, {"model": 8, "clip": 2})
    assert metadata["loralab.tool.method"] == "bake" and metadata["loralab.tool.precision"] == "bf16"
    assert json.loads(metadata["loralab.tool.sources"]) == loras
    assert json.loads(metadata["loralab.tool.patched_layers"]) == {"model": 8, "clip": 2}
    assert metadata["loralab.tool.comment"] == "LoRAs baked by LoRA Lab: a.safetensors (0.8/0.5)"
    assert json.loads(bake_metadata("baked", "fp16", [], {"model": 0, "clip": 0})["loralab.tool.sources"]) == []


def test_stopping_in_on_layer_returns_nothing():
    w = torch.zeros(4, 4)

    def cancel(done, total, prefix):
        raise KeyboardInterrupt  # the node raises the host's interrupt here; no result, so no file

    with pytest.raises(KeyboardInterrupt):
        extract_lora([("lora_unet_x", w, w + 1), ("lora_unet_y", w, w + 1)], RankRule(1), device="cpu",
                     on_layer=cancel)
