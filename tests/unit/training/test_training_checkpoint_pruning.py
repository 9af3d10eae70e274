"""Checkpointing.keep_last: which step checkpoints of a run are deleted, and which never are."""

from __future__ import annotations

import pytest

from trainer.training.checkpoint_pruning import checkpoints_to_delete


@pytest.mark.parametrize(("saved", "keep_last", "deleted"), [
    (["a-step10", "a-step20", "a-step30"], 0, []),  # 0 = keep all
    (["a-step10", "a-step20", "a-step30"], 3, []),
    (["a-step10", "a-step20", "a-step30"], 5, []),
    (["a-step10", "a-step20", "a-step30"], 2, ["a-step10"]),
    (["a-step10", "a-step20", "a-step30"], 1, ["a-step10", "a-step20"]),
    # "save now" at step 20, then the scheduled checkpoint at step 20 overwrites it: one file, kept as newest
    (["a-step10", "a-step20", "a-step20"], 1, ["a-step10"]),
    ([], 2, []),
])
def test_keep_last_deletes_all_but_the_newest(saved: list[str], keep_last: int, deleted: list[str]) -> None:
    assert checkpoints_to_delete(saved, keep_last) == deleted
    assert checkpoints_to_delete(saved, keep_last) == checkpoints_to_delete(tuple(saved), keep_last)


def test_keep_last_rejects_negative() -> None:
    with pytest.raises(ValueError, match="keep_last = -1 is not allowed"):
        checkpoints_to_delete(["a-step1"], -1)
