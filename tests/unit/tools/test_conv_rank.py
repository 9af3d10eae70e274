"""A separate rank for conv layers (sd-scripts' --new_conv_rank / --conv_dim) in Resize, Extract and svd Merge."""
from __future__ import annotations

import json

import pytest
import torch

from scripts import lora_fixtures as fx
from tests.unit.tools.helpers import applied, fixture, parsed
from trainer.errors import LoraToolError
from trainer.tools.extract import extract_lora
from trainer.tools.merge import merge_loras
from trainer.tools.rank import RankRule
from trainer.tools.resize import resize_lora
from trainer.tools.sources import Source

CONV3X3 = fx.SD1_TARGETS[2]  # [8, 4, 3, 3]: the one layer with a kernel larger than 1x1


def _conv_prefix(result) -> str:
    (prefix,) = [r.prefix for r in result.layers if r.conv]
    return prefix


def test_the_conv_rank_is_the_rank_or_cap_of_conv_layers_only():
    s = torch.tensor([8.0, 4.0, 2.0, 1.0, 0.5])
    assert RankRule(4, conv_rank=2).choose(s, conv=True) == 2
    assert RankRule(4, conv_rank=2).choose(s, conv=False) == 4
    assert RankRule(4).choose(s, conv=True) == 4  # unset: the rank for conv layers too
    # dynamic: sv_ratio 100 keeps all 5 values, capped at 3 for a conv layer and at 4 for a linear one
    assert RankRule(4, "sv_ratio", 100.0, conv_rank=3).choose(s, conv=True) == 3
    assert RankRule(4, "sv_ratio", 100.0, conv_rank=3).choose(s, conv=False) == 4
    assert RankRule(8, "sv_ratio", 3.0, conv_rank=8).choose(s, conv=True) == 2  # the method decides below the cap


def test_labels_and_a_bad_conv_rank():
    assert RankRule(8, conv_rank=4).label == "fixed 8, conv 4"
    assert RankRule(32, "sv_fro", 0.9, conv_rank=8).label == "sv_fro 0.9 (max 32, conv max 8)"
    assert RankRule(8).label == "fixed 8"
    with pytest.raises(LoraToolError, match="conv_rank 0 is out of range"):
        RankRule(8, conv_rank=0)


def test_resize_with_a_conv_rank(tmp_path):
    lora = fixture(tmp_path, "kohya", 11, rank=8)
    result = resize_lora(lora, RankRule(6, conv_rank=2), save_dtype="fp32")
    conv = _conv_prefix(result)
    ranks = json.loads(result.metadata["loralab.tool.ranks"])
    assert ranks.pop(conv) == 2 and set(ranks.values()) == {6}  # 1x1 convs count as linear, as in kohya
    want = applied([(lora, 1.0, 1.0)])[conv]
    got = applied([(parsed(result.tensors), 1.0, 1.0)])[conv].reshape(want.shape)
    s = torch.linalg.svdvals(want)
    assert float(torch.linalg.matrix_norm(got - want)) == pytest.approx(float(s[2:].norm()), rel=1e-4)
    assert result.tensors[f"{conv}.lora_down.weight"].shape == (2, 4, 3, 3)
    meta = result.metadata
    assert meta["ss_network_dim"] == "6" and meta["ss_network_alpha"] == "6.0"
    assert json.loads(meta["ss_network_args"]) == {"conv_dim": "2", "conv_alpha": "2.0"}
    assert meta["loralab.tool.rank_rule"] == "fixed 6, conv 2"


def test_dynamic_resize_caps_conv_layers_at_the_conv_rank(tmp_path):
    lora = fixture(tmp_path, "kohya", 12, rank=8)
    rule = RankRule(8, "sv_fro", 0.9999, conv_rank=1)
    result = resize_lora(lora, rule, save_dtype="fp32")
    for report in result.layers:
        s = torch.linalg.svdvals(applied([(lora, 1.0, 1.0)])[report.prefix])
        assert report.rank == (1 if report.conv else RankRule(8, "sv_fro", 0.9999).choose(s))


def test_the_randomised_svd_of_a_conv_layer_is_sized_by_the_conv_rank(tmp_path):
    # A LoHa has no factors, so the summed change is factorised whole; 'auto' goes randomised only when the rank
    # is far below the layer size, so the conv cap (2) and not the rank (16) must decide: 2 + 10 values are
    # found. (The LoRA's 4-D kernel makes the layer a conv: a LoHa stores it flattened.)
    big_conv = fx.Target("down_blocks.0.resnets.0.conv1", "conv3x3", 64, 64)
    sources = [Source(fixture(tmp_path, fmt, 13, rank=8, targets=(big_conv,))) for fmt in ("kohya", "loha")]
    (report,) = merge_loras(sources, "svd", RankRule(16, conv_rank=2)).layers
    assert report.conv and report.rank == 2 and len(report.spectrum) == 12
    assert len(merge_loras(sources, "svd", RankRule(16)).layers[0].spectrum) == 64  # exact: all 64 values


def test_svd_merge_with_a_conv_rank(tmp_path):
    a, b = fixture(tmp_path, "kohya", 14, rank=4), fixture(tmp_path, "locon_tucker", 15, rank=4)
    result = merge_loras([Source(a, 1.0, 1.0), Source(b, 0.5, 0.5)], "svd", RankRule(5, conv_rank=3),
                         save_dtype="fp32")
    conv = _conv_prefix(result)
    want = applied([(a, 1.0, 1.0), (b, 0.5, 0.5)])[conv]
    got = applied([(parsed(result.tensors), 1.0, 1.0)])[conv].reshape(want.shape)
    s = torch.linalg.svdvals(want)
    assert result.tensors[f"{conv}.lora_down.weight"].shape[0] == 3
    assert float(torch.linalg.matrix_norm(got - want)) == pytest.approx(float(s[3:].norm()), rel=1e-4)
    assert {r.rank for r in result.layers if not r.conv} == {5}
    assert result.metadata["loralab.tool.rank_rule"] == "fixed 5, conv 3"


def test_extract_with_a_conv_rank():
    gen = torch.Generator().manual_seed(16)
    conv_base, linear_base = torch.randn(16, 8, 3, 3, generator=gen), torch.randn(16, 24, generator=gen)
    conv_delta = torch.randn(16, 6, generator=gen) @ torch.randn(6, 72, generator=gen)
    linear_delta = torch.randn(16, 6, generator=gen) @ torch.randn(6, 24, generator=gen)
    pairs = [("lora_unet_conv", conv_base, conv_base + conv_delta.reshape(16, 8, 3, 3)),
             ("lora_unet_linear", linear_base, linear_base + linear_delta)]
    result = extract_lora(pairs, RankRule(6, conv_rank=2), clamp_quantile=1.0, save_dtype="fp32")
    ranks = {r.prefix: r.rank for r in result.layers}
    assert ranks == {"lora_unet_conv": 2, "lora_unet_linear": 6}
    s = torch.linalg.svdvals(conv_delta)
    conv_report = next(r for r in result.layers if r.conv)
    assert conv_report.error == pytest.approx(float(s[2:].norm()), rel=1e-4)
    assert json.loads(result.metadata["ss_network_args"])["conv_dim"] == "2"
    assert result.metadata["ss_network_dim"] == "6"
