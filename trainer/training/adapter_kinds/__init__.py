"""The trainable adapter kinds, one file each (lora, loha, lokr, dora) behind `base.TrainableAdapter`, by name."""

from __future__ import annotations

from .base import TrainableAdapter
from .dora import DoraKind
from .loha import LohaKind
from .lokr import LokrKind
from .lora import LoraKind

TRAINABLE_KINDS: dict[str, type[TrainableAdapter]] = {kind.kind: kind for kind in (LoraKind, LohaKind, LokrKind,
                                                                                     DoraKind)}
