"""Merge LoRAs: concat equals the stack to fp32 rounding, svd at full rank too, and below it the error is the
norm of the discarded singular values."""
from __future__ import annotations

import json

import pytest
import torch

from tests.unit.tools.helpers import applied, biases, fixture, parsed
from trainer.errors import LoraToolError
from trainer.tools.merge import merge_loras
from trainer.tools.rank import RankRule
from trainer.tools.sources import Source

STRENGTHS = [(0.8, 0.5), (-0.6, 1.3)]


def _assert_same_change(result, stack, atol=1e-6):
    got, want = applied([(parsed(result.tensors), 1.0, 1.0)]), applied(stack)
    assert sorted(got) == sorted(want)
    for prefix, delta in want.items():
        torch.testing.assert_close(got[prefix].reshape(delta.shape), delta, rtol=1e-5, atol=atol)


@pytest.mark.parametrize("formats", [("kohya", "kohya"), ("kohya", "locon_tucker"), ("peft", "kohya"),
                                     ("comfyui_native", "comfyui_native")])
def test_concat_equals_the_stack(tmp_path, formats):
    loras = [fixture(tmp_path, fmt, seed) for seed, fmt in enumerate(formats)]
    stack = [(lora, sm, sc) for lora, (sm, sc) in zip(loras, STRENGTHS, strict=True)]
    result = merge_loras([Source(*row) for row in stack], "concat", save_dtype="fp32")
    _assert_same_change(result, stack)
    for prefix, bias in biases(stack).items():
        torch.testing.assert_close(result.tensors[f"{prefix}.diff_b"], bias)
    ranks = {r.prefix: r.rank for r in result.layers if r.rank}
    assert set(ranks.values()) == {8}  # 4 + 4
    assert all(float(result.tensors[f"{p}.alpha"]) == 8.0 for p in ranks)
    conv = result.tensors["lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight"] \
        if formats[0] != "comfyui_native" else None
    if conv is not None:  # kohya LoCon layout: down [r, in, 3, 3], up [out, r, 1, 1]
        assert conv.shape == (8, 4, 3, 3)
        assert result.tensors["lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight"].shape == (8, 8, 1, 1)


def test_concat_refuses_a_loha_and_names_svd(tmp_path):
    loras = [fixture(tmp_path, "kohya", 0), fixture(tmp_path, "loha", 1)]
    with pytest.raises(LoraToolError, match="Choose mode 'svd'"):
        merge_loras([Source(lora) for lora in loras], "concat")


@pytest.mark.parametrize("fmt", ["dora", "peft_dora"])
@pytest.mark.parametrize("mode", ["concat", "svd"])
def test_a_dora_without_the_model_is_refused_by_name_and_told_to_connect_it(tmp_path, fmt, mode):
    dora = fixture(tmp_path, fmt, 0)
    with pytest.raises(LoraToolError) as caught:
        merge_loras([Source(fixture(tmp_path, "kohya", 1)), Source(dora)], mode, RankRule(4))
    message = str(caught.value)
    assert f"'{dora.source_name}' is a DoRA" in message
    assert "Connect that model to this node's `model` input" in message and "mode 'svd'" in message


def test_a_dora_at_strength_zero_is_left_out_not_refused(tmp_path):
    kohya = fixture(tmp_path, "kohya", 1)
    result = merge_loras([Source(kohya), Source(fixture(tmp_path, "dora", 0), 0.0, 0.0)], "concat", save_dtype="fp32")
    assert {r.input_rank for r in result.layers if r.rank} == {4}  # the kohya file's layers alone
    with pytest.raises(LoraToolError, match="is a DoRA"):  # its text-encoder layers still count at clip 1.0
        merge_loras([Source(kohya), Source(fixture(tmp_path, "dora", 0), 0.0, 1.0)], "concat")


