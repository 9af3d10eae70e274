"""The labelled sample grid and the parsing of its prompts and strengths."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFont

from trainer.sample_grid import LABEL_HEIGHT, ROW_LABEL_WIDTH, _fit, label_grid, parse_prompts, parse_strengths


def test_tiles_are_placed_unchanged_under_their_labels() -> None:
    red, blue = Image.new("RGB", (32, 16), (255, 0, 0)), Image.new("RGB", (32, 16), (0, 0, 255))
    grid = np.asarray(label_grid([[red, blue], [blue, red]], ["a", "b"], ["s 0", "s 1"]))
    assert grid.shape == (LABEL_HEIGHT + 32, ROW_LABEL_WIDTH + 64, 3)
    assert (grid[LABEL_HEIGHT:LABEL_HEIGHT + 16, ROW_LABEL_WIDTH:ROW_LABEL_WIDTH + 32] == (255, 0, 0)).all()
    assert (grid[LABEL_HEIGHT + 16:, ROW_LABEL_WIDTH:ROW_LABEL_WIDTH + 32] == (0, 0, 255)).all()


def test_long_column_labels_are_cut_to_the_tile() -> None:
    font = ImageFont.load_default()
    cut = _fit("lrlring, a red ring on a blue wall", 56, font)
    assert cut.endswith("…") and font.getlength(cut) <= 56
    assert _fit("short", 56, font) == "short"


def test_grid_shape_must_match_labels() -> None:
    tile = Image.new("RGB", (8, 8))
    with pytest.raises(ValueError, match="does not match"):
        label_grid([[tile, tile]], ["one row"], ["only one column"])


@pytest.mark.parametrize("text, expected", [("0, 0.5, 1", [0.0, 0.5, 1.0]), ("-1;2", [-1.0, 2.0]), (" 1 ,", [1.0])])
def test_strengths(text, expected) -> None:
    assert parse_strengths(text) == expected


@pytest.mark.parametrize("text, message", [("0, loud", "got 'loud'"), ("", "at least one"),
                                           (",".join(["1"] * 17), "at most 16")])
def test_bad_strengths(text, message) -> None:
    with pytest.raises(ValueError, match=message):
        parse_strengths(text)


def test_prompts_one_per_line() -> None:
    assert parse_prompts("a cat\n\n  a dog  \n") == ["a cat", "a dog"]
    with pytest.raises(ValueError, match="at most 2"):
        parse_prompts("a\nb\nc", limit=2)
