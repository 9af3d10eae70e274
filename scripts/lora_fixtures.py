"""Test fixtures: write LoRA files in every format LoRA Lab reads, and broken files (torch + safetensors only).

Importable by unit tests, host tests and benchmarks alike; never imports the host.

Targets name the layers a LoRA changes. Give each as a `Target` or a tuple
`(name, kind, out_features, in_features[, ldm_name[, component]])`:

* `name`: the diffusers module name inside its component, e.g.
  `"down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"` or `"text_model.encoder.layers.0.self_attn.q_proj"`;
* `kind`: `"linear"`, `"conv1x1"`, `"conv3x3"`, or `"norm"` (a 1-D norm weight; only `comfyui_native` writes it);
* `ldm_name`: the host's own (LDM) module name, e.g. `"input_blocks.1.1.transformer_blocks.0.attn1.to_q"`,
  needed by `kohya_ldm` and `comfyui_native` for UNet targets;
* `component`: `"unet"`, `"te"` (the first or only text encoder) or `"te2"` (SDXL's second).

`write_format(fmt, path, targets, rank, alpha, gen, metadata=None, name_for=None)` writes one of `FORMATS`;
pass `name_for(target) -> str` to choose the dotted module name yourself (the format then adds its own
prefix and separators). `alpha=None` means scale 1 (alpha = rank). Values are random with std 0.2 (LoHa
0.5) so that a LoRA at strength 1 changes a model visibly. The result lists, per target, the module
prefix written and the scale (`alpha / rank`) the host should apply.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import safetensors.torch
import torch

FORMATS = ("kohya", "kohya_ldm", "locon_tucker", "loha", "lokr", "dora", "comfyui_native", "diffusers_legacy",
           "peft", "peft_dora", "diffusers", "lycoris_prefix")
KOHYA_FAMILY = ("kohya", "kohya_ldm", "locon_tucker", "dora", "lycoris_prefix")
DIFFUSERS_FAMILY = ("peft", "peft_dora", "diffusers", "diffusers_legacy")
_DIFFUSERS_HEADS = {"unet": "unet", "te": "text_encoder", "te2": "text_encoder_2"}
_NATIVE_HEADS = {"te": "text_encoders.clip_l.transformer.", "te2": "text_encoders.clip_g.transformer."}
_LEGACY_LEAF = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out.0": "to_out",
                "q_proj": "to_q", "k_proj": "to_k", "v_proj": "to_v", "out_proj": "to_out"}
_KERNEL = {"linear": None, "conv1x1": 1, "conv3x3": 3}


@dataclass(frozen=True)
class Target:
    """A layer the fixture LoRA changes (see the module docstring)."""

    name: str
    kind: str
    out_features: int
    in_features: int
    ldm_name: str | None = None
    component: str = "unet"
    has_bias: bool = False  # comfyui_native then also writes `.diff_b`


@dataclass
class FixtureLora:
    """What `write_format` wrote: the file, the prefix written per target, and the scale the host should apply."""

    path: Path
    fmt: str
    prefixes: dict[Target, str] = field(default_factory=dict)  # targets the format could not hold are absent
    scales: dict[Target, float] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)


def as_target(target: Target | Sequence[object]) -> Target:
    """Accept a Target or a tuple (name, kind, out, in[, ldm_name[, component]])."""
    if isinstance(target, Target):
        return target
    return Target(*target)  # type: ignore[arg-type]


def default_generator(seed: int = 0) -> torch.Generator:
    """A CPU generator seeded for reproducible fixture values."""
    return torch.Generator().manual_seed(seed)


def _rand(shape: Sequence[int], gen: torch.Generator, std: float = 0.2) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=gen) * std


def _module_name(target: Target, fmt: str, name_for: Callable[[Target], str] | None) -> str:
    if name_for is not None:
        return name_for(target)
    if fmt in ("kohya_ldm", "comfyui_native") and target.component == "unet":
        if target.ldm_name is None:
            raise ValueError(f"format {fmt} needs ldm_name for UNet target {target.name!r} (or pass name_for)")
        return target.ldm_name
    return target.name


def _kohya_head(target: Target, fmt: str, has_te2: bool) -> str:
    if target.component == "unet":
        return "lycoris_" if fmt == "lycoris_prefix" else "lora_unet_"
    if target.component == "te2":
        return "lora_te2_"
    return "lora_te1_" if has_te2 else "lora_te_"


def _lora_pair(target: Target, rank: int, gen: torch.Generator, flat_conv: bool = False,
               tucker: bool = False) -> dict[str, torch.Tensor]:
    """down [r, in(,k,k)], up [out, r(,1,1)]; Tucker: down [r,in,1,1] + mid [r,r,k,k]; flat: down [r, in*k*k]."""
    k = _KERNEL[target.kind]
    out, inp = target.out_features, target.in_features
    if k is None:
        return {"down": _rand((rank, inp), gen), "up": _rand((out, rank), gen)}
    if flat_conv:
        return {"down": _rand((rank, inp * k * k), gen), "up": _rand((out, rank), gen)}
    if tucker and k > 1:
        return {"down": _rand((rank, inp, 1, 1), gen), "mid": _rand((rank, rank, k, k), gen),
                "up": _rand((out, rank, 1, 1), gen)}
    return {"down": _rand((rank, inp, k, k), gen), "up": _rand((out, rank, 1, 1), gen)}


def _split_factor(n: int) -> tuple[int, int]:
    """n = a * b with a the largest divisor <= sqrt(n) (LoKr's small left factor)."""
    a = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    return a, n // a


def _loha(target: Target, rank: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    k = _KERNEL[target.kind] or 1
    cols = target.in_features * k * k
    return {"hada_w1_a": _rand((target.out_features, rank), gen, 0.5), "hada_w1_b": _rand((rank, cols), gen, 0.5),
            "hada_w2_a": _rand((target.out_features, rank), gen, 0.5), "hada_w2_b": _rand((rank, cols), gen, 0.5)}


def _lokr(target: Target, rank: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    k = _KERNEL[target.kind] or 1
    a1, a2 = _split_factor(target.out_features)
    b1, b2 = _split_factor(target.in_features)
    return {"lokr_w1": _rand((a1, b1), gen, 1.0), "lokr_w2_a": _rand((a2, rank), gen),
            "lokr_w2_b": _rand((rank, b2 * k * k), gen)}


_KOHYA_SUFFIX = {"down": ".lora_down.weight", "up": ".lora_up.weight", "mid": ".lora_mid.weight"}
_STYLE_SUFFIX = {
    "peft": (".lora_A.weight", ".lora_B.weight"), "peft_dora": (".lora_A.weight", ".lora_B.weight"),
    "diffusers": (".lora.down.weight", ".lora.up.weight"), "diffusers_te": (".lora_linear_layer.down.weight",
                                                                           ".lora_linear_layer.up.weight"),
    "diffusers_legacy": ("_lora.down.weight", "_lora.up.weight"),
}


def _diffusers_prefix(target: Target, fmt: str, name: str) -> str | None:
    head = _DIFFUSERS_HEADS[target.component]
    if fmt != "diffusers_legacy":
        return f"{head}.{name}"
    match = re.match(r"^(.*)\.(to_q|to_k|to_v|to_out\.0|q_proj|k_proj|v_proj|out_proj)$", name)
    if match is None:
        return None  # the legacy format only ever held attention projections
    processor = ".processor" if target.component == "unet" else ""
    return f"{head}.{match.group(1)}{processor}.{_LEGACY_LEAF[match.group(2)]}"


def _write_one(fmt: str, target: Target, name: str, rank: int, alpha: float | None, gen: torch.Generator,
               has_te2: bool) -> tuple[str, dict[str, torch.Tensor], float] | None:
    """(prefix, key -> tensor, expected scale) of one target, or None when the format cannot hold it."""
    alpha_value = torch.tensor(float(alpha if alpha is not None else rank))
    scale = (alpha / rank) if alpha is not None else 1.0
    if target.kind == "norm":
        if fmt != "comfyui_native":
            return None
        prefix = "diffusion_model." + name
        c = target.out_features
        return prefix, {f"{prefix}.diff": _rand((c,), gen), f"{prefix}.diff_b": _rand((c,), gen)}, 1.0
    if fmt in KOHYA_FAMILY or fmt in ("loha", "lokr"):
        prefix = _kohya_head(target, fmt, has_te2) + name.replace(".", "_")
        if fmt == "loha":
            parts = {f"{prefix}.{r}": t for r, t in _loha(target, rank, gen).items()}
        elif fmt == "lokr":
            parts = {f"{prefix}.{r}": t for r, t in _lokr(target, rank, gen).items()}
        else:
            pair = _lora_pair(target, rank, gen, tucker=fmt == "locon_tucker")
            parts = {prefix + _KOHYA_SUFFIX[r]: t for r, t in pair.items()}
        parts[f"{prefix}.alpha"] = alpha_value
        if fmt == "dora":
            ones = [1] * (3 if _KERNEL[target.kind] else 1)
            parts[f"{prefix}.dora_scale"] = (1 + _rand((target.out_features, *ones), gen)).abs()
        return prefix, parts, scale
    if fmt == "comfyui_native":
        prefix = _NATIVE_HEADS.get(target.component, "diffusion_model.") + name
        pair = _lora_pair(target, rank, gen, flat_conv=True)
        parts = {prefix + _KOHYA_SUFFIX[r]: t for r, t in pair.items()}
        parts[f"{prefix}.alpha"] = alpha_value
        if target.has_bias:
            parts[f"{prefix}.diff_b"] = _rand((target.out_features,), gen)
        return prefix, parts, scale
    prefix = _diffusers_prefix(target, fmt, name)
    if prefix is None:
        return None
    style = "diffusers_te" if fmt == "diffusers" and target.component != "unet" else fmt
    down_suffix, up_suffix = _STYLE_SUFFIX[style]
    pair = _lora_pair(target, rank, gen)
    parts = {prefix + down_suffix: pair["down"], prefix + up_suffix: pair["up"]}
    if fmt == "peft_dora":
        parts[f"{prefix}.lora_magnitude_vector"] = (1 + _rand((target.out_features,), gen)).abs()
    return prefix, parts, 1.0 if fmt == "diffusers_legacy" else scale


def _peft_metadata(targets: Iterable[Target], rank: int, alpha: float) -> dict[str, str]:
    config: dict[str, float] = {}
    for component in sorted({_DIFFUSERS_HEADS[t.component] for t in targets}):
        config[f"{component}.r"] = rank
        config[f"{component}.lora_alpha"] = alpha
    return {"lora_adapter_metadata": json.dumps(config, sort_keys=True)}


def write_format(fmt: str, path: str | Path, targets: Iterable[Target | Sequence[object]], rank: int = 4,
                 alpha: float | None = None, gen: torch.Generator | None = None,
                 metadata: dict[str, str] | None = None, name_for: Callable[[Target], str] | None = None,
                 dtype: torch.dtype = torch.float32) -> FixtureLora:
    """Write a LoRA in format `fmt` (one of FORMATS) for `targets`; see the module docstring."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown fixture format {fmt!r}; expected one of {FORMATS}")
    gen = gen if gen is not None else default_generator()
    resolved = [as_target(t) for t in targets]
    has_te2 = any(t.component == "te2" for t in resolved)
    result = FixtureLora(path=Path(path), fmt=fmt)
    for target in resolved:
        written = _write_one(fmt, target, _module_name(target, fmt, name_for), rank, alpha, gen, has_te2)
        if written is None:
            continue
        prefix, parts, scale = written
        result.prefixes[target] = prefix
        result.scales[target] = scale
        result.tensors.update({k: (v if k.endswith(".alpha") else v.to(dtype)) for k, v in parts.items()})
    result.metadata = dict(metadata or {})
    if alpha is not None and fmt in ("peft", "peft_dora", "diffusers"):
        result.metadata.update(_peft_metadata(resolved, rank, alpha))
    _save(result.path, result.tensors, result.metadata)
    return result


def _save(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> None:
    safetensors.torch.save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)


# ---- broken and wrong files ------------------------------------------------------------------------------

SD1_TARGETS = (
    Target("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", "linear", 8, 8,
           "input_blocks.1.1.transformer_blocks.0.attn1.to_q"),
    Target("down_blocks.0.attentions.0.proj_in", "conv1x1", 8, 8, "input_blocks.1.1.proj_in"),
    Target("down_blocks.0.resnets.0.conv1", "conv3x3", 8, 4, "input_blocks.1.0.in_layers.2"),
    Target("text_model.encoder.layers.0.self_attn.q_proj", "linear", 8, 8, component="te"),
)


def write_truncated(path: str | Path, drop_bytes: int = 64) -> Path:
    """A valid kohya LoRA with its last `drop_bytes` bytes cut off (an interrupted download)."""
    fixture = write_format("kohya", path, SD1_TARGETS, rank=2)
    data = fixture.path.read_bytes()
    fixture.path.write_bytes(data[:-drop_bytes])
    return fixture.path


def write_nan(path: str | Path, targets: Iterable[Target | Sequence[object]] = SD1_TARGETS,
              rank: int = 2) -> str:
    """A kohya LoRA whose first lora_up holds a NaN; returns the poisoned key."""
    fixture = write_format("kohya", path, targets, rank=rank, alpha=1.0)
    key = next(k for k in fixture.tensors if k.endswith(".lora_up.weight"))
    fixture.tensors[key].view(-1)[0] = float("nan")
    _save(fixture.path, fixture.tensors, fixture.metadata)
    return key


def write_rank_mismatch(path: str | Path, targets: Iterable[Target | Sequence[object]] = SD1_TARGETS,
                        rank: int = 2) -> str:
    """A kohya LoRA whose first module has lora_up of rank+1; returns that module's prefix."""
    fixture = write_format("kohya", path, targets, rank=rank, alpha=1.0)
    key = next(k for k in fixture.tensors if k.endswith(".lora_up.weight"))
    up = fixture.tensors[key]
    fixture.tensors[key] = torch.ones((up.shape[0], rank + 1, *up.shape[2:]))
    _save(fixture.path, fixture.tensors, fixture.metadata)
    return key.removesuffix(".lora_up.weight")


def write_full_checkpoint(path: str | Path) -> Path:
    """A (tiny) full SD checkpoint: UNet, VAE and text-encoder weights, no LoRA keys."""
    gen = default_generator(1)
    tensors = {
        "model.diffusion_model.input_blocks.0.0.weight": _rand((8, 4, 3, 3), gen),
        "model.diffusion_model.input_blocks.0.0.bias": _rand((8,), gen),
        "model.diffusion_model.out.2.weight": _rand((4, 8, 3, 3), gen),
        "first_stage_model.encoder.conv_in.weight": _rand((8, 3, 3, 3), gen),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": _rand((16, 8), gen),
    }
    _save(Path(path), tensors, {"format": "pt"})
    return Path(path)


def write_html(path: str | Path) -> Path:
    """An HTML error page saved under a .safetensors name (a failed download)."""
    Path(path).write_bytes(b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>Please log in"
                           b" to download this model.</body></html>\n")
    return Path(path)


def write_pickle_pt(path: str | Path) -> Path:
    """A PyTorch pickle (.pt). Only ever written here: LoRA Lab refuses to open such files."""
    torch.save({"lora_unet_x.lora_down.weight": torch.zeros(2, 4)}, str(path))
    return Path(path)


def write_empty(path: str | Path) -> Path:
    """A zero-byte file."""
    Path(path).write_bytes(b"")
    return Path(path)


SDXL_TARGETS = (
    Target("down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k", "linear", 640, 2048,
           "input_blocks.4.1.transformer_blocks.0.attn2.to_k"),
    Target("down_blocks.1.attentions.0.transformer_blocks.1.attn1.to_q", "linear", 640, 640,
           "input_blocks.4.1.transformer_blocks.1.attn1.to_q"),
    Target("text_model.encoder.layers.0.self_attn.q_proj", "linear", 768, 768, component="te"),
    Target("text_model.encoder.layers.0.self_attn.q_proj", "linear", 1280, 1280, component="te2"),
)


def write_sdxl_only(path: str | Path, rank: int = 2, with_metadata: bool = True) -> FixtureLora:
    """A kohya SDXL LoRA (LDM names, lora_te1_/lora_te2_, 2048-wide cross-attention): wrong for SD1 models."""
    metadata = {"ss_base_model_version": "sdxl_base_v1-0"} if with_metadata else None
    return write_format("kohya_ldm", path, SDXL_TARGETS, rank=rank, alpha=1.0, metadata=metadata)
