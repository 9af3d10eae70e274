"""Which layers of a model a LoRA trains: the `targets` presets (attention / + feed-forward / + conv) by layer name.

Layers a LoRA trains: `nn.Linear`, `nn.Conv2d` (groups = 1), and linear layers of other types (a host's
quantized linear layers) that declare `in_features` / `out_features` and hold a weight of shape
[out_features, in_features]. Any other layer type with a weight matrix where a target sits is refused by
`select_targets`, naming its type, rather than silently left out.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ..errors import ConfigError, LoraTargetError

# Layer-name patterns per target kind (matched with re.search against the full module name).
# Attention projections: SD1/SD2/SDXL UNet (LDM and diffusers names), CLIP text encoders (HF layout),
# DiT-family transformers (MMDiT `attn.qkv/proj`, Flux `img_attn`/`txt_attn`, diffusers `attn.to_*`).
ATTENTION_PATTERNS: tuple[str, ...] = (
    r"(^|\.)attn[12]?\.(to_q|to_k|to_v|to_out\.0)$",
    r"(^|\.)attn\.(add_q_proj|add_k_proj|add_v_proj|to_add_out)$",
    r"(^|\.)self_attn\.(q_proj|k_proj|v_proj|out_proj)$",
    r"(^|\.)(attn|attn2|img_attn|txt_attn)\.(qkv|proj)$",
    r"(^|\.)single_blocks\.\d+\.(linear1|linear2)$",  # Flux single blocks: fused qkv + MLP in, attn + MLP out
)
# Feed-forward and the transformer block's in/out projections (Linear in SD2/SDXL, 1x1 Conv2d in SD1).
FEED_FORWARD_PATTERNS: tuple[str, ...] = (
    r"(^|\.)ff\.net\.(0\.proj|2)$",
    r"(^|\.)mlp\.(fc1|fc2)$",
    r"(^|\.)(mlp|img_mlp|txt_mlp)\.(0|2)$",
    r"(^|\.)(proj_in|proj_out)$",
)
# LoCon: every Conv2d (3x3 and 1x1) plus the res blocks' time-embedding Linear, except the model's first
# and last convolutions (kohya's targets: ResnetBlock2D, Downsample2D, Upsample2D).
CONV_EXCLUDED_PATTERNS: tuple[str, ...] = (
    r"(^|\.)(conv_in|conv_out)$",
    r"(^|\.)input_blocks\.0\.0$",
    r"(^|\.)out\.2$",
)
RES_BLOCK_LINEAR_PATTERNS: tuple[str, ...] = (r"(^|\.)(emb_layers\.1|time_emb_proj)$",)
# Timestep / pooled-text embedders of DiT models: MLPs by name, but not trained (as kohya leaves them).
EMBEDDER_PATTERNS: tuple[str, ...] = (r"(^|\.)(t_embedder|y_embedder)\.",)


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(re.search(p, name) for p in patterns)


def is_linear_layer(module: nn.Module) -> bool:
    """nn.Linear, or another linear layer type (e.g. a host's quantized one) with in/out features and a
    [out_features, in_features] weight: a LoRA hooks onto its output whatever computes it."""
    if isinstance(module, nn.Linear):
        return True
    in_features, out_features = getattr(module, "in_features", None), getattr(module, "out_features", None)
    weight = getattr(module, "weight", None)
    return (isinstance(in_features, int) and isinstance(out_features, int) and isinstance(weight, torch.Tensor)
            and tuple(weight.shape) == (out_features, in_features))


def _is_conv_layer(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups == 1


def _unsupported_layer(name: str, module: nn.Module, targets_kind: str) -> bool:
    """A layer with a weight matrix or kernel where a LoRA of `targets_kind` would train, of a type it cannot
    train through (not Linear-like, not a torch convolution)."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim < 2 or is_linear_layer(module):
        return False
    if isinstance(module, nn.modules.conv._ConvNd):
        return False  # grouped, 1-D, 3-D and transposed convolutions: not LoRA targets here
    if _matches(name, ATTENTION_PATTERNS) or (targets_kind != "attention" and _matches(name, FEED_FORWARD_PATTERNS)):
        return True
    return (targets_kind == "attention_ff_conv" and weight.ndim == 4
            and not _matches(name, CONV_EXCLUDED_PATTERNS))


def select_targets(model: nn.Module, targets_kind: str) -> list[str]:
    """Names of the Linear/Conv2d modules of `model` that a LoRA of `targets_kind` trains, in model order.

    Raises LoraTargetError, before anything is attached, when a layer in a target position is of a type the
    LoRA cannot train through (its output would come out unchanged, or wrong).
    """
    kinds = ("attention", "attention_ff", "attention_ff_conv")
    if targets_kind not in kinds:
        raise ConfigError(f"targets = {targets_kind!r} is not allowed; expected one of {', '.join(kinds)}.")
    selected = []
    for name, module in model.named_modules():
        if not name or _matches(name, EMBEDDER_PATTERNS):
            continue
        is_linear = is_linear_layer(module)
        is_conv = _is_conv_layer(module)
        if not (is_linear or is_conv):
            if _unsupported_layer(name, module, targets_kind):
                kind = type(module)
                raise LoraTargetError(
                    f"layer '{name}' is a {kind.__module__}.{kind.__qualname__}, a layer type LoRA Lab cannot "
                    "train a LoRA on (it trains Linear and Conv2d layers, and linear layers that declare "
                    "in_features/out_features with a matching weight). Load the model with another weight "
                    "dtype (e.g. weight_dtype 'default'), or choose targets that leave this layer out.")
            continue
        if _matches(name, ATTENTION_PATTERNS) and is_linear:
            selected.append(name)
        elif targets_kind != "attention" and _matches(name, FEED_FORWARD_PATTERNS):
            selected.append(name)
        elif targets_kind == "attention_ff_conv" and (
                (is_conv and not _matches(name, CONV_EXCLUDED_PATTERNS))
                or (is_linear and _matches(name, RES_BLOCK_LINEAR_PATTERNS))):
            selected.append(name)
    return selected
