"""The key grammar of LoRA files: split a key into module prefix + suffix role, and name the prefix's scheme."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..adapters.registry import KINDS

# Suffix styles: how a file spells the down/up pair (A = down, B = up, stated once here).
STYLE_KOHYA = "kohya"  # .lora_down.weight / .lora_up.weight (kohya, LyCORIS LoCon, ComfyUI native)
STYLE_PEFT = "peft"  # .lora_A.weight / .lora_B.weight
STYLE_PEFT_NAMED = "peft_named"  # .lora_A.default.weight (adapter name left in)
STYLE_MOCHI = "mochi"  # .lora_A / .lora_B (no .weight)
STYLE_DIFFUSERS = "diffusers"  # .lora.down.weight / .lora.up.weight
STYLE_LEGACY = "diffusers_legacy"  # processor.to_q_lora.down.weight (attention processor)
STYLE_TRANSFORMERS = "transformers"  # .lora_linear_layer.down.weight (diffusers text encoder)
STYLE_LYCORIS = "lycoris"  # hada_*, lokr_*, diff, w_norm: each kind's `suffix_roles` (adapters.registry)
STYLE_ANY = "any"  # alpha, dora_scale: shared by every style


@dataclass(frozen=True)
class SuffixRule:
    """A key ending, the role its tensor plays in the module, and the naming style it belongs to."""

    suffix: str
    role: str
    style: str


def _pair(style: str, down: str, up: str, extra: tuple[tuple[str, str], ...] = ()) -> list[SuffixRule]:
    rules = [SuffixRule(down, "down", style), SuffixRule(up, "up", style)]
    return rules + [SuffixRule(s, r, style) for s, r in extra]


_RULES: list[SuffixRule] = [
    *_pair(STYLE_KOHYA, ".lora_down.weight", ".lora_up.weight", ((".lora_mid.weight", "mid"),)),
    *_pair(STYLE_PEFT, ".lora_A.weight", ".lora_B.weight"),
    *_pair(STYLE_PEFT_NAMED, ".lora_A.default.weight", ".lora_B.default.weight"),
    *_pair(STYLE_MOCHI, ".lora_A", ".lora_B"),
    *_pair(STYLE_DIFFUSERS, ".lora.down.weight", ".lora.up.weight"),
    *_pair(STYLE_LEGACY, "_lora.down.weight", "_lora.up.weight"),
    *_pair(STYLE_TRANSFORMERS, ".lora_linear_layer.down.weight", ".lora_linear_layer.up.weight"),
    SuffixRule(".alpha", "alpha", STYLE_ANY),
    SuffixRule(".dora_scale", "dora_scale", STYLE_ANY),
    # PEFT DoRA magnitude (any down/up spelling may sit next to it).
    *(SuffixRule(s, "magnitude", STYLE_ANY) for s in (
        ".lora_magnitude_vector", ".lora_magnitude_vector.weight", ".lora_magnitude_vector.default.weight")),
    # LyCORIS spells each role as `.<role>`; the kinds list theirs, so a new kind brings its keys along.
    *(SuffixRule(f".{r}", r, STYLE_LYCORIS) for kind in KINDS.values() for r in kind.suffix_roles),
]
# Longest first, so `.lora_A.default.weight` wins over `.lora_A` style prefixes of it.
SUFFIX_RULES: tuple[SuffixRule, ...] = tuple(sorted(_RULES, key=lambda r: len(r.suffix), reverse=True))


def split_key(key: str) -> tuple[str, SuffixRule] | None:
    """(module prefix, rule) for a LoRA key, or None when no known suffix ends it."""
    for rule in SUFFIX_RULES:
        if key.endswith(rule.suffix) and len(key) > len(rule.suffix):
            return key[: -len(rule.suffix)], rule
    return None


# Prefix schemes: which model part a module prefix points to and in which naming.
SCHEME_KOHYA = "kohya"  # lora_unet_* / lora_te*_ (names with _ for .)
SCHEME_LYCORIS = "lycoris"  # lycoris_* (SimpleTuner: diffusers names with _)
SCHEME_COMFYUI = "comfyui"  # diffusion_model.* / text_encoders.* (host state-dict names)
SCHEME_DIFFUSERS = "diffusers"  # unet.* / text_encoder.* / text_encoder_2.* / bare diffusers names
SCHEME_OTHER = "other"

_KOHYA_PREFIXES = (("lora_unet_", "unet"), ("lora_te1_", "te1"), ("lora_te2_", "te2"), ("lora_te_", "te"),
                   ("lora_prior_te_", "te"), ("lora_prior_unet_", "unet"))
_DIFFUSERS_PREFIXES = (("unet.", "unet"), ("text_encoder_2.", "te2"), ("text_encoder.", "te"))
_BARE_UNET = re.compile(r"^(down_blocks|mid_block|up_blocks|conv_in|conv_out|conv_norm_out|time_embedding"
                        r"|add_embedding)(\.|$)")
_BARE_TE = re.compile(r"^text_model\.")
PEFT_WRAPPER_PREFIX = "base_model.model."

_KOHYA_LDM_UNET = re.compile(r"^lora_unet_(input_blocks|middle_block|output_blocks|time_embed|label_emb|out)_")
_KOHYA_DIFFUSERS_UNET = re.compile(r"^lora_unet_(down_blocks|mid_block|up_blocks|conv_in|conv_out|conv_norm_out"
                                   r"|time_embedding|add_embedding)(_|$)")


@dataclass(frozen=True)
class PrefixScheme:
    """How a module prefix is named: scheme, model component ('unet','te','te1','te2','other') and layout."""

    scheme: str
    component: str
    layout: str  # "diffusers" | "ldm" | "unknown": which UNet naming the names follow


def classify_prefix(prefix: str) -> PrefixScheme:
    """The naming scheme of one module prefix (see SCHEME_*)."""
    for head, component in _KOHYA_PREFIXES:
        if prefix.startswith(head):
            layout = "unknown"
            if component == "unet":
                layout = ("ldm" if _KOHYA_LDM_UNET.match(prefix)
                          else "diffusers" if _KOHYA_DIFFUSERS_UNET.match(prefix) else "unknown")
            return PrefixScheme(SCHEME_KOHYA, component, layout)
    if prefix.startswith("lycoris_"):
        return PrefixScheme(SCHEME_LYCORIS, "unet", "diffusers")
    if prefix.startswith("diffusion_model."):
        return PrefixScheme(SCHEME_COMFYUI, "unet", "ldm")
    if prefix.startswith("text_encoders."):
        return PrefixScheme(SCHEME_COMFYUI, "te", "unknown")
    bare = prefix.removeprefix(PEFT_WRAPPER_PREFIX)
    for head, component in _DIFFUSERS_PREFIXES:
        if bare.startswith(head):
            return PrefixScheme(SCHEME_DIFFUSERS, component, "diffusers" if component == "unet" else "unknown")
    if _BARE_UNET.match(bare):
        return PrefixScheme(SCHEME_DIFFUSERS, "unet", "diffusers")
    if _BARE_TE.match(bare):
        return PrefixScheme(SCHEME_DIFFUSERS, "te", "unknown")
    return PrefixScheme(SCHEME_OTHER, "other", "unknown")


# Weight-like keys of full models: used to tell a checkpoint given by mistake from a LoRA.
_CHECKPOINT_SUFFIXES = (".weight", ".bias", ".running_mean", ".running_var", ".position_ids", ".scale")
_CHECKPOINT_HEADS = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner.",
                     "diffusion_model.", "model_ema.", "text_model.", "down_blocks.", "transformer.",
                     "double_blocks.", "single_blocks.", "encoder.", "decoder.")


def looks_like_checkpoint_key(key: str) -> bool:
    """True for keys of a full model's state dict (a weight with no LoRA suffix)."""
    return key.endswith(_CHECKPOINT_SUFFIXES) and split_key(key) is None


def checkpoint_kind(keys: list[str]) -> str:
    """A user-facing name for the kind of full model these state-dict keys come from."""
    if any(k.startswith("model.diffusion_model.") for k in keys):
        return "a full Stable Diffusion checkpoint (UNet + VAE + text encoder)"
    if any(k.startswith(("first_stage_model.", "encoder.down", "decoder.up")) for k in keys):
        return "a VAE"
    if any(k.startswith(("diffusion_model.", "input_blocks.", "down_blocks.", "double_blocks.")) for k in keys):
        return "a diffusion model (UNet) file"
    if any(k.startswith(("text_model.", "cond_stage_model.", "conditioner.")) for k in keys):
        return "a text encoder"
    if any(k.startswith(_CHECKPOINT_HEADS) for k in keys):
        return "a full model file"
    return "a model's full weights"
