"""The registry of adapter kinds: every `AdapterKind` by name, and which kind a module's roles encode.

Adding a kind is adding its file next to this one and listing it in `KINDS`; the key grammar
(`lora.keys`), parsing and validation (`lora.file`) and the delta math (`adapters.delta`) look it up here.
"""

from __future__ import annotations

from collections.abc import Collection

from ..errors import LoraShapeError
from .base import AdapterKind
from .diff import DIFF, NORM
from .loha import LOHA
from .lokr import LOKR
from .lora import LORA

KINDS: dict[str, AdapterKind] = {kind.name: kind for kind in (LORA, LOHA, LOKR, DIFF, NORM)}


def adapter_kind(name: str) -> AdapterKind:
    """The registered kind called `name`; LoraShapeError for a name no file registers."""
    kind = KINDS.get(name)
    if kind is None:
        raise LoraShapeError(f"Unknown module kind {name!r}.")
    return kind


def kinds_of_roles(roles: Collection[str]) -> list[str]:
    """The kind names whose roles appear; a module with only a lone role (`.diff_b`) counts as that kind."""
    names = set(roles)
    kinds = [kind.name for kind in KINDS.values() if names & kind.roles]
    if not kinds:
        kinds = [kind.name for kind in KINDS.values() if names & kind.lone_roles]
    return kinds


def module_kind(roles: Collection[str]) -> str:
    """The one kind name a module's roles encode; raise LoraShapeError if none or several."""
    kinds = kinds_of_roles(roles)
    if len(kinds) != 1:
        raise LoraShapeError(f"Cannot tell the module kind from tensors {sorted(roles)}: found kinds {kinds}.")
    return kinds[0]
