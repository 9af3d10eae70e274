"""Resize LoRA's chart in the host's real graph editor: after a real run the node shows the kept share of every
layer as a bar and the spectrum of the layer that keeps least, cut at its rank; a click on a bar shows another."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect

from scripts.lora_fixtures import write_format
from scripts.tiny_checkpoint import TINY_TARGETS

LOHA = "chart loha.safetensors"  # a LoHa's change has full rank: rank 16 keeps part of it in every layer


@pytest.fixture(scope="module")
def loha(host) -> Iterator[Path]:
    """Written before any page opens: the editor reads the loras list on load."""
    path = host.loras_dir / LOHA
    write_format("loha", path, TINY_TARGETS, rank=8)
    yield path


def test_a_resize_run_draws_the_kept_shares_and_a_spectrum(loha, editor, artifacts):
    node = editor.add_node("LoraLabResizeLora", (200, 150))
    editor.page.wait_for_timeout(300)
    editor.choose_combo(node, "lora_name", LOHA)
    chart = editor.page.get_by_test_id("loralab-chart")
    assert chart.locator(".loralab-chart-bar").count() == 0  # nothing before a run
    assert chart.get_by_test_id("loralab-chart-summary").text_content() == ""
    editor.js("return app.queuePrompt(0, 1);")
    expect(chart.get_by_test_id("loralab-chart-summary")).to_contain_text(
        f"fixed 16 · {len(TINY_TARGETS)} layers · mean kept", timeout=120_000)
    bars = chart.locator(".loralab-chart-bar")
    assert bars.count() == len(TINY_TARGETS)
    selected = chart.locator(".loralab-chart-bar-selected")
    assert selected.count() == 1
    first_caption = chart.get_by_test_id("loralab-chart-caption").text_content()
    assert "rank 16, keeps" in first_caption
    assert chart.get_by_test_id("loralab-chart-kept").get_attribute("d").startswith("M")
    assert chart.get_by_test_id("loralab-chart-cut").get_attribute("d").startswith("M")  # values left out

    other = next(i for i in range(bars.count()) if "selected" not in bars.nth(i).get_attribute("class"))
    bars.nth(other).click()
    expect(bars.nth(other)).to_have_class("loralab-chart-bar loralab-chart-bar-selected")
    assert chart.get_by_test_id("loralab-chart-caption").text_content() != first_caption
    editor.js("app.canvas.setDirty(true, true);")
    editor.page.wait_for_timeout(200)
    editor.page.screenshot(path=str(artifacts / "tool_chart.png"))
    assert editor.pack_errors == []
