"""The adapter registry agrees with the key grammar, and each kind's functions agree with each other on modules."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.adapters.base import Roles
from trainer.adapters.delta import delta_weight, module_scale
from trainer.adapters.registry import KINDS, adapter_kind, kinds_of_roles, module_kind
from trainer.errors import LoraShapeError
from trainer.lora.file import FORMAT_NAMES, parse_lora
from trainer.lora.keys import STYLE_ANY, SUFFIX_RULES

# Roles any kind may carry next to its own: the alpha scale and a DoRA magnitude.
SHARED_ROLES = {"alpha", "dora_scale", "magnitude"}


_GEN = torch.Generator().manual_seed(3)


def _r(*shape: int) -> torch.Tensor:
    return torch.randn(shape, generator=_GEN)


# At least one complete module per kind, in each layout the kind has (linear, conv, Tucker, …).
EXAMPLES: dict[str, list[dict[str, torch.Tensor]]] = {
    "lora": [{"down": _r(3, 6), "up": _r(5, 3), "alpha": torch.tensor(2.0)},
             {"down": _r(3, 4, 3, 3), "up": _r(8, 3, 1, 1)},
             {"down": _r(3, 36), "up": _r(8, 3), "diff_b": _r(8)},
             {"down": _r(3, 4, 1, 1), "mid": _r(3, 3, 3, 3), "up": _r(8, 3, 1, 1), "dora_scale": _r(8, 1, 1, 1)}],
    "loha": [{"hada_w1_a": _r(5, 2), "hada_w1_b": _r(2, 6), "hada_w2_a": _r(5, 2), "hada_w2_b": _r(2, 6),
              "alpha": torch.tensor(1.0)},
             {"hada_w1_a": _r(2, 5), "hada_w1_b": _r(2, 3), "hada_t1": _r(2, 2, 3, 3),
              "hada_w2_a": _r(2, 5), "hada_w2_b": _r(2, 3), "hada_t2": _r(2, 2, 3, 3)}],
    "lokr": [{"lokr_w1": _r(2, 3), "lokr_w2_a": _r(4, 2), "lokr_w2_b": _r(2, 5), "alpha": torch.tensor(1.0)},
             {"lokr_w1": _r(2, 2), "lokr_w2": _r(3, 4, 3, 3)},
             {"lokr_w1_a": _r(2, 1), "lokr_w1_b": _r(1, 2), "lokr_w2_a": _r(2, 3), "lokr_w2_b": _r(2, 4),
              "lokr_t2": _r(2, 2, 3, 3), "alpha": torch.tensor(4.0)}],
    "diff": [{"diff": _r(4, 6), "diff_b": _r(4)}, {"diff_b": _r(4)}],
    "norm": [{"w_norm": _r(4), "b_norm": _r(4)}],
}
CASES = [(name, roles) for name, modules in EXAMPLES.items() for roles in modules]


def test_every_registered_kind_has_examples() -> None:
    assert set(EXAMPLES) == set(KINDS)


def test_every_role_of_the_key_grammar_belongs_to_one_kind_or_to_all() -> None:
    for rule in SUFFIX_RULES:
        owners = [k.name for k in KINDS.values() if rule.role in k.roles | k.lone_roles]
        if rule.style == STYLE_ANY:
            assert rule.role in SHARED_ROLES and owners == [], rule
        else:
            assert len(owners) == 1, (rule, owners)


def test_every_role_of_every_kind_can_be_read_from_a_file() -> None:
    spelled = {rule.role for rule in SUFFIX_RULES}
    for kind in KINDS.values():
        assert kind.roles | kind.lone_roles | set(kind.suffix_roles) <= spelled, kind.name


@pytest.mark.parametrize("name, roles", CASES)
def test_kind_functions_agree(name: str, roles: Roles) -> None:
    kind = adapter_kind(name)
    assert module_kind(roles) == name and kinds_of_roles(set(roles)) == [name]
    assert kind.missing_roles(frozenset(roles)) == []
    assert kind.shape_problem(roles, True) is None and kind.shape_problem(roles, False) is None
    assert set(kind.formats(roles)) <= set(FORMAT_NAMES)
    shape = kind.delta_shape(roles)
    delta = kind.delta(roles)
    if shape is None:
        assert delta is None
        return
    assert delta is not None and delta.dtype == torch.float32 and delta.numel() == math.prod(shape)
    assert delta.shape[0] == shape[0]  # the output axis leads in both
    torch.testing.assert_close(delta_weight(roles, shape), delta.reshape(shape) * module_scale(roles))
    rank = kind.rank(roles)
    if rank is not None and "alpha" in roles:
        assert module_scale(roles) == pytest.approx(float(roles["alpha"]) / rank)


@pytest.mark.parametrize("name, roles", CASES)
def test_a_file_with_the_kinds_keys_parses_back_to_the_same_module(name: str, roles: Roles) -> None:
    kohya = {"down": ".lora_down.weight", "up": ".lora_up.weight", "mid": ".lora_mid.weight"}
    tensors = {f"lora_unet_m{kohya.get(role, '.' + role)}": t for role, t in roles.items()}
    module = parse_lora(tensors, {}, name).modules["lora_unet_m"]
    assert module.kind == name and module.tensors.keys() == roles.keys()


# Roles a kind can do without: LoRA's Tucker mid, LoKr's Tucker core (LoHa needs both cores or neither).
OPTIONAL_ROLES = {"mid", "lokr_t2"}


@pytest.mark.parametrize("name, roles", [(n, r) for n, r in CASES if adapter_kind(n).missing_roles(frozenset())])
def test_dropping_a_needed_role_is_reported(name: str, roles: Roles) -> None:
    kind = adapter_kind(name)
    for role in (set(roles) & kind.roles) - OPTIONAL_ROLES:
        assert kind.missing_roles(frozenset(roles) - {role}), (name, role)


def test_unknown_kind_and_roles_of_no_kind() -> None:
    with pytest.raises(LoraShapeError, match="Unknown module kind 'oft'"):
        adapter_kind("oft")
    with pytest.raises(LoraShapeError, match="Cannot tell the module kind"):
        module_kind({"alpha"})
    with pytest.raises(LoraShapeError, match="found kinds \\['lora', 'loha'\\]"):
        module_kind({"down", "up", "hada_w1_a"})
