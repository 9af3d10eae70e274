"""Tests on the host's tiny models run on one CPU thread; those that train, in the host's training mode."""
from collections.abc import Iterator

import pytest

from scripts.host_import import import_pack_module
from tests.support.one_thread import single_thread  # noqa: F401  (autouse fixture)


@pytest.fixture()
def host_training_mode() -> Iterator[None]:
    """Inside the host's training mode, as Train LoRA runs its steps (host_compat.training_mode): ComfyUI 0.33's models
    take their differentiable paths there (Flux's and Wan's rope has no autograd formula outside it)."""
    with import_pack_module("nodes.host.host_compat").training_mode():
        yield
