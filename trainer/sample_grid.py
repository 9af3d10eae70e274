"""A labelled grid of sample images: rows are prompts, columns are strengths or checkpoints."""
from __future__ import annotations

import textwrap

from PIL import Image, ImageDraw, ImageFont

from .errors import SampleGridError

LABEL_HEIGHT = 22
ROW_LABEL_WIDTH = 160


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def _fit(text: str, width: int, font: ImageFont.ImageFont) -> str:
    """`text` cut (with an ellipsis) to fit `width` pixels: long prompts must not run into the next column."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def label_grid(rows: list[list[Image.Image]], row_labels: list[str], column_labels: list[str]) -> Image.Image:
    """One image: column labels on top, row labels on the left, tiles in between (tiles share a size)."""
    if not rows or not rows[0]:
        raise SampleGridError("a sample grid needs at least one image")
    if len(rows) != len(row_labels) or any(len(r) != len(column_labels) for r in rows):
        raise SampleGridError(f"grid of {len(rows)}x{len(rows[0])} images does not match "
                         f"{len(row_labels)} row and {len(column_labels)} column labels")
    tile_w, tile_h = rows[0][0].size
    sheet = Image.new("RGB", (ROW_LABEL_WIDTH + tile_w * len(column_labels), LABEL_HEIGHT + tile_h * len(rows)),
                      "white")
    draw = ImageDraw.Draw(sheet)
    font = _font()
    for c, label in enumerate(column_labels):
        draw.text((ROW_LABEL_WIDTH + c * tile_w + 4, 5), _fit(label, tile_w - 8, font), fill="black", font=font)
    for r, (tiles, label) in enumerate(zip(rows, row_labels, strict=True)):
        top = LABEL_HEIGHT + r * tile_h
        wrapped = textwrap.wrap(label, 24)[: max(1, tile_h // 12)]
        draw.multiline_text((4, top + 4), "\n".join(wrapped), fill="black", font=font)
        for c, tile in enumerate(tiles):
            sheet.paste(tile.convert("RGB").resize((tile_w, tile_h)), (ROW_LABEL_WIDTH + c * tile_w, top))
    return sheet


def parse_strengths(text: str) -> list[float]:
    """'0, 0.5, 1' -> [0.0, 0.5, 1.0]; a clear error for anything else."""
    values = []
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            values.append(float(part))
        except ValueError as e:
            raise SampleGridError(
                f"strengths must be numbers separated by commas, e.g. '0, 0.5, 1'; got {part!r}") from e
    if not values:
        raise SampleGridError("give at least one strength, e.g. '0, 0.5, 1'")
    if len(values) > 16:
        raise SampleGridError(f"at most 16 strengths per grid; got {len(values)}")
    return values


def parse_prompts(text: str, limit: int = 16) -> list[str]:
    """One prompt per non-empty line."""
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if len(prompts) > limit:
        raise SampleGridError(f"at most {limit} prompts per grid; got {len(prompts)}")
    return prompts
