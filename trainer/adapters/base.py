"""What an adapter kind is: the frozen `AdapterKind` record every kind file fills in, and the helpers they share."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

# A module's tensors keyed by role (`down`, `up`, `alpha`, `hada_w1_a`, …): the names of the file format.
Roles = Mapping[str, torch.Tensor]


def _nothing_missing(roles: frozenset[str]) -> list[str]:
    return []


def _no_rank(roles: Roles) -> int | None:
    return None


def _no_shape_problem(roles: Roles, kohya_names: bool) -> str | None:
    return None


@dataclass(frozen=True)
class AdapterKind:
    """One adapter algorithm: which roles make it up, and its rank, delta and checks as pure functions of roles.

    Every function but `missing_roles` takes a complete module's tensors by role (`missing_roles` is empty).
    """

    name: str  # the kind as `LoraModule.kind` and the summary's `module_kinds` spell it
    roles: frozenset[str]  # any of these in a module marks it as this kind
    # Roles spelled `<prefix>.<role>` in files (LyCORIS). Empty for LoRA, whose down/up spellings are listed
    # with their naming styles in `lora.keys`.
    suffix_roles: tuple[str, ...]
    # Unscaled fp32 delta: [out, in*kh*kw] for factored kinds, as stored for full diffs; None when the
    # module changes no weight (bias only).
    delta: Callable[[Roles], torch.Tensor | None]
    # The delta's shape from tensor shapes alone (no math); None when the module changes no weight.
    delta_shape: Callable[[Roles], tuple[int, ...] | None]
    # Format names (`lora.file.FORMAT_NAMES` keys) the tensors' layout shows, whatever the key names.
    formats: Callable[[Roles], list[str]]
    # Roles that mark this kind only when no kind's `roles` appear (a bias-only `.diff_b` module is a diff).
    lone_roles: frozenset[str] = frozenset()
    # Roles (as phrases for messages) a module needs but lacks, given the role names it has.
    missing_roles: Callable[[frozenset[str]], list[str]] = _nothing_missing
    # The rank alpha is divided by; None when the kind has no alpha scale.
    rank: Callable[[Roles], int | None] = _no_rank
    # Why the shapes cannot fit together, as a "has …" phrase, or None; `kohya_names` picks lora_down/lora_up
    # over PEFT's names in the message.
    shape_problem: Callable[[Roles, bool], str | None] = _no_shape_problem


def dims(t: torch.Tensor) -> str:
    """A tensor's shape as messages print it: `[8, 4, 3, 3]`."""
    return str(list(t.shape))


def shape_of(t: torch.Tensor) -> tuple[int, ...]:
    """A tensor's shape as plain ints."""
    return tuple(map(int, t.shape))


def tucker(t: torch.Tensor, w_b: torch.Tensor, w_a: torch.Tensor) -> torch.Tensor:
    """The full factor of a LyCORIS CP/Tucker decomposition, fp32.

    t [r, r, kh, kw], w_b [r, in], w_a [r, out] -> [out, in, kh, kw].
    """
    return torch.einsum("ijkl,jr,ip->prkl", t.float(), w_b.float().flatten(1), w_a.float())
