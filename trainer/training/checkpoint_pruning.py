"""Checkpointing.keep_last: which of a run's step checkpoints to delete so that only the newest N remain."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import ConfigError


def checkpoints_to_delete(saved: Sequence[str], keep_last: int) -> list[str]:
    """The checkpoints in `saved` beyond the newest `keep_last`, oldest first; none when keep_last is 0.

    `saved` is this run's step checkpoints in the order they were written (a name written twice, e.g.
    "save now" and a scheduled checkpoint at the same step, counts once, at its latest write). Only names
    from `saved` are returned, so the final `<name>.safetensors`, which is never in it, is never deleted;
    nor are checkpoints left by an earlier run under the same name, which may carry higher step numbers.
    """
    if keep_last < 0:
        raise ConfigError(f"keep_last = {keep_last} is not allowed; expected 0 (keep all) or more.")
    newest_last = list(dict.fromkeys(reversed(saved)))[::-1]  # unique, each at its latest position
    if keep_last == 0 or len(newest_last) <= keep_last:
        return []
    return newest_last[:-keep_last]
