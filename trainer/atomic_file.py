"""Writing a file all or nothing: a temp file in the same folder, fsync, rename; clear errors in the user's terms."""

from __future__ import annotations

import errno
import logging
import os
import tempfile

from .errors import LoraWriteError

logger = logging.getLogger(__name__)


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Writes `data` to `path` via a temp file in the same folder, fsync and rename.

    On any failure (full disk, unwritable folder, I/O error) raises LoraWriteError naming the file; the
    previous file at `path`, if any, is byte-identical to before and no temp file is left behind.
    """
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise LoraWriteError(f"Cannot write '{path}': the folder '{folder}' does not exist.", path=path)
    tmp_path: str | None = None
    try:
        fd, tmp_path = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
        try:
            f = os.fdopen(fd, "wb")
        except (OSError, ValueError):
            os.close(fd)  # fdopen failed, so nothing else owns the descriptor
            raise
        with f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        tmp_path = None
    except (OSError, ValueError) as e:
        raise write_failure(path, folder, e) from e
    finally:
        if tmp_path is not None:
            _remove_quietly(tmp_path)
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



_DISK_FULL = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG})
_NOT_WRITABLE = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


def write_failure(path: str, folder: str, error: Exception) -> LoraWriteError:
    """The user's view of a failed write: what happened, that the old file is untouched, what to do."""
    reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
    code = getattr(error, "errno", None)
    if code in _DISK_FULL:
        problem, fix = f"the disk is full ({reason})", f"Free space on the disk that holds '{folder}', then try again."
    elif code in _NOT_WRITABLE:
        problem, fix = (f"the folder '{folder}' is not writable ({reason})",
                        "Choose a folder you may write to, or fix its permissions, then try again.")
    else:
        problem, fix = reason, "Check free disk space and write permission for the folder, then try again."
    kept = ("The previous file at that path is unchanged." if os.path.exists(path)
            else "No file was created at that path.")
    return LoraWriteError(f"Could not write '{path}': {problem}. {kept} {fix}", path=path)



def _remove_quietly(tmp_path: str) -> None:
    try:
        os.remove(tmp_path)
    except FileNotFoundError:
        pass
    except OSError as e:
        logger.warning("could not remove temporary file %s: %s", tmp_path, e)
