"""LyCORIS LoKr: delta `kron(w1, w2)`, each factor stored full or as a low-rank product (w2 optionally Tucker)."""

from __future__ import annotations

import torch

from .base import AdapterKind, Roles, dims, tucker

KIND_LOKR = "lokr"
_ROLES = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")


def lokr_factors(roles: Roles) -> tuple[torch.Tensor, torch.Tensor]:
    """The two full LoKr factors in fp32: w1 [a, b] and w2 [c, d] or [c, d, kh, kw] (unscaled)."""
    w1 = roles.get("lokr_w1")
    if w1 is None:
        w1 = roles["lokr_w1_a"].float() @ roles["lokr_w1_b"].float()
    w2 = roles.get("lokr_w2")
    if w2 is None:
        if "lokr_t2" in roles:
            w2 = tucker(roles["lokr_t2"], roles["lokr_w2_b"], roles["lokr_w2_a"])
        else:
            w2 = roles["lokr_w2_a"].float() @ roles["lokr_w2_b"].float()
    # kron needs contiguous inputs (a Tucker einsum result may not be).
    return w1.float().contiguous(), w2.float().contiguous()


def lokr_delta(roles: Roles) -> torch.Tensor:
    """Unscaled LoKr delta `kron(w1, w2)` (each full or a @ b, w2 optionally Tucker), fp32, [out, in*kh*kw]."""
    w1, w2 = lokr_factors(roles)
    if w2.dim() == 4:
        w1 = w1.unsqueeze(2).unsqueeze(2)
    delta = torch.kron(w1, w2)
    return delta.reshape(delta.shape[0], -1)


def _side_shape(roles: Roles, name: str, core: torch.Tensor | None) -> tuple[int, ...]:
    if name in roles:
        return tuple(map(int, roles[name].shape))
    a, b = roles[f"{name}_a"], roles[f"{name}_b"]
    if core is not None:
        return (int(a.shape[1]), int(b.shape[1]), *map(int, core.shape[2:]))
    return (int(a.shape[0]), *map(int, b.shape[1:]))


def _delta_shape(roles: Roles) -> tuple[int, ...]:
    s1 = _side_shape(roles, "lokr_w1", None)
    s2 = _side_shape(roles, "lokr_w2", roles.get("lokr_t2"))
    return (s1[0] * s2[0], s1[1] * s2[1], *s2[2:])


def _missing_roles(roles: frozenset[str]) -> list[str]:
    lacking = []
    for w in ("lokr_w1", "lokr_w2"):
        if w not in roles and not {f"{w}_a", f"{w}_b"} <= roles:
            lacking.append(f"{w} (or {w}_a + {w}_b)")
    return lacking


def _rank(roles: Roles) -> int | None:
    # Only a decomposed factor has a rank; with both decomposed, w2's wins, as in ComfyUI.
    rank = None
    for full, factor in (("lokr_w1", "lokr_w1_b"), ("lokr_w2", "lokr_w2_b")):
        if full not in roles and factor in roles:
            rank = int(roles[factor].shape[0])
    return rank


def _shape_problem(roles: Roles, kohya_names: bool) -> str | None:
    for w in ("lokr_w1", "lokr_w2"):
        if w not in roles:
            a, b = roles[f"{w}_a"], roles[f"{w}_b"]
            # With a Tucker core w2_a is [r, out]; otherwise a factor's a is [out, r].
            rank_a = a.shape[0] if (w == "lokr_w2" and "lokr_t2" in roles) else a.shape[-1]
            if rank_a != b.shape[0]:
                return (f"has {w}_a of shape {dims(a)} and {w}_b of shape {dims(b)}: "
                        f"ranks {rank_a} and {b.shape[0]} differ")
    return None


def _formats(roles: Roles) -> list[str]:
    return [KIND_LOKR]


LOKR = AdapterKind(name=KIND_LOKR, roles=frozenset(_ROLES), suffix_roles=_ROLES, delta=lokr_delta,
                   delta_shape=_delta_shape, formats=_formats, missing_roles=_missing_roles, rank=_rank,
                   shape_problem=_shape_problem)
