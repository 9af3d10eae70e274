"""The metadata of a tool's output file: kohya `ss_*` and `modelspec.*` fields, plus `loralab.tool.*` provenance.

Fields a loader or a model site reads (base model, architecture, trigger phrase) are carried over from the
sources when they agree; `loralab.tool.*` says what the file was made from and how (sources with their
hashes and strengths, method, rank rule, achieved ranks, kept share and error per layer).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping, Sequence

from .layer import LayerReport
from .sources import Source

# Source fields carried over when every source that has them agrees.
CARRIED = ("ss_base_model_version", "ss_v2", "ss_sd_model_name", "modelspec.architecture",
           "modelspec.implementation", "modelspec.prediction_type", "modelspec.resolution", "ss_resolution")


def _agreed(sources: Sequence[Source], key: str) -> str | None:
    values = {s.lora.metadata[key] for s in sources if key in s.lora.metadata}
    return values.pop() if len(values) == 1 else None


def _trigger_phrase(sources: Sequence[Source]) -> str:
    seen: list[str] = []
    for source in sources:
        phrase = source.lora.metadata.get("modelspec.trigger_phrase", "").strip()
        if phrase and phrase not in seen:
            seen.append(phrase)
    return ", ".join(seen)


def _dim_and_alpha(ranks: set[int], alpha: float | None) -> tuple[str, str]:
    # One rank: that rank (and alpha = rank unless an alpha was asked); several: "Dynamic".
    dim = str(next(iter(ranks))) if len(ranks) == 1 else "Dynamic"
    if alpha is not None:
        return dim, str(float(alpha))
    return dim, (f"{float(dim)}" if len(ranks) == 1 else "Dynamic")


def layer_metadata(method: str, output_name: str, reports: Sequence[LayerReport], rank_label: str,
                   alpha: float | None, comment: str, now: datetime.datetime | None = None) -> dict[str, str]:
    """The fields every tool's LoRA file has, whatever it was made from: network shape, method, ranks, errors.

    As kohya writes them: ss_network_dim / ss_network_alpha of the linear (and 1x1 conv) layers, conv_dim /
    conv_alpha in ss_network_args for conv layers with a larger kernel (the largest such rank); "Dynamic"
    where the layers of a kind differ."""
    ranks = {r.prefix: r.rank for r in reports if r.rank}
    linear = {r.rank for r in reports if r.rank and not r.conv}
    conv = {r.rank for r in reports if r.rank and r.conv}
    dim, alpha_text = _dim_and_alpha(linear or conv, alpha)
    now = now or datetime.datetime.now()
    args = {"conv_dim": str(max(conv)), "conv_alpha": _dim_and_alpha(conv, alpha)[1]} if conv else {}
    metadata = {
        "ss_output_name": output_name,
        "ss_network_module": "networks.lora",
        "ss_network_dim": dim,
        "ss_network_alpha": alpha_text,
        "ss_network_args": json.dumps(args),
        "ss_training_comment": comment,
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.title": output_name,
        "modelspec.date": now.replace(microsecond=0).isoformat(),
        "loralab.tool.method": method,
        "loralab.tool.rank_rule": rank_label,
        "loralab.tool.ranks": json.dumps(ranks),
        "loralab.tool.kept_share": json.dumps({r.prefix: round(r.kept_share, 6) for r in reports if r.rank}),
        "loralab.tool.error": json.dumps({r.prefix: r.error for r in reports if r.rank}),
        "loralab.tool.mean_kept_share": f"{mean_kept_share(reports):.6f}",
    }
    return metadata


def tool_metadata(method: str, output_name: str, sources: Sequence[Source], reports: Sequence[LayerReport],
                  rank_label: str, alpha: float | None, comment: str,
                  now: datetime.datetime | None = None) -> dict[str, str]:
    """All metadata of a file made from source LoRAs (hashes are added when it is saved)."""
    metadata = layer_metadata(method, output_name, reports, rank_label, alpha, comment, now)
    metadata["loralab.tool.sources"] = json.dumps([
        {"name": s.name, "sha256": s.sha256, "strength_model": s.strength_model,
         "strength_clip": s.strength_clip} for s in sources])
    for key in CARRIED:
        value = _agreed(sources, key)
        if value is not None:
            metadata[key] = value
    if "modelspec.architecture" in metadata and not metadata["modelspec.architecture"].endswith("/lora"):
        metadata["modelspec.architecture"] += "/lora"
    phrase = _trigger_phrase(sources)
    if phrase:
        metadata["modelspec.trigger_phrase"] = phrase
    return metadata


def mean_kept_share(reports: Sequence[LayerReport]) -> float:
    """The mean over factorised layers of the kept Frobenius share (1.0 when there are none)."""
    shares = [r.kept_share for r in reports if r.rank]
    return sum(shares) / len(shares) if shares else 1.0


def bake_metadata(output_name: str, precision: str, loras: Sequence[Mapping[str, object]],
                  patched_layers: Mapping[str, int], now: datetime.datetime | None = None) -> dict[str, str]:
    """What a baked checkpoint records of its making: the LoRAs (name, strengths, sha256; empty when the stack
    was not connected), how many weights of each part carried patches, and the precision saved."""
    now = now or datetime.datetime.now()
    names = ", ".join(f"{lora['name']} ({lora['strength_model']:g}/{lora['strength_clip']:g})" for lora in loras)
    return {
        "modelspec.title": output_name,
        "modelspec.date": now.replace(microsecond=0).isoformat(),
        "loralab.tool.method": "bake",
        "loralab.tool.precision": precision,
        "loralab.tool.sources": json.dumps(list(loras)),
        "loralab.tool.patched_layers": json.dumps(dict(patched_layers)),
        "loralab.tool.comment": f"LoRAs baked by LoRA Lab: {names}" if names else "LoRAs baked by LoRA Lab",
    }
