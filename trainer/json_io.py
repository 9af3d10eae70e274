"""Atomic writing of small JSON files (settings, presets): a temp file, fsync, rename; all or nothing."""

from __future__ import annotations

import json
import os
from typing import Any

from .atomic_file import write_bytes_atomic
from .errors import LoraWriteError


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Writes `data` as UTF-8 JSON to `path` via a temp file in the same folder, fsync and rename.

    Raises LoraWriteError naming the file on any failure (data that is not JSON, a full disk, an
    unwritable folder); the previous file at `path`, if any, is then unchanged and no temp file is left.
    """
    path = os.fspath(path)
    try:
        # allow_nan=False: NaN/Infinity are not JSON, and other readers would refuse the file.
        text = json.dumps(data, ensure_ascii=False, indent=1, allow_nan=False) + "\n"
    except (TypeError, ValueError) as e:
        raise LoraWriteError(f"Cannot write '{path}': the data is not JSON ({e}). No file was changed.",
                             path=path) from e
    write_bytes_atomic(path, text.encode("utf-8"))
