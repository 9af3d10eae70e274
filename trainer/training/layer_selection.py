"""Which layers of a model a LoRA trains: a `targets` preset chosen by layer name, widened by include_layers and
narrowed by exclude_layers.

Layers a LoRA trains: `nn.Linear`, `nn.Conv2d` (groups = 1), and linear layers of other types (a host's
quantized linear layers) that declare `in_features` / `out_features` and hold a weight of shape
[out_features, in_features]. Any other layer type with a weight matrix where a target sits (by preset or by an
include pattern) is refused, naming its type, rather than silently left out; excluding it is one way round.
Convolutions of other kinds (1-D, 3-D such as Wan's patch embedding, grouped, transposed) where a target would
sit are left out and named in a warning (`left_out_layers`); an include pattern that matches only such layers is
refused.

include_layers / exclude_layers are comma-separated regular expressions searched anywhere in the layer names
(`re.search`), so a plain word acts as ai-toolkit's only_if_contains / ignore_if_contains and OneTrainer's
layer_filter, and `^...` anchors as sd-scripts' include_patterns / exclude_patterns (re.match) do. Names are the
host model's own, e.g. `input_blocks.4.1.transformer_blocks.0.attn2.to_k` in a ComfyUI SD1 UNet.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import ConfigError, LoraTargetError

if TYPE_CHECKING:
    from .config import LoraShape

logger = logging.getLogger(__name__)

# Layer-name patterns per target kind (matched with re.search against the full module name).
# Attention projections: SD1/SD2/SDXL UNet (LDM and diffusers names), CLIP text encoders (HF layout),
# DiT-family transformers (MMDiT `attn.qkv/proj`, Flux `img_attn`/`txt_attn`, diffusers `attn.to_*`), Wan's
# `self_attn` / `cross_attn` q, k, v, o (and the image-to-video k_img / v_img).
ATTENTION_PATTERNS: tuple[str, ...] = (
    r"(^|\.)attn[12]?\.(to_q|to_k|to_v|to_out\.0)$",
    r"(^|\.)attn\.(add_q_proj|add_k_proj|add_v_proj|to_add_out)$",
    r"(^|\.)self_attn\.(q_proj|k_proj|v_proj|out_proj)$",
    r"(^|\.)(attn|attn2|img_attn|txt_attn)\.(qkv|proj)$",
    r"(^|\.)single_blocks\.\d+\.(linear1|linear2)$",  # Flux single blocks: fused qkv + MLP in, attn + MLP out
    r"(^|\.)(self_attn|cross_attn)\.(q|k|v|o|k_img|v_img)$",
)
# Feed-forward and the transformer block's in/out projections (Linear in SD2/SDXL, 1x1 Conv2d in SD1).
FEED_FORWARD_PATTERNS: tuple[str, ...] = (
    r"(^|\.)ff\.net\.(0\.proj|2)$",
    r"(^|\.)mlp\.(fc1|fc2)$",
    r"(^|\.)(mlp|img_mlp|txt_mlp|ffn)\.(0|2)$",
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


def _matches(name: str, patterns: Sequence[str | re.Pattern[str]]) -> bool:
    """Whether any pattern (text or compiled) is found in the layer name."""
    return any(re.search(p, name) for p in patterns)


# A comma separates two patterns, except inside a {m,n} repeat.
_PATTERN_SEPARATOR = re.compile(r",(?![^{]*\})")


def layer_patterns(field_name: str, text: str) -> tuple[re.Pattern[str], ...]:
    """The compiled regular expressions of an include_layers / exclude_layers text (empty text: none).

    Raises ConfigError naming the field and the pattern that is not a valid regular expression.
    """
    patterns = []
    for piece in _PATTERN_SEPARATOR.split(text):
        source = piece.strip()
        if not source:
            continue
        try:
            patterns.append(re.compile(source))
        except re.error as e:
            raise ConfigError(f"{field_name} = '{text}' is not allowed: '{source}' is not a valid regular "
                              f"expression ({e}); expected comma-separated regular expressions searched in the "
                              r"layer names, e.g. 'attn2\.to_(k|v)$, output_blocks\.[3-5]\.'.") from e
    return tuple(patterns)


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


def _is_trainable_layer(module: nn.Module) -> bool:
    return is_linear_layer(module) or _is_conv_layer(module)


def _is_untrainable_conv(module: nn.Module) -> bool:
    """A torch convolution a LoRA here cannot train: 1-D, 3-D, grouped or transposed."""
    return isinstance(module, nn.modules.conv._ConvNd) and not _is_conv_layer(module)


def _conv_kind(module: nn.Module) -> str:
    groups = f" with groups={module.groups}" if getattr(module, "groups", 1) != 1 else ""
    return f"{type(module).__name__}{groups}"


def _unsupported_layer(module: nn.Module) -> bool:
    """A layer with a weight matrix or kernel of a type a LoRA cannot train through (not Linear-like, not a torch
    convolution: grouped, 1-D, 3-D and transposed ones are simply not LoRA targets here)."""
    weight = getattr(module, "weight", None)
    return (isinstance(weight, torch.Tensor) and weight.ndim >= 2 and not is_linear_layer(module)
            and not isinstance(module, nn.modules.conv._ConvNd))


def _in_preset(name: str, module: nn.Module, targets_kind: str) -> bool:
    """Whether the `targets_kind` preset puts a LoRA on this layer (any layer type: the caller checks it)."""
    if _matches(name, EMBEDDER_PATTERNS):
        return False
    if _matches(name, ATTENTION_PATTERNS) and (is_linear_layer(module) or _unsupported_layer(module)):
        return True
    if targets_kind != "attention" and _matches(name, FEED_FORWARD_PATTERNS):
        return True
    if targets_kind != "attention_ff_conv":
        return False
    weight = getattr(module, "weight", None)
    is_kernel = _is_conv_layer(module) or (_unsupported_layer(module) and isinstance(weight, torch.Tensor)
                                           and weight.ndim == 4)
    return ((is_kernel and not _matches(name, CONV_EXCLUDED_PATTERNS))
            or (is_linear_layer(module) and _matches(name, RES_BLOCK_LINEAR_PATTERNS)))


def _candidates(model: nn.Module, targets_kind: str,
                include: Sequence[re.Pattern[str]]) -> Iterator[tuple[str, nn.Module]]:
    """(name, layer) of each layer the preset or an include pattern selects, before exclusions, in model order:
    trainable layers, and layers of an unsupported type in those positions."""
    for name, module in model.named_modules():
        if name and (_is_trainable_layer(module) or _unsupported_layer(module)) and (
                _matches(name, include) or _in_preset(name, module, targets_kind)):
            yield name, module


def left_out_layers(model: nn.Module, targets_kind: str, include: Sequence[re.Pattern[str]] = (),
                    exclude: Sequence[re.Pattern[str]] = ()) -> dict[str, str]:
    """Layer name -> its type, for the convolutions LoRA Lab cannot train (1-D, 3-D, grouped, transposed) that the
    `attention_ff_conv` preset or an include pattern would otherwise select (not the model's first and last
    convolutions, which that preset leaves out by design); an exclude pattern leaves a layer out silently."""
    return {name: _conv_kind(module) for name, module in model.named_modules()
            if name and _is_untrainable_conv(module) and not _matches(name, exclude) and (
                _matches(name, include) or (targets_kind == "attention_ff_conv"
                                            and not _matches(name, CONV_EXCLUDED_PATTERNS + EMBEDDER_PATTERNS)))}


def select_targets(model: nn.Module, targets_kind: str, include: Sequence[re.Pattern[str]] = (),
                   exclude: Sequence[re.Pattern[str]] = ()) -> list[str]:
    """Names of the Linear/Conv2d modules of `model` that a LoRA of `targets_kind` trains, in model order: the
    preset's, plus those an `include` pattern matches, less those an `exclude` pattern matches.

    Raises LoraTargetError, before anything is attached, when a selected layer is of a type the LoRA cannot
    train through (its output would come out unchanged, or wrong).
    """
    kinds = ("attention", "attention_ff", "attention_ff_conv")
    if targets_kind not in kinds:
        raise ConfigError(f"targets = {targets_kind!r} is not allowed; expected one of {', '.join(kinds)}.")
    selected = []
    for name, module in _candidates(model, targets_kind, include):
        if _matches(name, exclude):
            continue
        if not _is_trainable_layer(module):
            kind = type(module)
            raise LoraTargetError(
                f"layer '{name}' is a {kind.__module__}.{kind.__qualname__}, a layer type LoRA Lab cannot "
                "train a LoRA on (it trains Linear and Conv2d layers, and linear layers that declare "
                "in_features/out_features with a matching weight). Load the model with another weight "
                "dtype (e.g. weight_dtype 'default'), or choose targets or exclude_layers that leave this layer out.")
        selected.append(name)
    return selected


def _name_examples(models: Mapping[str, nn.Module]) -> str:
    names = [name for model in models.values() for name, module in model.named_modules()
             if name and _is_trainable_layer(module)]
    picked = names[::max(1, len(names) // 3)][:3]
    return ", ".join(f"'{name}'" for name in picked)


def select_layers(models: Mapping[str, nn.Module], shape: LoraShape) -> dict[str, list[str]]:
    """select_targets of each model (by role, e.g. {"unet": ..., "text_encoder": ...}) with the shape's targets,
    include_layers and exclude_layers.

    Raises ConfigError for an include pattern that matches no Linear/Conv2d layer of any of the models, an exclude
    pattern that leaves out no layer, and patterns that leave nothing to train; a pattern meant for one model
    need not match in the other.
    """
    include = layer_patterns("include_layers", shape.include_layers)
    exclude = layer_patterns("exclude_layers", shape.exclude_layers)
    where = " or ".join(models)
    for pattern in include:
        if not any(pattern.search(name) for model in models.values() for name, module in model.named_modules()
                   if name and (_is_trainable_layer(module) or _unsupported_layer(module))):
            convs = {name: _conv_kind(module) for model in models.values() for name, module in model.named_modules()
                     if name and _is_untrainable_conv(module) and pattern.search(name)}
            if convs:
                raise ConfigError(f"include_layers = '{shape.include_layers}' is not allowed: '{pattern.pattern}' "
                                  f"matches no Linear or Conv2d layer of the {where}, only layers of a type LoRA "
                                  "Lab cannot train a LoRA on ("
                                  + ", ".join(f"'{n}', a {kind}" for n, kind in list(convs.items())[:3])
                                  + "); remove that pattern.")
            raise ConfigError(f"include_layers = '{shape.include_layers}' is not allowed: '{pattern.pattern}' "
                              f"matches no Linear or Conv2d layer of the {where}; expected patterns searched in "
                              f"their layer names, which look like {_name_examples(models)}.")
    candidates = [name for model in models.values() for name, _ in _candidates(model, shape.targets, include)]
    for pattern in exclude:
        if not any(pattern.search(name) for name in candidates):
            raise ConfigError(f"exclude_layers = '{shape.exclude_layers}' is not allowed: '{pattern.pattern}' "
                              f"leaves out none of the {len(candidates)} layers that targets {shape.targets!r}"
                              + (" and include_layers" if include else "") + " select; expected patterns "
                              f"searched in their names, which look like {_name_examples(models)}.")
    selected = {role: select_targets(model, shape.targets, include, exclude) for role, model in models.items()}
    left_out = {name: kind for model in models.values()
                for name, kind in left_out_layers(model, shape.targets, include, exclude).items()}
    if left_out:
        logger.warning("targets %r: %d layer(s) left out, a LoRA cannot be trained on their type (LoRA Lab trains "
                       "Linear and Conv2d layers): %s", shape.targets, len(left_out),
                       ", ".join(f"{name} ({kind})" for name, kind in left_out.items()))
    if exclude and not any(selected.values()):
        raise ConfigError(f"exclude_layers = '{shape.exclude_layers}' is not allowed: it leaves out all "
                          f"{len(candidates)} layers that targets {shape.targets!r} selects, so nothing would "
                          "train; expected patterns that leave some layers in.")
    return selected
