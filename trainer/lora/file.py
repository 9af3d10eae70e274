"""A parsed, validated LoRA file: keys grouped into modules, each module's kind and format checked."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from ..adapters.delta import module_rank
from ..adapters.diff import KIND_DIFF
from ..adapters.dora import is_dora
from ..adapters.lora import KIND_LORA
from ..adapters.registry import adapter_kind, kinds_of_roles
from ..errors import LoraFileError, LoraShapeError, LoraValueError, NotALoraError
from ..safetensors_io import read_safetensors
from .keys import (
    SCHEME_COMFYUI,
    SCHEME_KOHYA,
    SCHEME_LYCORIS,
    STYLE_ANY,
    STYLE_DIFFUSERS,
    STYLE_KOHYA,
    STYLE_LEGACY,
    STYLE_LYCORIS,
    STYLE_MOCHI,
    STYLE_PEFT,
    STYLE_PEFT_NAMED,
    STYLE_TRANSFORMERS,
    PrefixScheme,
    SuffixRule,
    checkpoint_kind,
    classify_prefix,
    looks_like_checkpoint_key,
    split_key,
)

logger = logging.getLogger(__name__)

# File-level format names, in the order summaries list them.
FORMAT_NAMES: dict[str, str] = {
    "kohya": "kohya LoRA (diffusers module names)",
    "kohya_ldm": "kohya LoRA (LDM/SGM module names)",
    "locon": "LyCORIS LoCon (3x3 conv)",
    "locon_tucker": "LyCORIS LoCon with Tucker mid",
    "loha": "LyCORIS LoHa",
    "lokr": "LyCORIS LoKr",
    "dora": "DoRA",
    "lycoris_prefix": "SimpleTuner LyCORIS (lycoris_ prefix)",
    "comfyui_native": "ComfyUI native training output",
    "diffusers_legacy": "diffusers (legacy attention processor)",
    "peft": "PEFT / diffusers (lora_A/lora_B)",
    "diffusers": "diffusers (lora.down/lora.up)",
    "transformers_te": "diffusers text encoder (lora_linear_layer)",
    "diff": "full weight difference",
    "norm": "LyCORIS norm deltas",
    "other": "LoRA with unrecognised module names",
}
_STYLE_FORMAT = {STYLE_PEFT: "peft", STYLE_PEFT_NAMED: "peft", STYLE_MOCHI: "peft", STYLE_DIFFUSERS: "diffusers",
                 STYLE_LEGACY: "diffusers_legacy", STYLE_TRANSFORMERS: "transformers_te"}


@dataclass(frozen=True, eq=False)
class LoraModule:
    """One module of a LoRA file: its prefix as written, kind, suffix style, naming scheme and tensors by role."""

    prefix: str
    kind: str  # a kind name of adapters.registry.KINDS: "lora", "loha", "lokr", "diff", "norm"
    style: str  # STYLE_* of its down/up keys (STYLE_LYCORIS for hada/lokr/diff/norm)
    scheme: PrefixScheme
    tensors: dict[str, torch.Tensor]  # role -> tensor
    keys: dict[str, str]  # role -> key in the file

    @property
    def rank(self) -> int | None:
        """The rank alpha is divided by (None for diff/norm, and LoKr with two full factors)."""
        return module_rank(self.tensors)

    @property
    def alpha(self) -> float | None:
        """The stored alpha, or None when the file has none for this module."""
        alpha = self.tensors.get("alpha")
        return None if alpha is None else float(alpha.float().item())

    @property
    def is_dora(self) -> bool:
        """True when a DoRA magnitude (`dora_scale` or PEFT `lora_magnitude_vector`) is present."""
        return is_dora(self.tensors)

    @property
    def has_mid(self) -> bool:
        """True for LoCon Tucker modules (`lora_mid`)."""
        return "mid" in self.tensors


@dataclass(frozen=True, eq=False)
class LoraFile:
    """A whole LoRA: modules by prefix (file order), metadata, keys no module claimed, detected formats."""

    source_name: str
    modules: dict[str, LoraModule]
    metadata: dict[str, str] = field(default_factory=dict)
    unrecognised: dict[str, torch.Tensor] = field(default_factory=dict)  # key -> tensor, no module claimed it
    formats: tuple[str, ...] = ()

    @property
    def unrecognised_keys(self) -> tuple[str, ...]:
        """Keys that belong to no complete LoRA module (unknown suffixes, unpaired halves)."""
        return tuple(self.unrecognised)

    @property
    def format(self) -> str:
        """The detected format names joined with '+', e.g. 'kohya+locon'."""
        return "+".join(self.formats)

    @property
    def ranks(self) -> list[int]:
        """Distinct module ranks, ascending."""
        return sorted({m.rank for m in self.modules.values() if m.rank is not None})

    @property
    def alphas(self) -> list[float]:
        """Distinct stored alphas, ascending."""
        return sorted({m.alpha for m in self.modules.values() if m.alpha is not None})


def load_lora_file(path: str | os.PathLike[str]) -> LoraFile:
    """Read a .safetensors LoRA from disk and parse it (see `parse_lora`)."""
    tensors, metadata = read_safetensors(path)
    return parse_lora(tensors, metadata, str(path))


def parse_lora(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None, source_name: str) -> LoraFile:
    """Group keys into modules, detect each module's kind and the file's formats, validate; raise in user terms."""
    if not tensors:
        raise NotALoraError(f"'{source_name}' contains no tensors at all. The file is empty or was saved "
                            "without weights; export or download it again.", path=source_name)
    groups: dict[str, dict[str, tuple[str, SuffixRule]]] = {}
    unrecognised: list[str] = []
    for key in tensors:
        split = split_key(key)
        if split is None:
            unrecognised.append(key)
            continue
        prefix, rule = split
        roles = groups.setdefault(prefix, {})
        if rule.role in roles:
            raise LoraFileError(f"'{source_name}': module '{prefix}' has two '{rule.role}' tensors, "
                                f"'{roles[rule.role][0]}' and '{key}'; the file mixes two naming schemes for one "
                                "layer. Export it again with one tool.", path=source_name, key=key)
        roles[rule.role] = (key, rule)
    modules: dict[str, LoraModule] = {}
    for prefix, roles in groups.items():
        module = _build_module(prefix, roles, tensors, source_name)
        if module is None:
            unrecognised.extend(key for key, _ in roles.values())
        else:
            modules[prefix] = module
    if not modules:
        _raise_not_a_lora(list(tensors), unrecognised, source_name)
    for module in modules.values():
        validate_module(module, source_name)
    if unrecognised:
        logger.warning("%s: %d keys belong to no LoRA module and are ignored, e.g. %s",
                       source_name, len(unrecognised), unrecognised[:3])
    return LoraFile(source_name=source_name, modules=modules, metadata=dict(metadata or {}),
                    unrecognised={k: tensors[k] for k in unrecognised}, formats=_file_formats(modules.values()))


def _build_module(prefix: str, roles: dict[str, tuple[str, SuffixRule]], tensors: dict[str, torch.Tensor],
                  source_name: str) -> LoraModule | None:
    role_names = set(roles)
    kinds = kinds_of_roles(role_names)
    if len(kinds) > 1:
        raise LoraFileError(f"'{source_name}': module '{prefix}' mixes {' and '.join(kinds)} tensors "
                            f"({sorted(k for k, _ in roles.values())}); one layer can have one adapter kind. "
                            "The file is damaged or merged wrongly; export it again.", path=source_name)
    if not kinds:
        logger.warning("%s: module %s has only %s and no weights; ignored", source_name, prefix, sorted(role_names))
        return None
    lacking = adapter_kind(kinds[0]).missing_roles(frozenset(role_names))
    if lacking:
        logger.warning("%s: module %s lacks %s; its keys are left unrecognised", source_name, prefix, lacking)
        return None
    # Only a LoRA pair has several spellings; the other kinds are LyCORIS `.<role>` keys.
    styles = {rule.style for _, rule in roles.values()} - {STYLE_ANY}
    style = STYLE_LYCORIS if kinds[0] != KIND_LORA else next(iter(styles - {STYLE_LYCORIS}), STYLE_KOHYA)
    return LoraModule(prefix=prefix, kind=kinds[0], style=style, scheme=classify_prefix(prefix),
                      tensors={role: tensors[key] for role, (key, _) in roles.items()},
                      keys={role: key for role, (key, _) in roles.items()})


def _raise_not_a_lora(keys: list[str], unrecognised: list[str], source_name: str) -> None:
    weights = [k for k in keys if looks_like_checkpoint_key(k)]
    if len(weights) * 2 >= len(keys):
        example = next((k for k in weights if k.startswith("model.diffusion_model.")), weights[0])
        raise NotALoraError(
            f"'{source_name}' is {checkpoint_kind(weights)}, not a LoRA: its {len(keys)} tensors are model "
            f"weights such as '{example}', and none ends in a LoRA suffix (.lora_down.weight, .lora_A.weight, "
            ".hada_w1_a, .lokr_w1, …). Load it with a checkpoint/model loader, and pick a LoRA file here.",
            path=source_name)
    raise NotALoraError(
        f"'{source_name}' contains no usable LoRA modules: none of its {len(keys)} keys (e.g. {unrecognised[:3]}) "
        "forms a complete module (lora_down + lora_up, lora_A + lora_B, hada_w1_a/b + hada_w2_a/b, lokr_w1 + "
        "lokr_w2, diff). It may be damaged or a format LoRA Lab does not know.", path=source_name)


def validate_module(module: LoraModule, source_name: str) -> None:
    """Raise LoraValueError for NaN/Inf or a bad alpha, LoraShapeError for tensors whose ranks disagree."""
    for role, tensor in module.tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise LoraValueError(f"'{source_name}': tensor '{module.keys[role]}' contains {bad} NaN/Inf value(s) "
                                 f"out of {tensor.numel()}. The LoRA was saved from a diverged training run or "
                                 "is damaged; use an earlier checkpoint or export it again.",
                                 path=source_name, key=module.keys[role])
    alpha = module.tensors.get("alpha")
    if alpha is not None and alpha.numel() != 1:
        raise LoraValueError(f"'{source_name}': alpha '{module.keys['alpha']}' has shape {list(alpha.shape)}; "
                             "expected a single number. The file is damaged; export it again.",
                             path=source_name, key=module.keys["alpha"])
    problem = adapter_kind(module.kind).shape_problem(module.tensors, module.style == STYLE_KOHYA)
    if problem:
        raise LoraShapeError(f"'{source_name}': module '{module.prefix}' {problem}. The file is damaged or was "
                             "written by a broken tool; export it again.", path=source_name)


def _pair_formats(module: LoraModule) -> list[str]:
    # A LoRA pair's spelling names the tool that wrote it; kohya and ComfyUI spell it alike, the prefix tells.
    scheme = module.scheme.scheme
    if module.style in _STYLE_FORMAT:
        return [_STYLE_FORMAT[module.style]]
    if scheme == SCHEME_COMFYUI:
        return ["comfyui_native"]
    if scheme == SCHEME_KOHYA:
        return ["kohya_ldm" if module.scheme.layout == "ldm" else "kohya"]
    return []


def module_formats(module: LoraModule) -> list[str]:
    """The format names (FORMAT_NAMES keys) one module shows."""
    layout = adapter_kind(module.kind).formats(module.tensors)
    if module.kind == KIND_LORA:
        found = _pair_formats(module) + layout
    elif module.kind == KIND_DIFF and module.scheme.scheme == SCHEME_COMFYUI:
        found = ["comfyui_native"]  # ComfyUI's trainer writes norm and bias layers as full diffs
    else:
        found = list(layout)
    if module.is_dora:
        found.append("dora")
    if module.scheme.scheme == SCHEME_LYCORIS:
        found.append("lycoris_prefix")
    return found or ["other"]


def _file_formats(modules: Iterable[LoraModule]) -> tuple[str, ...]:
    seen = {name for module in modules for name in module_formats(module)}
    return tuple(name for name in FORMAT_NAMES if name in seen)
