"""Writing a tool's result: atomically (temp file, then rename), with kohya's hashes, never over an existing file."""

from __future__ import annotations

import os

from ..errors import LoraToolError
from ..training.export import save_lora
from .merge import ToolResult


def save_result(path: str | os.PathLike[str], result: ToolResult) -> dict[str, str]:
    """Write `result` to `path` (refused if a file is there); returns the metadata written."""
    if os.path.exists(path):
        raise LoraToolError(f"'{os.path.basename(path)}' already exists in {os.path.dirname(path) or '.'}; "
                            "choose another output name (LoRA Lab never overwrites a LoRA).")
    return save_lora(path, result.tensors, result.metadata)
