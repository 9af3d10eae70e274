"""Named stack presets: the rows of a Stack LoRAs node saved under a name, kept in one JSON file in a folder.

The file (`stack_presets.json`) holds `{"version": 1, "presets": {name: [row, ...]}}`, rows in the node's
own format (trainer/lora/stack.py). A name is only ever a key in that file, never part of a path, and it
is checked anyway: letters, digits, space, `_ . + -`, at most 64 characters, starting with a letter or a
digit. A file that cannot be read is reported and never overwritten.
"""

from __future__ import annotations

import json
import os
import threading
import unicodedata
from typing import Any

from ..errors import StackPresetError, StackPresetFileError, StackRowsError
from ..json_io import write_json_atomic
from .stack import StackEntry, parse_rows

FILE_NAME = "stack_presets.json"
VERSION = 1
MAX_NAME = 64
MAX_PRESETS = 200
MAX_ROWS = 64
NAME_PUNCTUATION = frozenset(" _.+-")
NAME_RULE = (f"a preset name has 1 to {MAX_NAME} letters, digits, spaces or _ . + -, "
             "and starts with a letter or a digit")


def name_problem(name: object) -> str | None:
    """Why `name` cannot name a preset (in the user's terms), or None when it can."""
    if not isinstance(name, str) or not name:
        return NAME_RULE
    if len(name) > MAX_NAME:
        return f"{NAME_RULE}; this one has {len(name)} characters"
    if not (name[0].isalpha() or name[0].isdigit()):
        return f"{NAME_RULE}; this one starts with {name[0]!r}"
    bad = sorted({ch for ch in name if not (ch.isalpha() or ch.isdigit() or ch in NAME_PUNCTUATION)})
    if bad:
        return f"{NAME_RULE}; {', '.join(repr(ch) for ch in bad[:5])} cannot be used"
    if name != name.rstrip():
        return f"{NAME_RULE}; it cannot end with a space"
    return None


def check_name(name: object) -> str:
    """The preset name in NFC form (so é typed two ways is one name); raises StackPresetError."""
    normal = unicodedata.normalize("NFC", name) if isinstance(name, str) else name
    problem = name_problem(normal)
    if problem:
        raise StackPresetError(f"{problem[:1].upper()}{problem[1:]}.")
    return normal


def _row(entry: StackEntry) -> dict[str, Any]:
    row: dict[str, Any] = {"lora": entry.name, "on": entry.on, "strength_model": entry.strength_model,
                           "strength_clip": entry.strength_clip}
    if entry.block_weights:
        row["block_weights"] = entry.block_weights
    return row


def check_rows(rows: object) -> list[dict[str, Any]]:
    """The rows in the node's written form (every field present), checked as the node checks them.

    Raises StackPresetError for rows that are not a list, too many rows, or a row parse_rows refuses.
    """
    if not isinstance(rows, list):
        raise StackPresetError(f"A preset's rows must be a JSON list of row objects, got {type(rows).__name__}.")
    if len(rows) > MAX_ROWS:
        raise StackPresetError(f"A preset holds at most {MAX_ROWS} rows; got {len(rows)}.")
    try:
        entries = parse_rows(json.dumps(rows, allow_nan=False)) if rows else []
    except ValueError as e:  # NaN/Infinity: not JSON
        raise StackPresetError(f"A preset's rows must hold finite numbers only ({e}).") from e
    except StackRowsError as e:
        raise StackPresetError(str(e)) from e
    return [_row(entry) for entry in entries]


class StackPresetStore:
    """The presets file of one folder. Thread-safe: every change reads, edits and atomically rewrites the file."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = os.fspath(folder)
        self.path = os.path.join(self.folder, FILE_NAME)
        self._lock = threading.Lock()

    def _read(self) -> dict[str, list[dict[str, Any]]]:
        try:
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as e:
            raise self._damaged(f"it cannot be read ({getattr(e, 'strerror', None) or e})") from e
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise self._damaged(f"it is not JSON ({e.msg} at line {e.lineno})") from e
        if not isinstance(data, dict) or data.get("version") != VERSION or not isinstance(data.get("presets"), dict):
            raise self._damaged(f'it is not {{"version": {VERSION}, "presets": {{...}}}}')
        presets = {}
        for name, rows in data["presets"].items():
            try:
                presets[check_name(name)] = check_rows(rows)
            except StackPresetError as e:
                raise self._damaged(f"preset {name!r}: {e}") from e
        return presets

    def _damaged(self, problem: str) -> StackPresetFileError:
        return StackPresetFileError(f"The stack presets file '{self.path}' is not usable: {problem}. It was left as "
                                    "it is; fix it or move it away to start a new one.", path=self.path)

    def _write(self, presets: dict[str, list[dict[str, Any]]]) -> None:
        os.makedirs(self.folder, exist_ok=True)
        write_json_atomic(self.path, {"version": VERSION, "presets": dict(sorted(presets.items()))})

    def list(self) -> list[dict[str, Any]]:
        """Every preset as {"name", "rows"}, sorted by name (case-insensitive). Raises StackPresetFileError."""
        with self._lock:
            presets = self._read()
        order = sorted(presets, key=lambda name: (name.lower(), name))
        return [{"name": name, "rows": presets[name]} for name in order]

    def get(self, name: str) -> list[dict[str, Any]] | None:
        with self._lock:
            return self._read().get(check_name(name))

    def save(self, name: str, rows: object) -> bool:
        """Saves (or replaces) a preset; True when it is new. Raises StackPresetError, StackPresetFileError,
        LoraWriteError (the file is then unchanged)."""
        name, checked = check_name(name), check_rows(rows)
        with self._lock:
            presets = self._read()
            new = name not in presets
            if new and len(presets) >= MAX_PRESETS:
                raise StackPresetError(f"There are already {MAX_PRESETS} stack presets; delete one first.")
            presets[name] = checked
            self._write(presets)
        return new

    def delete(self, name: str) -> bool:
        """Deletes a preset; False when there is none of that name."""
        name = check_name(name)
        with self._lock:
            presets = self._read()
            if name not in presets:
                return False
            del presets[name]
            self._write(presets)
        return True
