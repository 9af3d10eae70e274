"""LoRA (and LyCORIS LoCon, with an optional Tucker `mid`): delta `up @ (mid) @ down`. `down` is PEFT's A, `up` is B."""

from __future__ import annotations

import torch

from .base import AdapterKind, Roles, dims

KIND_LORA = "lora"


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


def _delta(roles: Roles) -> torch.Tensor:
    return lora_delta(roles["up"], roles["down"], roles.get("mid"))


def _delta_shape(roles: Roles) -> tuple[int, ...]:
    # Conv deltas are 4-D when the file keeps kernels ([out, in, kh, kw]) and 2-D when it stores them
    # flattened (ComfyUI trainer: [out, in*kh*kw]); callers compare numels with the model weight.
    up, down, mid = roles["up"], roles["down"], roles.get("mid")
    if mid is not None:
        return (int(up.shape[0]), int(down.shape[1]), *map(int, mid.shape[2:]))
    return (int(up.shape[0]), *map(int, down.shape[1:]))


def _missing_roles(roles: frozenset[str]) -> list[str]:
    return [r for r in ("down", "up") if r not in roles]


def _rank(roles: Roles) -> int:
    return int(roles["down"].shape[0])


def _shape_problem(roles: Roles, kohya_names: bool) -> str | None:
    down, up, mid = roles["down"], roles["up"], roles.get("mid")
    names = ("lora_down", "lora_up") if kohya_names else ("down (lora_A)", "up (lora_B)")
    if down.dim() not in (2, 3, 4) or up.dim() not in (2, 3, 4):
        return f"has {names[0]} {dims(down)} and {names[1]} {dims(up)}; expected 2-D or 4-D weights"
    if mid is not None:
        if mid.dim() != 4 or mid.shape[1] != down.shape[0] or mid.shape[0] != up.shape[1]:
            return (f"has lora_down {dims(down)}, lora_mid {dims(mid)} and lora_up {dims(up)}; "
                    "lora_mid must be [up rank, down rank, kh, kw] with equal ranks")
        return None
    if down.shape[0] != up.shape[1]:
        return (f"has {names[0]} of shape {dims(down)} (rank {down.shape[0]}) but {names[1]} of shape "
                f"{dims(up)} (rank {up.shape[1]}); the ranks must match")
    return None


def _formats(roles: Roles) -> list[str]:
    # LyCORIS LoCon: a LoRA on a conv kernel larger than 1x1, plain or with a Tucker mid.
    down = roles["down"]
    if "mid" in roles:
        return ["locon_tucker"]
    if down.dim() == 4 and down.shape[2] * down.shape[3] > 1:
        return ["locon"]
    return []


LORA = AdapterKind(name=KIND_LORA, roles=frozenset({"down", "up", "mid"}), suffix_roles=(), delta=_delta,
                   delta_shape=_delta_shape, formats=_formats, missing_roles=_missing_roles, rank=_rank,
                   shape_problem=_shape_problem)
