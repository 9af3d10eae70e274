"""A stack of LoRAs: the rows of the Stack LoRAs node and the LORA_STACK list other packs pass around."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

from ..errors import BlockWeightsError, StackRowsError
from .block_weights import parse_block_weights

ROW_KEYS = {"lora", "on", "strength_model", "strength_clip", "strength", "block_weights"}


class StackItem(tuple):
    """A LORA_STACK item: the plain `(name, strength_model, strength_clip)` other packs read, which also carries
    this pack's per-block strengths (`block_weights`, block weight text) to a later Stack LoRAs node."""

    block_weights: str

    def __new__(cls, name: str, strength_model: float, strength_clip: float, block_weights: str = ""):
        item = super().__new__(cls, (name, strength_model, strength_clip))
        item.block_weights = block_weights
        return item


@dataclass(frozen=True)
class StackEntry:
    """One LoRA of a stack; `(name, strength_model, strength_clip)` is the LORA_STACK tuple.

    `block_weights` is per-block strength text (trainer/lora/block_weights.py); empty = every block at 1.
    """
    name: str
    strength_model: float
    strength_clip: float
    on: bool = True
    block_weights: str = ""

    def as_tuple(self) -> tuple[str, float, float]:
        return StackItem(self.name, self.strength_model, self.strength_clip, self.block_weights)


def _number(row_no: int, key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise StackRowsError(f"LoRA stack row {row_no}: '{key}' must be a finite number, got {value!r}")
    return float(value)


def parse_rows(text: str) -> list[StackEntry]:
    """Rows from the node's JSON text: a list of {"lora", "on", "strength_model", "strength_clip"} objects.

    "strength" may stand for both strengths; "on" defaults to true, "strength_clip" to "strength_model";
    an optional "block_weights" string gives per-block strengths (checked here, applied by the node).
    """
    if not text or not text.strip():
        return []
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as e:
        raise StackRowsError(f"LoRA stack rows are not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); "
                             'expected e.g. [{"lora": "style.safetensors", "on": true, "strength_model": 0.8, '
                             '"strength_clip": 0.8}]') from e
    if not isinstance(rows, list):
        raise StackRowsError(f"LoRA stack rows must be a JSON list of objects, got {type(rows).__name__}")
    entries = []
    for row_no, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise StackRowsError(f"LoRA stack row {row_no} must be an object, got {row!r}")
        unknown = set(row) - ROW_KEYS
        if unknown:
            raise StackRowsError(f"LoRA stack row {row_no}: unknown field(s) {sorted(unknown)}; "
                                 f"allowed: {sorted(ROW_KEYS)}")
        name = row.get("lora")
        if not isinstance(name, str) or not name:
            raise StackRowsError(f"LoRA stack row {row_no}: 'lora' must name a file, got {name!r}")
        on = row.get("on", True)
        if not isinstance(on, bool):
            raise StackRowsError(f"LoRA stack row {row_no}: 'on' must be true or false, got {on!r}")
        both = _number(row_no, "strength", row["strength"]) if "strength" in row else 1.0
        strength_model = _number(row_no, "strength_model", row.get("strength_model", both))
        strength_clip = _number(row_no, "strength_clip",
                                row.get("strength_clip", strength_model if "strength" not in row else both))
        entries.append(StackEntry(name, strength_model, strength_clip, on, _block_weights(row_no, row)))
    return entries


def _block_weights(row_no: int, row: dict) -> str:
    text = row.get("block_weights", "")
    if text is None:
        return ""
    if not isinstance(text, str):
        raise StackRowsError(f"LoRA stack row {row_no}: 'block_weights' must be text such as \"INS\" or "
                             f"\"1,0,0,0,1,1,1,1,1,1,1,1,0,0,0,0,0\", got {text!r}")
    try:
        parse_block_weights(text)
    except BlockWeightsError as e:
        raise StackRowsError(f"LoRA stack row {row_no}: {e}") from e
    return text


def entries_from_lora_stack(stack: object) -> list[StackEntry]:
    """Entries from an incoming LORA_STACK: a list of (name, strength_model, strength_clip) tuples."""
    if stack is None:
        return []
    if not isinstance(stack, (list, tuple)):
        raise StackRowsError("LORA_STACK input must be a list of (name, strength_model, strength_clip), "
                             f"got {type(stack).__name__}")
    entries = []
    for i, item in enumerate(stack, start=1):
        if not isinstance(item, (list, tuple)) or len(item) != 3 or not isinstance(item[0], str):
            raise StackRowsError(f"LORA_STACK item {i} must be (name, strength_model, strength_clip), got {item!r}")
        entries.append(StackEntry(item[0], _number(i, "strength_model", item[1]), _number(i, "strength_clip", item[2]),
                                  block_weights=getattr(item, "block_weights", "")))
    return entries


def join_trigger_words(groups: list[list[str]]) -> str:
    """Trigger words of several LoRAs, comma-joined in order, each once (case-insensitive)."""
    seen: set[str] = set()
    words = []
    for group in groups:
        for word in group:
            key = word.strip().lower()
            if key and key not in seen:
                seen.add(key)
                words.append(word.strip())
    return ", ".join(words)
