"""Key normalisation: rewrite any parsed LoRA into keys the host's own loader maps (kohya names, explicit alpha).

ComfyUI's `load_lora` maps kohya (`lora_unet_*`, `lora_te*_`), LyCORIS and its native `diffusion_model.*` keys,
but not diffusers/PEFT attention keys (FORMATS.md §1.5). Those modules are renamed here to
`lora_unet_<diffusers name with _>` / `lora_te_…` / `lora_te2_…` with `.lora_down.weight` (= PEFT A) and
`.lora_up.weight` (= PEFT B), and get an explicit `.alpha`, so that the host computes
`W + strength * alpha / rank * up @ down` with the scale PEFT intended.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from typing import Any

import torch

from ..adapters.delta import module_delta_shape, module_scale
from ..adapters.dora import dora_scale
from ..adapters.lokr import KIND_LOKR, lokr_factors
from ..adapters.lora import KIND_LORA
from ..errors import LoraFileError
from .file import LoraFile, LoraModule
from .keys import (
    PEFT_WRAPPER_PREFIX,
    SCHEME_DIFFUSERS,
    STYLE_DIFFUSERS,
    STYLE_LEGACY,
    STYLE_MOCHI,
    STYLE_PEFT,
    STYLE_PEFT_NAMED,
    STYLE_TRANSFORMERS,
    split_key,
)

logger = logging.getLogger(__name__)

LORA_ADAPTER_METADATA_KEY = "lora_adapter_metadata"  # diffusers: loaders/lora_base.py
# diffusers pipeline component names, as they prefix keys and lora_adapter_metadata entries.
_COMPONENT_NAMES = {"unet": "unet", "te": "text_encoder", "te2": "text_encoder_2"}
_KOHYA_ROLE_SUFFIX = {"down": ".lora_down.weight", "up": ".lora_up.weight", "mid": ".lora_mid.weight",
                      "alpha": ".alpha", "dora_scale": ".dora_scale", "magnitude": ".dora_scale"}
# Legacy attention-processor names -> module names (UNet attention and CLIP attention).
_LEGACY_UNET = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"}
_LEGACY_TE = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}
# Spellings written by PEFT/diffusers, whose files carry alpha (if at all) in metadata, not as a tensor.
_PEFT_STYLES = (STYLE_PEFT, STYLE_PEFT_NAMED, STYLE_MOCHI, STYLE_DIFFUSERS, STYLE_LEGACY, STYLE_TRANSFORMERS)


def _component_of(module: LoraModule) -> str | None:
    """The diffusers component ('unet', 'text_encoder', 'text_encoder_2') the prefix starts with, if any."""
    component = _COMPONENT_NAMES.get(module.scheme.component)
    bare = module.prefix.removeprefix(PEFT_WRAPPER_PREFIX)
    return component if component and bare.startswith(f"{component}.") else None


def module_path(module: LoraModule) -> str:
    """The diffusers module name inside its component, e.g. 'down_blocks.0.attentions.0.proj_in'."""
    path = module.prefix.removeprefix(PEFT_WRAPPER_PREFIX)
    component = _component_of(module)
    path = path.removeprefix(f"{component}.") if component else path
    if module.style == STYLE_LEGACY:
        head, _, leaf = path.rpartition(".")
        table = _LEGACY_UNET if module.scheme.component == "unet" else _LEGACY_TE
        head = head.removesuffix(".processor")
        path = f"{head}.{table.get(leaf, leaf)}" if head else table.get(leaf, leaf)
    return path


def _te_prefix(lora_file: LoraFile) -> str:
    # SDXL pipelines have text_encoder_2: then text_encoder is kohya's te1 (CLIP-L); otherwise plain te.
    has_te2 = any(m.scheme.component == "te2" for m in lora_file.modules.values())
    return "lora_te1_" if has_te2 else "lora_te_"


def host_prefix(module: LoraModule, lora_file: LoraFile) -> str:
    """The module prefix the host will see in `host_modules` (unchanged unless diffusers-named)."""
    if module.scheme.scheme != SCHEME_DIFFUSERS:
        return module.prefix
    head = {"unet": "lora_unet_", "te": _te_prefix(lora_file), "te2": "lora_te2_"}[module.scheme.component]
    return head + module_path(module).replace(".", "_")


def _adapter_config(metadata: dict[str, str], component: str | None) -> dict[str, Any]:
    raw = metadata.get(LORA_ADAPTER_METADATA_KEY)
    if not raw:
        return {}
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as e:
        logger.warning("ignoring unreadable %s metadata (%s); using alpha = rank", LORA_ADAPTER_METADATA_KEY, e)
        return {}
    if not isinstance(parsed, dict):
        return {}
    if component:
        scoped = {k.removeprefix(f"{component}."): v for k, v in parsed.items() if k.startswith(f"{component}.")}
        if scoped:
            return scoped
    return {k: v for k, v in parsed.items() if "." not in k}


def _pattern_value(patterns: object, path: str) -> float | None:
    # PEFT's get_pattern_key: a pattern matches a module name that ends with it (after a dot or whole).
    if not isinstance(patterns, dict):
        return None
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", path):
            return float(value)
    return None


def peft_alpha(metadata: dict[str, str], component: str | None, path: str, rank: int) -> float:
    """The kohya-equivalent alpha of a PEFT module: from `lora_adapter_metadata`, else rank (scale 1)."""
    config = _adapter_config(metadata, component)
    alpha = _pattern_value(config.get("alpha_pattern"), path)
    if alpha is None and config.get("lora_alpha") is not None:
        alpha = float(config["lora_alpha"])
    if alpha is None:
        return float(rank)
    if config.get("use_rslora"):
        # PEFT scales rsLoRA by alpha / sqrt(r); the host divides by r, so store alpha * sqrt(r).
        return alpha * math.sqrt(rank)
    return alpha


def _rewritten_module(module: LoraModule, lora_file: LoraFile, prefix: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    up = module.tensors.get("up")
    for role, tensor in module.tensors.items():
        suffix = _KOHYA_ROLE_SUFFIX.get(role, f".{role}")
        out[prefix + suffix] = _magnitude_as_dora_scale(module, tensor) if role == "magnitude" else tensor
    if module.kind == KIND_LORA and "alpha" not in module.tensors and up is not None:
        rank = int(module.tensors["down"].shape[0])
        alpha = peft_alpha(lora_file.metadata, _component_of(module), module_path(module), rank)
        out[prefix + ".alpha"] = torch.tensor(alpha, dtype=torch.float32)
    return out


def _magnitude_as_dora_scale(module: LoraModule, magnitude: torch.Tensor) -> torch.Tensor:
    up = module.tensors.get("up")
    out_features = None if up is None else int(up.shape[0])
    if out_features is None or magnitude.numel() != out_features:
        raise LoraFileError(f"'{module.prefix}': DoRA magnitude has {magnitude.numel()} values but the layer has "
                            f"{out_features} outputs; the file is damaged.", path=module.prefix)
    ndim = up.dim() if up is not None else 2
    return dora_scale({"magnitude": magnitude}, ndim)  # type: ignore[return-value]


def _passthrough_module(module: LoraModule, lora_file: LoraFile) -> dict[str, torch.Tensor]:
    """Original keys; a PEFT magnitude becomes `.dora_scale`, a PEFT-style pair without alpha gets one."""
    out = {(module.prefix + ".dora_scale" if role == "magnitude" else module.keys[role]):
           (_magnitude_as_dora_scale(module, t) if role == "magnitude" else t)
           for role, t in module.tensors.items()}
    if module.kind == KIND_LORA and module.style in _PEFT_STYLES and "alpha" not in module.tensors:
        # e.g. diffusers `transformer.…lora_A.weight` (Flux/SD3): the host maps the names but would use scale 1.
        component = module.prefix.split(".", 1)[0] if "." in module.prefix else None
        rank = int(module.tensors["down"].shape[0])
        path = module.prefix.removeprefix(f"{component}.") if component else module.prefix
        out[module.prefix + ".alpha"] = torch.tensor(peft_alpha(lora_file.metadata, component, path, rank))
    return out


def host_entries(module: LoraModule, lora_file: LoraFile) -> dict[str, torch.Tensor]:
    """One module's host keys -> tensors (renamed with explicit alpha if diffusers-named, else as written)."""
    if module.kind == KIND_LOKR and "lokr_t2" in module.tensors:
        return _lokr_tucker_as_full(module, host_prefix(module, lora_file))
    if module.scheme.scheme == SCHEME_DIFFUSERS:
        return _rewritten_module(module, lora_file, host_prefix(module, lora_file))
    return _passthrough_module(module, lora_file)


