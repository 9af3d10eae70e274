"""A stack of LoRAs: the rows of the Stack LoRAs node and the LORA_STACK list other packs pass around."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

from ..errors import StackRowsError

ROW_KEYS = {"lora", "on", "strength_model", "strength_clip", "strength"}


@dataclass(frozen=True)
class StackEntry:
    """One LoRA of a stack; `(name, strength_model, strength_clip)` is the LORA_STACK tuple."""
    name: str
    strength_model: float
    strength_clip: float
    on: bool = True

    def as_tuple(self) -> tuple[str, float, float]:
        return (self.name, self.strength_model, self.strength_clip)


def _number(row_no: int, key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise StackRowsError(f"LoRA stack row {row_no}: '{key}' must be a finite number, got {value!r}")
    return float(value)


def parse_rows(text: str) -> list[StackEntry]:
    """Rows from the node's JSON text: a list of {"lora", "on", "strength_model", "strength_clip"} objects.

    "strength" may stand for both strengths; "on" defaults to true, "strength_clip" to "strength_model".
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
        entries.append(StackEntry(name, strength_model, strength_clip, on))
    return entries


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
        entries.append(StackEntry(item[0], _number(i, "strength_model", item[1]), _number(i, "strength_clip", item[2])))
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
