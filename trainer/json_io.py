"""Atomic writing of small JSON files (settings, presets): a temp file, fsync, rename; all or nothing."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import Any

from .errors import LoraWriteError

logger = logging.getLogger(__name__)


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Writes `data` as UTF-8 JSON to `path` via a temp file in the same folder, fsync and rename.

    Raises LoraWriteError naming the file on any failure (data that is not JSON, a full disk, an
    unwritable folder); the previous file at `path`, if any, is then unchanged and no temp file is left.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        # allow_nan=False: NaN/Infinity are not JSON, and other readers would refuse the file.
        text = json.dumps(data, ensure_ascii=False, indent=1, allow_nan=False) + "\n"
    except (TypeError, ValueError) as e:
        raise LoraWriteError(f"Cannot write '{path}': the data is not JSON ({e}). No file was changed.",
                             path=path) from e
    if not os.path.isdir(folder):
        raise LoraWriteError(f"Cannot write '{path}': the folder '{folder}' does not exist.", path=path)
    tmp_path: str | None = None
    try:
        fd, tmp_path = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        tmp_path = None
    except OSError as e:
        kept = "The previous file is unchanged." if os.path.exists(path) else "No file was created."
        raise LoraWriteError(f"Could not write '{path}': {e.strerror or e}. {kept} Check free disk space and "
                             "write permission for the folder, then try again.", path=path) from e
    finally:
        if tmp_path is not None:
            try:
                os.remove(tmp_path)
            except OSError as e:
                logger.warning("could not remove temporary file %s: %s", tmp_path, e)
    _fsync_folder(folder)


def _fsync_folder(folder: str) -> None:
    # Makes the rename itself durable; the file is already complete, so a failure here is only logged.
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        logger.debug("could not fsync folder %s: %s", folder, e)
