"""One real ComfyUI per test session, on 127.0.0.1, with the pack linked into its custom_nodes/."""
from __future__ import annotations

import pytest

from scripts.comfy_host import ComfyHost, ensure_tiny_checkpoint, prepare_base_dir
from scripts.make_demo_dataset import make_demo_dataset


@pytest.fixture(scope="session")
def host(tmp_path_factory) -> ComfyHost:
    checkpoint = ensure_tiny_checkpoint()
    base = prepare_base_dir(tmp_path_factory.mktemp("comfy-base"), checkpoint)
    comfy = ComfyHost(base).start()
    yield comfy
    comfy.stop()


@pytest.fixture(scope="session")
def rings(host) -> str:
    """A small captioned dataset in the host's input folder; its folder name."""
    make_demo_dataset(host.input_dir / "rings", count=4, size=64)
    return "rings"
