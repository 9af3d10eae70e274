"""Rank rules against hand-computed spectra and sd-scripts' resize_lora formulas; Resize LoRA end to end."""
from __future__ import annotations

import json

import pytest
import torch

from tests.unit.tools.helpers import applied, fixture, parsed
from trainer.errors import LoraToolError
from trainer.tools.rank import RankRule
from trainer.tools.resize import resize_lora
from trainer.tools.svd import matrix_spectrum, product_spectrum

S = torch.tensor([10.0, 5.0, 2.0, 1.0, 0.5, 0.0, 0.0, 0.0])


@pytest.mark.parametrize(("method", "param", "rank"), [
    ("sv_ratio", 4.0, 2),  # keep S > 10/4 = 2.5: 10, 5
    ("sv_ratio", 5.0, 2),  # S > 2 strictly: 2 is not kept
    ("sv_ratio", 100.0, 5),  # every nonzero value
    ("sv_cumulative", 0.8, 2),  # running sums 10, 15, 17, 18, 18.5 of 18.5: 15/18.5 = 0.81 reaches 0.8
    ("sv_cumulative", 0.95, 4),  # 17/18.5 = 0.919 < 0.95 <= 18/18.5 = 0.973
    ("sv_fro", 0.9, 2),  # squares 100, 125, ... of 130.25: 0.9^2 = 0.81 > 100/130.25 = 0.768, <= 125/130.25
    ("sv_fro", 0.8, 1),  # 0.64 <= 0.768
])
def test_dynamic_ranks_on_a_hand_computed_spectrum(method, param, rank):
    assert RankRule(16, method, param).choose(S) == rank


def test_the_cap_and_a_zero_layer():
    assert RankRule(3, "sv_ratio", 100.0).choose(S) == 3
    assert RankRule(8, "sv_fro", 1.0).choose(S) == 5  # all nonzero values; the zeros add nothing
    assert RankRule(8, "sv_fro", 0.999).choose(torch.zeros(4)) == 1
    assert RankRule(2).choose(S) == 2


def _sd_scripts_rank(s: torch.Tensor, method: str, param: float, cap: int) -> int:
    """resize_lora.rank_resize from its documented math: index functions, +1, zero-matrix and cap rules."""
    n = len(s)
    if method == "sv_ratio":
        index = int((s > s[0] / param).sum()) - 1
    elif method == "sv_cumulative":
        index = int(torch.searchsorted(torch.cumsum(s, 0) / s.sum(), param))
    else:
        index = int(torch.searchsorted(torch.cumsum(s ** 2, 0) / (s ** 2).sum(), param ** 2))
    rank = max(0, min(index, n - 1)) + 1
    return 1 if s[0] <= 1e-6 else min(rank, cap)


@pytest.mark.parametrize("method,param", [("sv_ratio", 3.0), ("sv_ratio", 20.0), ("sv_fro", 0.7), ("sv_fro", 0.95),
                                          ("sv_cumulative", 0.5), ("sv_cumulative", 0.9)])
def test_same_ranks_as_sd_scripts_on_random_layers(method, param):
    gen = torch.Generator().manual_seed(5)
    for _ in range(20):
        up, down = torch.randn(48, 12, generator=gen), torch.randn(12, 40, generator=gen)
        up = up * torch.logspace(0, -2, 12)  # a decaying spectrum, as trained LoRAs have
        full = torch.linalg.svdvals(up @ down)  # what sd-scripts decomposes: the whole product, 40 values
        ours = product_spectrum(up, down, torch.device("cpu"))  # 12 values, the rest are zeros
        cap = 10
        assert RankRule(cap, method, param).choose(ours.S, ours.length) == _sd_scripts_rank(full, method, param, cap)


def test_product_and_randomised_spectra_match_the_exact_one():
    gen = torch.Generator().manual_seed(1)
    up, down = torch.randn(300, 8, generator=gen), torch.randn(8, 280, generator=gen)
    exact = torch.linalg.svdvals(up @ down)
    product = product_spectrum(up, down, torch.device("cpu"))
    torch.testing.assert_close(product.S, exact[:8], rtol=1e-4, atol=1e-4)
    lowrank = matrix_spectrum(up @ down, 4, torch.device("cpu"), "auto")
    assert not lowrank.complete and lowrank.S.shape[0] == 14
    torch.testing.assert_close(lowrank.S[:8], exact[:8], rtol=1e-4, atol=1e-3)
    u, d = lowrank.factors(8)
    torch.testing.assert_close(u @ d, up @ down, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("fmt", ["kohya", "locon_tucker", "loha"])
def test_resize_at_full_rank_equals_the_input(tmp_path, fmt):
    lora = fixture(tmp_path, fmt, 2, rank=4)
    result = resize_lora(lora, RankRule(16), save_dtype="fp32", svd_method="exact")
    got, want = applied([(parsed(result.tensors), 1.0, 1.0)]), applied([(lora, 1.0, 1.0)])
    for prefix, delta in want.items():
        torch.testing.assert_close(got[prefix].reshape(delta.shape), delta, rtol=1e-5, atol=2e-6)


def test_resize_to_a_lower_rank_and_its_metadata(tmp_path):
    lora = fixture(tmp_path, "kohya", 3, rank=8, alpha=4.0)
    result = resize_lora(lora, RankRule(3), save_dtype="fp32", alpha=1.5, output_name="small")
    got, want = applied([(parsed(result.tensors), 1.0, 1.0)]), applied([(lora, 1.0, 1.0)])
    for report in result.layers:
        delta = want[report.prefix]
        s = torch.linalg.svdvals(delta)
        error = float(torch.linalg.matrix_norm(got[report.prefix].reshape(delta.shape) - delta))
        assert error == pytest.approx(float(s[3:].norm()), rel=1e-4)
        assert float(result.tensors[f"{report.prefix}.alpha"]) == 1.5  # the chosen alpha, change kept
    meta = result.metadata
    assert meta["ss_network_dim"] == "3" and meta["ss_network_alpha"] == "1.5"
    assert meta["loralab.tool.method"] == "resize" and meta["loralab.tool.source_ranks"] == "8"
    assert set(json.loads(meta["loralab.tool.ranks"]).values()) == {3}
    assert json.loads(meta["loralab.tool.error"]).keys() == {r.prefix for r in result.layers}


def test_dynamic_resize_writes_the_achieved_ranks(tmp_path):
    lora = fixture(tmp_path, "kohya", 4, rank=8)
    result = resize_lora(lora, RankRule(6, "sv_fro", 0.9))
    ranks = json.loads(result.metadata["loralab.tool.ranks"])
    assert all(1 <= r <= 6 for r in ranks.values())
    assert all(r.kept_share >= 0.9 or r.rank == 6 for r in result.layers)
    assert result.metadata["loralab.tool.rank_rule"] == "sv_fro 0.9 (max 6)"


def test_resize_refuses_a_dora_without_the_model_by_name(tmp_path):
    dora = fixture(tmp_path, "dora", 5)
    with pytest.raises(LoraToolError, match=f"'{dora.source_name}' is a DoRA .* Connect that model"):
        resize_lora(dora, RankRule(2))


def test_bad_rules_name_the_field():
    with pytest.raises(LoraToolError, match="rank 0"):
        RankRule(0)
    with pytest.raises(LoraToolError, match="sv_fro needs a share"):
        RankRule(4, "sv_fro", 1.5)
    with pytest.raises(LoraToolError, match="at least 1"):
        RankRule(4, "sv_ratio", 0.5)
    with pytest.raises(LoraToolError, match="unknown"):
        RankRule(4, "biggest")