@pytest.mark.parametrize("formats", [("kohya", "locon_tucker"), ("kohya", "loha"), ("lokr", "peft")])
def test_svd_at_full_rank_equals_the_stack(tmp_path, formats):
    loras = [fixture(tmp_path, fmt, seed + 3) for seed, fmt in enumerate(formats)]
    stack = [(lora, sm, sc) for lora, (sm, sc) in zip(loras, STRENGTHS, strict=True)]
    result = merge_loras([Source(*row) for row in stack], "svd", RankRule(64), save_dtype="fp32", svd_method="exact")
    _assert_same_change(result, stack, atol=2e-6)
    assert all(r.kept_share == pytest.approx(1.0) and r.error < 1e-5 for r in result.layers if r.rank)


@pytest.mark.parametrize("formats", [("kohya", "kohya"), ("kohya", "loha")])
def test_svd_below_full_rank_loses_the_discarded_values(tmp_path, formats):
    loras = [fixture(tmp_path, fmt, seed + 7) for seed, fmt in enumerate(formats)]
    stack = [(lora, sm, sc) for lora, (sm, sc) in zip(loras, STRENGTHS, strict=True)]
    result = merge_loras([Source(*row) for row in stack], "svd", RankRule(3), save_dtype="fp32", svd_method="exact")
    got, want = applied([(parsed(result.tensors), 1.0, 1.0)]), applied(stack)
    for report in result.layers:
        if not report.rank:
            continue
        delta = want[report.prefix]
        s = torch.linalg.svdvals(delta)
        assert report.rank == 3
        error = float(torch.linalg.matrix_norm(got[report.prefix].reshape(delta.shape) - delta))
        assert error == pytest.approx(float(s[3:].pow(2).sum().sqrt()), rel=1e-4, abs=1e-6)
        assert report.error == pytest.approx(error, rel=1e-4, abs=1e-6)
        assert report.kept_share == pytest.approx(float(s[:3].norm() / s.norm()), rel=1e-5)
    meta = result.metadata
    assert meta["ss_network_dim"] == "3" and meta["loralab.tool.method"] == "merge_svd"
    assert [s["name"] for s in json.loads(meta["loralab.tool.sources"])] == [lora.source_name for lora in loras]


def test_svd_agrees_with_svd_merge_lora_math(tmp_path):
    """sd-scripts svd_merge_lora (from its documented math, without its quantile clamp): sum strength * alpha/r *
    up @ down per layer, full SVD, keep U_k S_k and Vh_k, alpha = k; the change must match ours."""
    loras = [fixture(tmp_path, "kohya", 11), fixture(tmp_path, "kohya", 12)]
    result = merge_loras([Source(lora, 0.7, 0.7) for lora in loras], "svd", RankRule(5), save_dtype="fp32")
    for report in result.layers:
        summed = sum(0.7 * m.alpha / m.rank * (m.tensors["up"].flatten(1) @ m.tensors["down"].flatten(1))
                     for m in (lora.modules[report.prefix] for lora in loras))
        u, s, vh = torch.linalg.svd(summed, full_matrices=False)
        theirs = (u[:, :5] * s[:5]) @ vh[:5]
        ours = applied([(parsed(result.tensors), 1.0, 1.0)])[report.prefix]
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_layers_are_reported_one_by_one_and_cancel_stops(tmp_path):
    loras = [fixture(tmp_path, "kohya", 0), fixture(tmp_path, "kohya", 1)]
    calls = []

    def on_layer(done, total, prefix):
        calls.append((done, total))
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        merge_loras([Source(lora) for lora in loras], "svd", RankRule(2), on_layer=on_layer)
    assert calls == [(1, 4), (2, 4)]


def test_bad_choices_are_refused(tmp_path):
    lora = fixture(tmp_path, "kohya", 0)
    with pytest.raises(LoraToolError, match="mode"):
        merge_loras([Source(lora)], "average")
    with pytest.raises(LoraToolError, match="needs a rank"):
        merge_loras([Source(lora)], "svd")
    with pytest.raises(LoraToolError, match="No LoRAs"):
        merge_loras([], "concat")
    with pytest.raises(LoraToolError, match="strength 0"):
        merge_loras([Source(lora, 0.0, 0.0)], "concat")
