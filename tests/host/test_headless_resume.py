"""A run started in the editor, resumed headless and back in the editor: the three legs share one loras folder
(the host's base directory, which the CLI is pointed at) and one resume state, and together are the uninterrupted
run."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.host.test_headless import expected_graph, headless, metadata

pytestmark = pytest.mark.host


def graph(name: str, steps: int, resume: bool) -> dict:
    """The editor's API graph of the small run (Train LoRA and its inputs), 2-step legs, fp32, no samples."""
    prompt = copy.deepcopy({k: v for k, v in expected_graph(name).items() if k != "5"})
    prompt["4"]["inputs"]["steps"] = steps
    prompt["3"]["inputs"]["resume"] = resume
    return prompt


def state(loras: Path, name: str) -> tuple[int, list[float], dict[str, torch.Tensor]]:
    path = loras / f"{name}.loralab-resume"
    return int(metadata(path)["loralab.state.step"]), load_file(str(path))["history::loss"].tolist(), \
        load_file(str(path))


def test_editor_run_resumed_headless_and_back_equals_the_uninterrupted_run(host, rings, tmp_path):
    """(1) queued in the host for 2 steps, (2) the CLI on the same API graph with --set 4.steps=4 and
    3.resume=true, (3) queued in the host again with steps 6 and resume on; then the same seed's 6 steps queued
    in one go under another name: the same LoRA (fp16 file tolerance), loss history and resume state."""
    loras = host.loras_dir
    name = "hr_legs"

    host.run(graph(name, 2, resume=False))  # (1) the editor: steps 0-2
    step, first, _ = state(loras, name)
    assert step == 2 and len(first) == 2
    assert metadata(loras / f"{name}.safetensors")["ss_steps"] == "2"

    # (2) headless on the same graph (API format), steps 4 and resume on: continues at step 2
    result = headless(host, "train", "--set", "4.steps=4", "--set", "3.resume=true",
                      workflow=graph(name, 2, resume=False), tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "resuming at step 2 of 4" in result.stderr, result.stderr[-4000:]
    assert f"saved {name}.safetensors after 4 steps" in result.stderr
    step, second, _ = state(loras, name)
    assert step == 4 and len(second) == 4
    assert second[:2] == pytest.approx(first, rel=1e-12), "the editor's steps kept, not retrained"
    assert metadata(loras / f"{name}.safetensors")["ss_steps"] == "4"

    host.run(graph(name, 6, resume=True))  # (3) the editor again: steps 4-6
    step, third, resumed_state = state(loras, name)
    assert step == 6 and third[:4] == pytest.approx(second, rel=1e-12)
    assert metadata(loras / f"{name}.safetensors")["ss_steps"] == "6"

    reference = "hr_whole"
    host.run(graph(reference, 6, resume=False))  # the same seed, 6 steps in one go
    step, whole, whole_state = state(loras, reference)
    assert step == 6 and third == pytest.approx(whole, rel=1e-5)
    lora, lora_whole = load_file(str(loras / f"{name}.safetensors")), load_file(str(loras / f"{reference}.safetensors"))
    assert sorted(lora) == sorted(lora_whole) and lora
    for key in lora:
        torch.testing.assert_close(lora[key].float(), lora_whole[key].float(), rtol=1e-3, atol=1e-5, msg=key)
    assert sorted(resumed_state) == sorted(whole_state)
    for key in resumed_state:  # fp32 weights, optimizer statistics, generator state, history
        if resumed_state[key].is_floating_point():
            torch.testing.assert_close(resumed_state[key], whole_state[key], rtol=1e-5, atol=1e-6, msg=key)
        else:
            assert torch.equal(resumed_state[key], whole_state[key]), key
