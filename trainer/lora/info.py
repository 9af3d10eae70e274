"""What a LoRA file says about itself: trigger words, base model (stated or guessed from keys), a summary."""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from typing import Any

from ..adapters.delta import module_delta_shape
from ..errors import LoraShapeError
from .file import FORMAT_NAMES, LoraFile, LoraModule

logger = logging.getLogger(__name__)

BASE_MODEL_LABELS: dict[str, str] = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL", "sd3": "SD3", "flux": "Flux"}
# Cross-attention context width (attn2.to_k / to_v input features) of each UNet family.
_CONTEXT_WIDTH = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
# Hidden width of the first text encoder (lora_te_ / text_encoder.): CLIP-L for SD1, OpenCLIP-H for SD2.
_TE_WIDTH = {768: "sd1", 1024: "sd2"}
_CROSS_ATTN_KV = re.compile(r"attn2[._](processor[._])?to_[kv]$")
_TE_Q_PROJ = re.compile(r"self_attn[._](q_proj|to_q)$")


def _split_words(text: str) -> list[str]:
    return [w.strip() for w in text.split(",") if w.strip()]


def _json(raw: str | None) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        logger.debug("metadata value is not JSON (%s): %.60s", e, raw)
        return None


def trigger_words(metadata: dict[str, str]) -> list[str]:
    """Trigger words: `modelspec.trigger_phrase` (comma-separated), then kohya `ss_datasets` class tokens.

    Order kept, duplicates (ignoring case) dropped; [] when the file names none.
    """
    words: list[str] = _split_words(metadata.get("modelspec.trigger_phrase", ""))
    datasets = _json(metadata.get("ss_datasets"))
    for dataset in datasets if isinstance(datasets, list) else []:
        subsets = dataset.get("subsets") if isinstance(dataset, dict) else None
        for subset in subsets if isinstance(subsets, list) else []:
            tokens = subset.get("class_tokens") if isinstance(subset, dict) else None
            if isinstance(tokens, str):
                words += _split_words(tokens)
    seen: set[str] = set()
    unique = []
    for word in words:
        if word.casefold() not in seen:
            seen.add(word.casefold())
            unique.append(word)
    return unique


def base_model(metadata: dict[str, str]) -> str | None:
    """The base model the file states: `ss_base_model_version`, else `modelspec.architecture`, else None."""
    return metadata.get("ss_base_model_version") or metadata.get("modelspec.architecture") or None


def _in_features(module: LoraModule) -> int | None:
    try:
        shape = module_delta_shape(module.tensors)
    except LoraShapeError:
        return None
    return shape[1] if shape is not None and len(shape) >= 2 else None


def base_model_hint(lora_file: LoraFile) -> str | None:
    """Guess the architecture ('sd1', 'sd2', 'sdxl', 'sd3', 'flux') from keys and shapes; None if unsure.

    Only for phrasing errors ("this LoRA looks like SDXL"); never used to decide how to load.
    """
    modules = list(lora_file.modules.values())
    for module in modules:  # the cross-attention context width is the strongest signal
        if module.scheme.component == "unet" and _CROSS_ATTN_KV.search(module.prefix):
            width = _in_features(module)
            if width in _CONTEXT_WIDTH:
                return _CONTEXT_WIDTH[width]
    if any(m.scheme.component in ("te1", "te2") for m in modules):
        return "sdxl"
    names = " ".join(m.prefix for m in modules)
    if re.search(r"double_blocks|single_blocks", names):
        return "flux"
    if "joint_blocks" in names:
        return "sd3"
    if re.search(r"transformer_blocks[._][1-9]", names):
        return "sdxl"  # SD1/SD2 have one transformer block per attention; SDXL has 2 or 10
    for module in modules:
        if module.scheme.component == "te" and _TE_Q_PROJ.search(module.prefix):
            width = _in_features(module)
            if width in _TE_WIDTH:
                return _TE_WIDTH[width]
    if re.search(r"input_blocks[._][12][._]1[._]|down_blocks[._]0[._]attentions", names):
        return "sd1"  # attention at the first UNet level: SD1/SD2 layout (SDXL has none there)
    return None


def base_model_label(code: str | None) -> str:
    """A user-facing name for a `base_model_hint` code."""
    return BASE_MODEL_LABELS.get(code or "", "an unknown model")


def summary(lora_file: LoraFile) -> dict[str, Any]:
    """Formats, ranks, alphas, module counts, base model (stated and guessed) and trigger words of a LoRA."""
    alphas = lora_file.alphas
    return {
        "source": lora_file.source_name,
        "formats": list(lora_file.formats),
        "format_names": [FORMAT_NAMES[f] for f in lora_file.formats],
        "ranks": lora_file.ranks,
        "alphas": alphas,
        "alpha": alphas[0] if len(alphas) == 1 else None,
        "modules": len(lora_file.modules),
        "module_kinds": dict(Counter(m.kind for m in lora_file.modules.values())),
        "base_model": base_model(lora_file.metadata),
        "base_model_hint": base_model_hint(lora_file),
        "trigger_words": trigger_words(lora_file.metadata),
        "unrecognised_keys": len(lora_file.unrecognised),
    }
