"""What a tool reads: source LoRAs with strengths, grouped by layer into contributions the host would apply.

Each module is taken as the host sees it (`lora.host_keys`: kohya names, PEFT alpha made explicit), so the
merged file equals the stack the host would apply: the contribution of a module is `strength * scale * delta`,
with the model strength for diffusion-model layers and the clip strength for text-encoder layers. A DoRA module
is gathered as it is; its change needs the model's weights and is formed later, layer by layer (`dora_base`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from ..adapters.delta import module_delta_shape, module_scale
from ..adapters.dora import is_dora
from ..adapters.lora import KIND_LORA
from ..adapters.registry import module_kind
from ..lora.file import LoraFile
from ..lora.host_keys import entry_roles, host_modules

# Host prefixes of text-encoder layers (kohya, diffusers, ComfyUI native): these take the clip strength.
TEXT_ENCODER_PREFIXES = ("lora_te", "text_encoder", "text_encoders.", "lora_prior_te")
BIAS_ROLES = ("diff_b", "b_norm")
HASH_CHUNK = 1 << 22


@dataclass(frozen=True)
class Source:
    """One input LoRA: the parsed file, its strengths, and the sha256 of its file when known."""

    lora: LoraFile
    strength_model: float = 1.0
    strength_clip: float = 1.0
    sha256: str | None = None

    @property
    def name(self) -> str:
        return self.lora.source_name


@dataclass(frozen=True)
class Contribution:
    """One module of one source, for one layer: its tensors by role and the factor it is applied with."""

    source: str
    kind: str
    roles: dict[str, torch.Tensor]
    coefficient: float  # strength * alpha / rank: the factor on the unscaled delta
    strength: float  # the strength alone (bias deltas have no alpha scale)
    entries: Mapping[str, torch.Tensor] = field(default_factory=dict)  # the module's host keys -> tensors

    @property
    def is_dora(self) -> bool:
        """True for a module with a DoRA magnitude: its change depends on the model's weight (`dora_base`)."""
        return is_dora(self.roles)

    @property
    def delta_shape(self) -> tuple[int, ...] | None:
        return module_delta_shape(self.roles)

    @property
    def is_factored(self) -> bool:
        """True for LoRA/LoCon modules, whose delta is a product up @ down that concat can join (not a DoRA)."""
        return self.kind == KIND_LORA and not self.is_dora


def is_text_encoder(prefix: str) -> bool:
    """Whether a host prefix names a text-encoder layer (clip strength) rather than a diffusion-model one."""
    return prefix.startswith(TEXT_ENCODER_PREFIXES)


def gather_layers(sources: list[Source]) -> dict[str, list[Contribution]]:
    """Host prefix -> the contributions of every source to that layer, in source order (first seen first).

    Modules at strength 0 are left out. DoRA modules are kept as they are (`Contribution.is_dora`): their change
    depends on the model's own weights, so `dora_base` checks them and forms it one layer at a time.
    """
    layers: dict[str, list[Contribution]] = {}
    for source in sources:
        for prefix, entries in host_modules(source.lora).items():
            roles = entry_roles(entries)
            strength = source.strength_clip if is_text_encoder(prefix) else source.strength_model
            if strength == 0:
                continue
            kind = module_kind(roles)
            layers.setdefault(prefix, []).append(Contribution(
                source=source.name, kind=kind, roles=roles, coefficient=strength * module_scale(roles),
                strength=strength, entries=entries))
    return layers


def product_factors(c: Contribution) -> tuple[torch.Tensor, torch.Tensor]:
    """(up [out, r], down [r, in*kh*kw]) fp32 with the coefficient folded in, so that up @ down is the change.

    The coefficient's root goes into both halves (its sign into up), keeping them of one scale; a LoCon Tucker
    `mid` is folded into down.
    """
    down = c.roles["down"].float().flatten(1)
    if "mid" in c.roles:
        down = torch.einsum("mdhw,di->mihw", c.roles["mid"].float(), down).flatten(1)
    root = abs(c.coefficient) ** 0.5
    sign = -1.0 if c.coefficient < 0 else 1.0
    return c.roles["up"].float().flatten(1) * (sign * root), down * root


def bias_delta(c: Contribution) -> torch.Tensor | None:
    """The strength-scaled bias change (`diff_b` / `b_norm`), fp32, or None."""
    for role in BIAS_ROLES:
        if role in c.roles:
            return c.roles[role].float() * c.strength
    return None


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 of a whole file, hex (read in chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
