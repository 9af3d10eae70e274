"""LoRA delta math: the weight change each module kind encodes (values in fp32, and shapes only).

Semantics follow ComfyUI's `comfy/weight_adapter` (FORMATS.md §2.1). A module is given as a mapping
from role (`down`, `up`, `mid`, `alpha`, `hada_w1_a`, …, see `lora.keys`) to tensor, or as a parsed
`LoraModule` (anything with a `.tensors` role mapping). `down` is PEFT's A, `up` is PEFT's B.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Protocol

import torch

from ..errors import LoraShapeError, LoraValueError
from ..lora.keys import KIND_DIFF, KIND_LOHA, KIND_LOKR, KIND_LORA, KIND_NORM, kinds_of_roles, split_key

Roles = Mapping[str, torch.Tensor]


class HasRoleTensors(Protocol):
    """A parsed module: its tensors keyed by role."""

    @property
    def tensors(self) -> Mapping[str, torch.Tensor]: ...


ModuleLike = HasRoleTensors | Roles


def module_roles(module: ModuleLike) -> dict[str, torch.Tensor]:
    """Role -> tensor for a module; also accepts file suffixes (`lora_down.weight`, `.lora_A.weight`)."""
    raw = module.tensors if hasattr(module, "tensors") else module
    roles: dict[str, torch.Tensor] = {}
    for name, tensor in raw.items():
        split = split_key("m" + name) or split_key("m." + name)
        roles[split[1].role if split else name] = tensor
    return roles


def module_kind(roles: Roles) -> str:
    """The one kind (KIND_*) a role mapping encodes; raise LoraShapeError if none or several."""
    kinds = kinds_of_roles(set(roles))
    if len(kinds) != 1:
        raise LoraShapeError(f"Cannot tell the module kind from tensors {sorted(roles)}: found kinds {kinds}.")
    return kinds[0]


def lora_delta(up: torch.Tensor, down: torch.Tensor, mid: torch.Tensor | None = None) -> torch.Tensor:
    """Unscaled LoRA delta `up @ (mid) @ down`, fp32, flattened to [out, in*kh*kw].

    up [out, r(,1,1)], down [r, in(,kh,kw)] (or 2-D [r, in*kh*kw] as ComfyUI's trainer writes);
    with Tucker `mid` [r, r, kh, kw] the down is [r, in, 1, 1].
    """
    down32 = down.float().flatten(1)
    if mid is not None:
        # [r_up, r_down, kh, kw] x [r_down, in] -> [r_up, in, kh, kw]
        down32 = torch.einsum("mdhw,di->mihw", mid.float(), down32).flatten(1)
    return up.float().flatten(1) @ down32


def _tucker(t: torch.Tensor, w_b: torch.Tensor, w_a: torch.Tensor) -> torch.Tensor:
    # t [r, r, kh, kw], w_b [r, in], w_a [r, out] -> [out, in, kh, kw] (LyCORIS CP/Tucker layout)
    return torch.einsum("ijkl,jr,ip->prkl", t.float(), w_b.float().flatten(1), w_a.float())


def loha_delta(roles: Roles) -> torch.Tensor:
    """Unscaled LoHa delta `(w1a @ w1b) * (w2a @ w2b)` (or Tucker with t1/t2), fp32, [out, in*kh*kw]."""
    if "hada_t1" in roles and "hada_t2" in roles:
        m1 = _tucker(roles["hada_t1"], roles["hada_w1_b"], roles["hada_w1_a"])
        m2 = _tucker(roles["hada_t2"], roles["hada_w2_b"], roles["hada_w2_a"])
    else:
        m1 = roles["hada_w1_a"].float() @ roles["hada_w1_b"].float().flatten(1)
        m2 = roles["hada_w2_a"].float() @ roles["hada_w2_b"].float().flatten(1)
    return (m1 * m2).flatten(1)


def lokr_factors(roles: Roles) -> tuple[torch.Tensor, torch.Tensor]:
    """The two full LoKr factors in fp32: w1 [a, b] and w2 [c, d] or [c, d, kh, kw] (unscaled)."""
    w1 = roles.get("lokr_w1")
    if w1 is None:
        w1 = roles["lokr_w1_a"].float() @ roles["lokr_w1_b"].float()
    w2 = roles.get("lokr_w2")
    if w2 is None:
        if "lokr_t2" in roles:
            w2 = _tucker(roles["lokr_t2"], roles["lokr_w2_b"], roles["lokr_w2_a"])
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


def module_rank(roles: Roles) -> int | None:
    """The rank that divides alpha: down rows (LoRA), hada_w1_b rows (LoHa), the decomposed factor (LoKr)."""
    if "down" in roles:
        return int(roles["down"].shape[0])
    if "hada_w1_b" in roles:
        return int(roles["hada_w1_b"].shape[0])
    rank = None
    for full, factor in (("lokr_w1", "lokr_w1_b"), ("lokr_w2", "lokr_w2_b")):  # as ComfyUI: w2's rank wins
        if full not in roles and factor in roles:
            rank = int(roles[factor].shape[0])
    return rank


def module_scale(roles: Roles) -> float:
    """The factor ComfyUI multiplies the delta by: alpha / rank when both exist, else 1.0."""
    alpha = roles.get("alpha")
    rank = module_rank(roles)
    if alpha is None or not rank:
        return 1.0
    return float(alpha.float().item()) / rank


def module_delta_shape(module: ModuleLike) -> tuple[int, ...] | None:
    """Shape of the weight delta from tensor shapes only; None for a bias-only (`diff_b`) module.

    Shapes of conv deltas are 4-D when the file keeps kernels ([out, in, kh, kw]) and 2-D when it
    stores them flattened (ComfyUI trainer: [out, in*kh*kw]); compare numels with the model weight.
    """
    roles = module_roles(module)
    kind = module_kind(roles)
    if kind == KIND_LORA:
        up, down, mid = roles["up"], roles["down"], roles.get("mid")
        if mid is not None:
            return (int(up.shape[0]), int(down.shape[1]), *map(int, mid.shape[2:]))
        return (int(up.shape[0]), *map(int, down.shape[1:]))
    if kind == KIND_LOHA:
        if "hada_t1" in roles:
            t1, w1a, w1b = roles["hada_t1"], roles["hada_w1_a"], roles["hada_w1_b"]
            return (int(w1a.shape[1]), int(w1b.shape[1]), *map(int, t1.shape[2:]))
        return (int(roles["hada_w1_a"].shape[0]), *map(int, roles["hada_w1_b"].shape[1:]))
    if kind == KIND_LOKR:
        s1 = _lokr_side_shape(roles, "lokr_w1", None)
        s2 = _lokr_side_shape(roles, "lokr_w2", roles.get("lokr_t2"))
        return (s1[0] * s2[0], s1[1] * s2[1], *s2[2:])
    if kind == KIND_DIFF:
        return tuple(map(int, roles["diff"].shape)) if "diff" in roles else None
    if kind == KIND_NORM:
        return tuple(map(int, roles["w_norm"].shape)) if "w_norm" in roles else None
    raise LoraShapeError(f"Unknown module kind {kind!r}.")


def _lokr_side_shape(roles: Roles, name: str, tucker: torch.Tensor | None) -> tuple[int, ...]:
    if name in roles:
        return tuple(map(int, roles[name].shape))
    a, b = roles[f"{name}_a"], roles[f"{name}_b"]
    if tucker is not None:
        return (int(a.shape[1]), int(b.shape[1]), *map(int, tucker.shape[2:]))
    return (int(a.shape[0]), *map(int, b.shape[1:]))


def module_delta_numel(module: ModuleLike) -> int | None:
    """Number of weight elements the module changes (compare with the target weight's numel); None if bias-only."""
    shape = module_delta_shape(module)
    return None if shape is None else math.prod(shape)


def module_bias_numel(module: ModuleLike) -> int | None:
    """Number of bias elements the module changes (`diff_b` / `b_norm`), or None."""
    roles = module_roles(module)
    bias = roles.get("diff_b", roles.get("b_norm"))
    return None if bias is None else bias.numel()


def _unscaled_delta(roles: Roles, kind: str) -> torch.Tensor | None:
    if kind == KIND_LORA:
        return lora_delta(roles["up"], roles["down"], roles.get("mid"))
    if kind == KIND_LOHA:
        return loha_delta(roles)
    if kind == KIND_LOKR:
        return lokr_delta(roles)
    weight_delta = roles.get("diff" if kind == KIND_DIFF else "w_norm")
    return None if weight_delta is None else weight_delta.float()


def delta_weight(module: ModuleLike, weight_shape: Sequence[int]) -> torch.Tensor:
    """The scaled fp32 weight delta (alpha/rank applied, strength not), reshaped to `weight_shape`."""
    roles = module_roles(module)
    delta = _unscaled_delta(roles, module_kind(roles))
    if delta is None:
        return torch.zeros(tuple(weight_shape), dtype=torch.float32)
    if delta.numel() != math.prod(weight_shape):
        raise LoraShapeError(f"The LoRA delta has shape {list(module_delta_shape(roles) or [])} "
                             f"({delta.numel()} values); the model weight has shape {list(weight_shape)} "
                             f"({math.prod(weight_shape)} values). The LoRA was made for a different model.")
    return (delta * module_scale(roles)).reshape(tuple(weight_shape))


def bias_delta(module: ModuleLike) -> torch.Tensor | None:
    """The fp32 bias delta (`diff_b`, or LyCORIS `b_norm`), or None."""
    roles = module_roles(module)
    bias = roles.get("diff_b", roles.get("b_norm"))
    return None if bias is None else bias.float()


def dora_scale(roles: Roles, weight_ndim: int) -> torch.Tensor | None:
    """The DoRA magnitude as ComfyUI expects it: `dora_scale`, or PEFT's 1-D magnitude as [out, 1, …]."""
    if "dora_scale" in roles:
        return roles["dora_scale"]
    magnitude = roles.get("magnitude")
    if magnitude is None:
        return None
    return magnitude.reshape(magnitude.numel(), *([1] * (weight_ndim - 1)))


def merge_weight(weight: torch.Tensor, module: ModuleLike, strength: float = 1.0) -> torch.Tensor:
    """`weight + strength * delta` in fp32 (DoRA per ComfyUI's `weight_decompose`); refuses NaN/Inf."""
    roles = module_roles(module)
    w = weight.float()
    delta = delta_weight(roles, w.shape)
    scale = dora_scale(roles, w.dim())
    if scale is None:
        merged = w + strength * delta
    else:
        merged = _dora_merge(w, delta, scale.float(), strength)
    if not torch.isfinite(merged).all():
        raise LoraValueError("Merging the LoRA gave NaN/Inf values (strength or alpha too large, or a damaged "
                             "file); lower the strength or export the LoRA again.")
    return merged


def _dora_merge(w: torch.Tensor, delta: torch.Tensor, scale: torch.Tensor, strength: float) -> torch.Tensor:
    weight_calc = w + delta
    rest = [1] * (w.dim() - 1)
    if scale.shape[0] == w.shape[0]:
        # ComfyUI normalises rows of the *original* weight on the output axis.
        norm = w.reshape(w.shape[0], -1).norm(dim=1, keepdim=True).reshape(w.shape[0], *rest)
    else:
        norm = (weight_calc.transpose(0, 1).reshape(w.shape[1], -1).norm(dim=1, keepdim=True)
                .reshape(w.shape[1], *rest).transpose(0, 1))
    weight_calc = weight_calc * (scale / (norm + torch.finfo(torch.float32).eps))
    return w + strength * (weight_calc - w)
