"""The denoising pass's helpers: tensors mapped through nested conditions."""
from __future__ import annotations

import torch

from trainer.training.denoising import map_tensors


def test_map_tensors_walks_dicts_lists_tuples_and_named_tuples() -> None:
    from collections import namedtuple
    Pair = namedtuple("Pair", "a b")
    value = {"x": torch.ones(2), "y": [torch.zeros(1), (torch.ones(1), "text")], "z": Pair(torch.ones(1), 3), "n": 1.5}
    doubled = map_tensors(lambda t: t * 2, value)
    assert torch.equal(doubled["x"], torch.full((2,), 2.0)) and torch.equal(doubled["y"][1][0], torch.full((1,), 2.0))
    assert isinstance(doubled["y"][1], tuple) and doubled["y"][1][1] == "text"
    assert isinstance(doubled["z"], Pair) and torch.equal(doubled["z"].a, torch.full((1,), 2.0)) and doubled["z"].b == 3
    assert doubled["n"] == 1.5 and torch.equal(value["x"], torch.ones(2))  # the input is left as it was


