"""The chart data a tool node sends to the editor after a run: per layer rank, kept share, leading spectrum."""
from __future__ import annotations

import json

import pytest
import torch

from scripts import lora_fixtures as fx
from tests.unit.tools.helpers import applied, fixture
from trainer.tools.chart_data import CHART_VALUES, chart_data
from trainer.tools.merge import merge_loras
from trainer.tools.rank import RankRule
from trainer.tools.resize import resize_lora
from trainer.tools.sources import Source


def test_resize_chart_has_each_layers_rank_share_and_spectrum(tmp_path):
    lora = fixture(tmp_path, "kohya", 21, rank=8)
    result = resize_lora(lora, RankRule(3))
    data = json.loads(json.dumps(chart_data(result.layers, result.metadata["loralab.tool.rank_rule"])))
    assert data["rule"] == "fixed 3"
    assert [layer["prefix"] for layer in data["layers"]] == [r.prefix for r in result.layers if r.rank]
    want = applied([(lora, 1.0, 1.0)])
    for layer in data["layers"]:
        s = torch.linalg.svdvals(want[layer["prefix"]])
        assert layer["rank"] == 3 and layer["input_rank"] == 8
        assert layer["spectrum"] == pytest.approx(s[:8].tolist(), rel=1e-3)  # the file's 8 values, 4 digits
        assert layer["kept_share"] == pytest.approx(float(s[:3].norm() / s.norm()), rel=1e-3)


def test_at_most_chart_values_and_none_for_concat(tmp_path):
    # A LoHa's change has full rank: the layer's 48 values, of which the chart takes the leading 32.
    big = fixture(tmp_path, "loha", 22, rank=8, targets=(fx.Target("down_blocks.0.proj", "linear", 48, 64),))
    data = chart_data(resize_lora(big, RankRule(2), svd_method="exact").layers, "fixed 2")
    assert [len(layer["spectrum"]) for layer in data["layers"]] == [CHART_VALUES]
    assert all(layer["spectrum"] == sorted(layer["spectrum"], reverse=True) for layer in data["layers"])
    concat = merge_loras([Source(fixture(tmp_path, "kohya", 23))], "concat")
    assert {len(layer["spectrum"]) for layer in chart_data(concat.layers, "concat")["layers"]} == {0}
