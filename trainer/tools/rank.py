"""The rank a layer keeps: fixed, or chosen from its singular values as sd-scripts `resize_lora --dynamic_method`.

Methods, for singular values S (descending) of one layer's delta, and `param` p:
* `sv_ratio`: keep the values above S[0] / p (p >= 1: the largest kept value is at most p times the smallest);
* `sv_fro`: the fewest leading values whose squares reach p^2 of sum(S^2), i.e. a kept Frobenius share p;
* `sv_cumulative`: the fewest leading values whose sum reaches p of sum(S).
Every method keeps at least 1 and at most `max_rank` (the cap); a zero delta (S[0] <= 1e-6) keeps 1.
Conv layers with a kernel larger than 1x1 may take their own rank (or cap), `conv_rank`, as sd-scripts'
`--new_conv_rank` / `--conv_dim`; 1x1 convs count as linear layers there too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import LoraToolError

FIXED = "fixed"
DYNAMIC_METHODS = ("sv_ratio", "sv_fro", "sv_cumulative")
RANK_METHODS = (FIXED, *DYNAMIC_METHODS)
MIN_SV = 1e-6  # sd-scripts: a layer whose largest singular value is below this is a zero matrix
MAX_RANK = 1024


@dataclass(frozen=True)
class RankRule:
    """How many singular values each layer keeps: `method` (see the module docstring), `param`, cap `max_rank`;
    `conv_rank` in place of `max_rank` for conv layers with a kernel larger than 1x1 (None: the same)."""

    max_rank: int
    method: str = FIXED
    param: float = 0.0
    conv_rank: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.max_rank <= MAX_RANK:
            raise LoraToolError(f"rank {self.max_rank} is out of range; use 1 to {MAX_RANK}.")
        if self.conv_rank is not None and not 1 <= self.conv_rank <= MAX_RANK:
            raise LoraToolError(f"conv_rank {self.conv_rank} is out of range; use 1 to {MAX_RANK} "
                                "(or leave it unset to use the rank for conv layers too).")
        if self.method not in RANK_METHODS:
            raise LoraToolError(f"rank method {self.method!r} is unknown; use one of {', '.join(RANK_METHODS)}.")
        if self.method == "sv_ratio" and not self.param >= 1.0:
            raise LoraToolError(f"sv_ratio needs a ratio of at least 1 (e.g. 8 keeps values above S_max / 8), "
                                f"got {self.param}.")
        if self.method in ("sv_fro", "sv_cumulative") and not 0.0 < self.param <= 1.0:
            raise LoraToolError(f"{self.method} needs a share between 0 and 1 (e.g. 0.9), got {self.param}.")

    @property
    def label(self) -> str:
        """As the metadata writes it: 'fixed 8', 'fixed 8, conv 4' or 'sv_fro 0.9 (max 32, conv max 8)'."""
        if self.method == FIXED:
            return f"fixed {self.max_rank}" + ("" if self.conv_rank is None else f", conv {self.conv_rank}")
        conv = "" if self.conv_rank is None else f", conv max {self.conv_rank}"
        return f"{self.method} {self.param:g} (max {self.max_rank}{conv})"

    def cap(self, conv: bool = False) -> int:
        """The rank (fixed) or the most a layer keeps (dynamic): `conv_rank` for a conv layer when it is set."""
        return self.conv_rank if conv and self.conv_rank is not None else self.max_rank

    def choose(self, singular_values: torch.Tensor, length: int | None = None, conv: bool = False) -> int:
        """The rank for one layer from its leading singular values (descending).

        `length` is how many singular values the whole matrix has (min(out, in)); values past `S` are zeros.
        `conv`: the layer is a conv with a kernel larger than 1x1 (its cap is `conv_rank`).
        """
        s = singular_values.double().cpu()
        length = int(s.shape[0]) if length is None else length
        if s.numel() == 0 or float(s[0]) <= MIN_SV:
            return 1
        cap = self.cap(conv)
        rank = cap if self.method == FIXED else _dynamic_rank(self.method, s, self.param, length)
        return max(1, min(rank, cap))


def _first_reaching(cumulative: torch.Tensor, target: float, length: int) -> int:
    # The 1-based count of leading values whose running share first reaches `target` (searchsorted, left).
    # Past the computed values the running share stays at its last value (the rest are zeros): if that
    # never reaches the target, sd-scripts' clamp to the matrix size applies.
    index = int(torch.searchsorted(cumulative, torch.tensor([target], dtype=cumulative.dtype)))
    if index >= cumulative.shape[0]:
        return length
    return min(index, length - 1) + 1


def _dynamic_rank(method: str, s: torch.Tensor, param: float, length: int) -> int:
    if method == "sv_ratio":
        return max(1, min(int((s > s[0] / param).sum()), length))
    if method == "sv_fro":
        squares = s.pow(2)
        return _first_reaching(torch.cumsum(squares, 0) / squares.sum(), param ** 2, length)
    return _first_reaching(torch.cumsum(s, 0) / s.sum(), param, length)
