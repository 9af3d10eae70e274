"""DoRA sources in Merge LoRAs and Resize LoRA, given the base weights (`tools.dora_base`): at full rank the file's
change equals the DoRA's W' - W against that base (beside the other sources' changes), each change is formed just
before its layer, concat and an incomplete base are refused before anything is formed, and the file records the base."""
from __future__ import annotations

import json

import pytest
import torch

from tests.unit.tools.helpers import applied, fixture, parsed
from trainer.adapters.delta import module_delta_shape, module_scale
from trainer.adapters.lora import lora_delta
from trainer.errors import LoraToolError
from trainer.lora.host_keys import entry_roles, host_modules
from trainer.tools.merge import merge_loras
from trainer.tools.rank import RankRule
from trainer.tools.resize import resize_lora
from trainer.tools.sources import Source, is_text_encoder
from trainer.tools.svd import matrix_spectrum


def dora_weight(weight: torch.Tensor, roles, strength: float) -> torch.Tensor:
    """W + strength * (m * (W + s * up @ down) / ||W + s * up @ down|| - W), norms per output row (DoRA's paper)."""
    directed = weight + lora_delta(roles["up"], roles["down"]).reshape(weight.shape) * module_scale(roles)
    ones = [1] * (weight.dim() - 1)
    norm = directed.flatten(1).norm(dim=1).reshape(-1, *ones)
    return weight + strength * (roles["dora_scale"].float().reshape(-1, *ones) * directed / norm - weight)


class TinyBase:
    """A base weight for every layer of `lora` (random, seeded); `events` logs each change asked for."""

    def __init__(self, lora, seed: int = 7, missing: str | None = None) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.weights = {prefix: torch.randn(module_delta_shape(entry_roles(entries)), generator=gen)
                        for prefix, entries in host_modules(lora).items() if prefix != missing}
        self.events: list[tuple] = []

    def check(self, source, prefix, entries) -> None:
        if prefix not in self.weights:
            raise LoraToolError(f"'{source}': the base has no layer {prefix}")

    def delta(self, prefix, entries, strength) -> torch.Tensor:
        self.events.append(("delta", prefix, strength))
        weight = self.weights[prefix]
        return dora_weight(weight, entry_roles(entries), strength) - weight

    def record(self) -> dict[str, object]:
        return {"against": "tiny base", "layers_read": len(self.events)}

    def changes(self, lora, strength_model: float, strength_clip: float) -> dict[str, torch.Tensor]:
        """Host prefix -> W' - W [out, in*kh*kw] of `lora` at the row's strengths, computed here."""
        out = {}
        for prefix, entries in host_modules(lora).items():
            strength = strength_clip if is_text_encoder(prefix) else strength_model
            weight = self.weights[prefix]
            out[prefix] = (dora_weight(weight, entry_roles(entries), strength) - weight).flatten(1)
        return out


def _file_changes(result) -> dict[str, torch.Tensor]:
    return applied([(parsed(result.tensors), 1.0, 1.0)])


@pytest.mark.parametrize("fmt", ["dora", "peft_dora"])
def test_svd_merge_at_full_rank_of_a_dora_given_the_base_equals_its_change_against_it(tmp_path, fmt):
    kohya, dora = fixture(tmp_path, "kohya", 1), fixture(tmp_path, fmt, 0)
    base = TinyBase(dora)
    result = merge_loras([Source(kohya, 0.8, 0.5), Source(dora, 0.7, -1.2)], "svd", RankRule(64), save_dtype="fp32",
                         svd_method="exact", dora_base=base)
    want = applied([(kohya, 0.8, 0.5)])
    for prefix, change in base.changes(dora, 0.7, -1.2).items():
        want[prefix] = want[prefix] + change if prefix in want else change
    got = _file_changes(result)
    assert sorted(got) == sorted(want)
    for prefix, change in want.items():
        torch.testing.assert_close(got[prefix], change, rtol=1e-5, atol=2e-6)
    # The base was asked once per DoRA layer, at the row's model strength (UNet) or clip strength (text encoder).
    assert sorted((p, s) for _, p, s in base.events) == sorted(
        (p, -1.2 if is_text_encoder(p) else 0.7) for p in host_modules(dora))
    assert all(r.input_rank is None and r.kept_share == pytest.approx(1.0) for r in result.layers if r.rank)


def test_each_dora_change_is_formed_just_before_its_layer(tmp_path):
    dora = fixture(tmp_path, "dora", 2)
    base = TinyBase(dora)
    merge_loras([Source(dora)], "svd", RankRule(4), dora_base=base,
                on_layer=lambda done, total, prefix: base.events.append(("layer", prefix)))
    # Never all the model's changes at once: delta(P) comes right before layer P is done, one layer at a time.
    assert base.events == [event for p in host_modules(dora) for event in (("delta", p, 1.0), ("layer", p))]


def test_concat_refuses_a_dora_given_the_base_and_names_svd(tmp_path):
    dora = fixture(tmp_path, "dora", 0)
    base = TinyBase(dora)
    with pytest.raises(LoraToolError, match=f"'{dora.source_name}' is a DoRA.*Choose mode 'svd'"):
        merge_loras([Source(fixture(tmp_path, "kohya", 1)), Source(dora)], "concat", dora_base=base)
    assert base.events == []


def test_a_layer_the_base_cannot_take_is_refused_before_any_change_is_formed(tmp_path):
    dora = fixture(tmp_path, "dora", 0)
    last = list(host_modules(dora))[-1]
    base = TinyBase(dora, missing=last)
    with pytest.raises(LoraToolError, match=f"the base has no layer {last}"):
        merge_loras([Source(dora)], "svd", RankRule(4), dora_base=base)
    assert base.events == []


def test_the_file_records_what_the_dora_changes_were_taken_against(tmp_path):
    kohya, dora = fixture(tmp_path, "kohya", 1), fixture(tmp_path, "dora", 0)
    result = merge_loras([Source(kohya), Source(dora)], "svd", RankRule(4), dora_base=TinyBase(dora))
    record = json.loads(result.metadata["loralab.tool.dora_base"])
    assert record == {"sources": [dora.source_name], "against": "tiny base", "layers_read": len(host_modules(dora))}
    plain = merge_loras([Source(kohya)], "svd", RankRule(4), dora_base=TinyBase(dora))
    assert "loralab.tool.dora_base" not in plain.metadata


def test_resize_of_a_dora_given_the_base_keeps_its_change_and_reports_the_discarded_values(tmp_path):
    dora = fixture(tmp_path, "dora", 3)
    base = TinyBase(dora)
    full = resize_lora(dora, RankRule(64), save_dtype="fp32", svd_method="exact", dora_base=base)
    want = base.changes(dora, 1.0, 1.0)
    got = _file_changes(full)
    for prefix, change in want.items():
        torch.testing.assert_close(got[prefix], change, rtol=1e-5, atol=2e-6)
    small = resize_lora(dora, RankRule(2), save_dtype="fp32", svd_method="exact", dora_base=TinyBase(dora))
    for report in small.layers:
        spectrum = matrix_spectrum(want[report.prefix], 64, torch.device("cpu"), "exact")
        assert report.rank == 2
        assert report.error == pytest.approx(float(spectrum.S[2:].pow(2).sum().sqrt()), rel=1e-4)
    assert json.loads(small.metadata["loralab.tool.dora_base"])["sources"] == [dora.source_name]
