"""Full differences: the weight delta stored whole (`diff`, LyCORIS norm `w_norm`), with optional bias deltas.

The bias deltas (`diff_b`, `b_norm`) are handed to the host as they are; they are no part of the weight delta.
"""

from __future__ import annotations

import torch

from .base import AdapterKind, Roles, shape_of

KIND_DIFF = "diff"  # full weight delta (.diff) and/or bias delta (.diff_b)
KIND_NORM = "norm"  # LyCORIS norm-layer deltas (.w_norm / .b_norm)


def _stored(roles: Roles, role: str) -> torch.Tensor | None:
    delta = roles.get(role)
    return None if delta is None else delta.float()


def _stored_shape(roles: Roles, role: str) -> tuple[int, ...] | None:
    return shape_of(roles[role]) if role in roles else None


def _diff_delta(roles: Roles) -> torch.Tensor | None:
    return _stored(roles, "diff")


def _diff_shape(roles: Roles) -> tuple[int, ...] | None:
    return _stored_shape(roles, "diff")


def _diff_formats(roles: Roles) -> list[str]:
    return [KIND_DIFF]


def _norm_delta(roles: Roles) -> torch.Tensor | None:
    return _stored(roles, "w_norm")


def _norm_shape(roles: Roles) -> tuple[int, ...] | None:
    return _stored_shape(roles, "w_norm")


def _norm_formats(roles: Roles) -> list[str]:
    return [KIND_NORM]


DIFF = AdapterKind(name=KIND_DIFF, roles=frozenset({"diff"}), suffix_roles=("diff", "diff_b"), delta=_diff_delta,
                   delta_shape=_diff_shape, formats=_diff_formats,
                   # `.diff_b` alone (a bias-only module, as ComfyUI's trainer writes them) is a diff too.
                   lone_roles=frozenset({"diff_b"}))

NORM = AdapterKind(name=KIND_NORM, roles=frozenset({"w_norm", "b_norm"}), suffix_roles=("w_norm", "b_norm"),
                   delta=_norm_delta, delta_shape=_norm_shape, formats=_norm_formats)