def _lokr_tucker_as_full(module: LoraModule, prefix: str) -> dict[str, torch.Tensor]:
    """LoKr with `lokr_t2` as two full factors, the alpha/rank scale folded into w2.

    ComfyUI 0.3.75 with current torch fails on `lokr_t2` ("ERROR lokr …: view size is not compatible": kron of
    a non-contiguous einsum result) and skips the layer; with two full factors it applies scale 1, as intended.
    """
    w1, w2 = lokr_factors(module.tensors)
    out = {f"{prefix}.lokr_w1": w1, f"{prefix}.lokr_w2": (w2 * module_scale(module.tensors)).contiguous()}
    for role in ("dora_scale", "diff_b"):
        if role in module.tensors:
            out[f"{prefix}.{role}"] = module.tensors[role]
    return out


def host_modules(lora_file: LoraFile) -> dict[str, dict[str, torch.Tensor]]:
    """Host module prefix -> that module's host keys -> tensors.

    An adapter looks each prefix up in the host's key map, compares `module_delta_numel(entries)` with the
    target weight's numel, and hands the entries of the modules it keeps to the host's `load_lora`.
    """
    out: dict[str, dict[str, torch.Tensor]] = {}
    for module in lora_file.modules.values():
        prefix = host_prefix(module, lora_file)
        if prefix in out:
            raise LoraFileError(f"'{lora_file.source_name}': two modules both become '{prefix}' for the host "
                                "(the file holds the same layer in two naming schemes). Export it again.",
                                path=lora_file.source_name, key=prefix)
        out[prefix] = host_entries(module, lora_file)
    return out


def entry_roles(entries: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Role -> tensor of one module's host entries (as `host_modules` gives them)."""
    roles: dict[str, torch.Tensor] = {}
    for key, tensor in entries.items():
        split = split_key(key)
        if split is None:  # host_modules writes only keys it parsed or spelled with a known suffix
            raise LoraFileError(f"Host key '{key}' ends in no known LoRA suffix.", key=key)
        roles[split[1].role] = tensor
    return roles


def module_delta_numel(entries: Mapping[str, torch.Tensor]) -> int | None:
    """Number of weight values one module's host entries change (compare with the target weight's numel).

    None for a bias-only module.
    """
    shape = module_delta_shape(entry_roles(entries))
    return None if shape is None else math.prod(shape)
