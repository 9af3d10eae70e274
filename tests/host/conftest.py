"""One real ComfyUI per test session, on 127.0.0.1, with the pack linked into its custom_nodes/."""
from __future__ import annotations

import pytest

from scripts.comfy_host import ComfyHost, ensure_tiny_checkpoint, prepare_base_dir


@pytest.fixture(scope="session")
def host(tmp_path_factory) -> ComfyHost:
    checkpoint = ensure_tiny_checkpoint()
    base = prepare_base_dir(tmp_path_factory.mktemp("comfy-base"), checkpoint)
    comfy = ComfyHost(base).start()
    yield comfy
    comfy.stop()
