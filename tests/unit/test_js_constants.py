"""Constants the editor's JS mirrors from the engine stay equal: read out of the JS sources, compared with Python."""
from __future__ import annotations

import re
from pathlib import Path

from trainer.jobs import END_STATES
from trainer.safetensors_io import PICKLE_EXTENSIONS
from trainer.training.loop import SMOOTHING

JS = Path(__file__).resolve().parents[2] / "js" / "lib"


def _js(file: str, pattern: str) -> str:
    match = re.search(pattern, (JS / file).read_text())
    assert match, f"{pattern!r} not found in js/lib/{file}"
    return match.group(1)


def test_loss_smoothing_is_the_engines() -> None:
    assert float(_js("dashboard_chart.js", r"export const SMOOTHING = ([0-9.]+);")) == SMOOTHING


def test_end_states_are_the_job_registrys() -> None:
    states = _js("dashboard_model.js", r"export const END_STATES = new Set\(\[([^\]]*)\]\)")
    assert set(re.findall(r'"([a-z]+)"', states)) == set(END_STATES)


def test_pickle_extensions_are_the_readers() -> None:
    extensions = _js("lora_metadata.js", r"const PICKLE = /\\\.\(([a-z|]+)\)\$/i;")
    assert {f".{e}" for e in extensions.split("|")} == set(PICKLE_EXTENSIONS)
