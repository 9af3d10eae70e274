"""One real ComfyUI and one headless Chromium for the graph-editor tests; a fresh page per test."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from playwright import sync_api as playwright_sync
from safetensors.numpy import save_file

from scripts.comfy_host import ComfyHost, ensure_tiny_checkpoint, prepare_base_dir
from scripts.editor import CHROMIUM, CHROMIUM_ARGS, Editor

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "browser"
TEST_LORAS = {"loralab_a.safetensors": "loralab_a", "loralab_b.safetensors": "loralab_b",
              "loralab_c.safetensors": "loralab_c"}


def write_test_lora(path: Path, trigger: str, seed: int, rank: int = 4) -> None:
    """A small kohya-format LoRA on two layers that the tiny SD1.5 checkpoint has (LDM names)."""
    rng = np.random.default_rng(seed)
    shapes = {  # layer: (down shape, up shape)
        "lora_unet_input_blocks_1_1_proj_in": ((rank, 320, 1, 1), (320, rank, 1, 1)),
        "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k": ((rank, 768), (320, rank)),
    }
    tensors = {}
    for layer, (down, up) in shapes.items():
        tensors[f"{layer}.lora_down.weight"] = (rng.standard_normal(down) * 0.05).astype(np.float16)
        tensors[f"{layer}.lora_up.weight"] = (rng.standard_normal(up) * 0.05).astype(np.float16)
        tensors[f"{layer}.alpha"] = np.array(rank, dtype=np.float16)
    save_file(tensors, str(path), metadata={"modelspec.trigger_phrase": trigger, "ss_network_dim": str(rank),
                                             "ss_tag_frequency": json.dumps({"1_img": {trigger: 1}})})


@pytest.fixture(scope="module")
def host(tmp_path_factory) -> Iterator[ComfyHost]:
    """A host per test module: what one module trains or saves never shows up in another's LoRA lists."""
    base = prepare_base_dir(tmp_path_factory.mktemp("comfy-browser"), ensure_tiny_checkpoint())
    comfy = ComfyHost(base)
    for seed, (name, trigger) in enumerate(TEST_LORAS.items()):
        write_test_lora(comfy.loras_dir / name, trigger, seed)
    try:
        comfy.start()  # raises when the pack fails to import, with the host still running
        # A first visit opens the Templates browser, sometimes seconds after the editor is ready;
        # marking the tutorial done (as a returning user has) keeps it from covering the canvas mid-test.
        status, answer = comfy.post_json("/settings/Comfy.TutorialCompleted", True)
        assert status == 200, answer
        yield comfy
    finally:
        comfy.stop()


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    with playwright_sync.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def editor(browser, host):
    """The real graph editor in a fresh page, on an empty graph."""
    ed = Editor.open(browser, host)
    yield ed
    ed.page.close()
