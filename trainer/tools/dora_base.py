"""DoRA sources in a merge or resize: their change is taken against a model's weights, one layer at a time.

A DoRA rescales the changed weight by its magnitude m: W' = m * (W + s * up @ down) / ||W + ...|| (norms per
output row or input column, as the host's `weight_decompose` computes them), so its change W' - W depends on the
weight W of the model it is applied to, which no LoRA file holds. A `DoraBase` (the node's connected MODEL and
CLIP) gives that change for one layer: the weight as the host patches it with that DoRA module alone, at the
row's strength, minus the weight. It is asked for just before its layer is merged, so only one layer's change
exists at a time, and it then joins the SVD as a full `diff` contribution, like a LoHa's or LoKr's full delta.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Protocol

import torch

from ..adapters.diff import KIND_DIFF
from ..errors import LoraToolError
from .layer import CONCAT
from .sources import BIAS_ROLES, Contribution

METADATA_KEY = "loralab.tool.dora_base"


class DoraBase(Protocol):
    """The weights DoRA changes are taken against (the host's MODEL/CLIP in the nodes)."""

    def check(self, source: str, prefix: str, entries: Mapping[str, torch.Tensor]) -> None:
        """Raise LoraToolError, naming `source` and `prefix`, when this layer's change cannot be taken (its part
        of the model is not connected, the model has no such layer, the shapes differ). Cheap: no weight is read."""

    def delta(self, prefix: str, entries: Mapping[str, torch.Tensor], strength: float) -> torch.Tensor:
        """W' - W for layer `prefix`, fp32, in the weight's shape: the DoRA module `entries` (host keys ->
        tensors) alone applied at `strength` (the row's model or clip strength) to the model's weight W."""

    def record(self) -> dict[str, object]:
        """What the changes were taken against (the model, a hash of the weights read), for the file's metadata."""


def dora_refusal(name: str, prefix: str) -> LoraToolError:
    """Why a DoRA cannot be merged or resized without the model, and how to give the node the model."""
    return LoraToolError(
        f"'{name}' is a DoRA (its layer {prefix} has a magnitude): a DoRA's change depends on the weights of the "
        "model it is applied to, which a LoRA file does not hold. Connect that model to this node's `model` "
        "input (the checkpoint's MODEL, before any LoRA; its CLIP to `clip` for the text-encoder layers), with "
        "mode 'svd': the DoRA's change is then taken against it. Or take the DoRA out of the stack (or set its "
        "strengths to 0) and apply it with Load LoRA beside the result.")


def dora_names(layers: Mapping[str, list[Contribution]]) -> list[str]:
    """The names of the sources with a DoRA module (in order, once each)."""
    return list(dict.fromkeys(c.source for contributions in layers.values() for c in contributions if c.is_dora))


def check_doras(layers: Mapping[str, list[Contribution]], mode: str, base: DoraBase | None) -> None:
    """Refuses DoRA modules before any layer is formed: without a base (`dora_refusal`), in concat mode (a
    DoRA's change is no product of LoRA factors, so concat cannot hold it exactly), or where `base.check` fails."""
    doras = [(prefix, c) for prefix, contributions in layers.items() for c in contributions if c.is_dora]
    if not doras:
        return
    prefix, first = doras[0]
    if base is None:
        raise dora_refusal(first.source, prefix)
    if mode == CONCAT:
        raise LoraToolError(f"'{first.source}' is a DoRA: its change (taken against the model) is no product of "
                            "LoRA factors, so concat cannot join it exactly. Choose mode 'svd' with a rank (at "
                            "full rank the result keeps its change exactly).")
    for prefix, c in doras:
        base.check(c.source, prefix, c.entries)


def dense_doras(prefix: str, contributions: list[Contribution], base: DoraBase | None) -> list[Contribution]:
    """The layer's contributions with each DoRA one replaced by its full change against `base`: a `diff` at
    coefficient 1 (the strength is in the change), keeping its bias change."""
    return [_dense(prefix, c, base) if c.is_dora and base is not None else c for c in contributions]


def _dense(prefix: str, c: Contribution, base: DoraBase) -> Contribution:
    roles = {"diff": base.delta(prefix, c.entries, c.strength).float()}
    roles.update({role: c.roles[role] for role in BIAS_ROLES if role in c.roles})
    return Contribution(source=c.source, kind=KIND_DIFF, roles=roles, coefficient=1.0, strength=c.strength)


def dora_metadata(names: list[str], base: DoraBase | None) -> dict[str, str]:
    """`loralab.tool.dora_base`: which sources were DoRAs and what their changes were taken against (empty
    when there were none)."""
    if not names or base is None:
        return {}
    return {METADATA_KEY: json.dumps({"sources": names, **base.record()})}
