"""LyCORIS LoHa: delta `(w1a @ w1b) * (w2a @ w2b)`, a Hadamard product of two low-rank products (or of two Tuckers)."""

from __future__ import annotations

import torch

from .base import AdapterKind, Roles, dims, tucker

KIND_LOHA = "loha"
_ROLES = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")


def loha_delta(roles: Roles) -> torch.Tensor:
    """Unscaled LoHa delta `(w1a @ w1b) * (w2a @ w2b)` (or Tucker with t1/t2), fp32, [out, in*kh*kw].

    Plain: w?_a [out, r], w?_b [r, in(,kh,kw)]. Tucker: t? [r, r, kh, kw], w?_a [r, out], w?_b [r, in].
    """
    if "hada_t1" in roles and "hada_t2" in roles:
        m1 = tucker(roles["hada_t1"], roles["hada_w1_b"], roles["hada_w1_a"])
        m2 = tucker(roles["hada_t2"], roles["hada_w2_b"], roles["hada_w2_a"])
    else:
        m1 = roles["hada_w1_a"].float() @ roles["hada_w1_b"].float().flatten(1)
        m2 = roles["hada_w2_a"].float() @ roles["hada_w2_b"].float().flatten(1)
    return (m1 * m2).flatten(1)


def _delta_shape(roles: Roles) -> tuple[int, ...]:
    if "hada_t1" in roles:
        t1, w1a, w1b = roles["hada_t1"], roles["hada_w1_a"], roles["hada_w1_b"]
        return (int(w1a.shape[1]), int(w1b.shape[1]), *map(int, t1.shape[2:]))
    return (int(roles["hada_w1_a"].shape[0]), *map(int, roles["hada_w1_b"].shape[1:]))


def _missing_roles(roles: frozenset[str]) -> list[str]:
    need = ["hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"]
    if "hada_t1" in roles or "hada_t2" in roles:
        need += ["hada_t1", "hada_t2"]
    return [r for r in need if r not in roles]


def _rank(roles: Roles) -> int:
    return int(roles["hada_w1_b"].shape[0])


def _shape_problem(roles: Roles, kohya_names: bool) -> str | None:
    t = roles
    for i in ("1", "2"):
        a, b, core = t[f"hada_w{i}_a"], t[f"hada_w{i}_b"], t.get(f"hada_t{i}")
        if a.dim() != 2 or b.dim() < 2:
            return f"has hada_w{i}_a {dims(a)} and hada_w{i}_b {dims(b)}; expected 2-D factors"
        # With a Tucker core both factors are [r, …]; without, w_a is [out, r].
        rank_a = a.shape[0] if core is not None else a.shape[1]
        if rank_a != b.shape[0]:
            return (f"has hada_w{i}_a of shape {dims(a)} and hada_w{i}_b of shape {dims(b)}: "
                    f"ranks {rank_a} and {b.shape[0]} differ")
    if t["hada_w1_a"].shape != t["hada_w2_a"].shape or t["hada_w1_b"].shape[1:] != t["hada_w2_b"].shape[1:]:
        return (f"has hada_w1 ({dims(t['hada_w1_a'])} x {dims(t['hada_w1_b'])}) and hada_w2 "
                f"({dims(t['hada_w2_a'])} x {dims(t['hada_w2_b'])}) of different output shapes")
    return None


def _formats(roles: Roles) -> list[str]:
    return [KIND_LOHA]


LOHA = AdapterKind(name=KIND_LOHA, roles=frozenset(_ROLES), suffix_roles=_ROLES, delta=loha_delta,
                   delta_shape=_delta_shape, formats=_formats, missing_roles=_missing_roles, rank=_rank,
                   shape_problem=_shape_problem)
