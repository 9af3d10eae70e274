"""The blocks a LoRA file's layers lie in, in the block-weight layouts' order, each with its weight under a
block-weight text: what the editor's per-block sliders show (one slider a block, set to the weight the loaders
would apply; a slider edit writes `block=value` entries, which give this file's layers the same weights)."""
from __future__ import annotations

from dataclasses import dataclass

from .block_weights import FLUX_BLOCKS, UNET_BLOCKS, block_of, parse_block_weights
from .file import LoraFile
from .host_keys import host_modules


@dataclass(frozen=True)
class FileBlock:
    """One block of a file: its id (`block_of`), how many of the file's layers lie in it, and its weight."""

    block: str
    layers: int
    weight: float


def _order(block: str) -> tuple[int, int, str]:
    # The layouts' own order (text encoder, inputs, middle, outputs; Flux: CLIP, T5, in, doubles, singles, out),
    # then any other block (SD3's joint blocks) by name.
    if block in UNET_BLOCKS:
        return 0, UNET_BLOCKS.index(block), block
    if block in FLUX_BLOCKS:
        return 1, FLUX_BLOCKS.index(block), block
    return 2, 0, block


def file_blocks(lora: LoraFile, weights_text: str = "") -> tuple[tuple[FileBlock, ...], int]:
    """(the file's blocks in layout order, how many of its layers lie outside every block).

    Each block's weight is the multiplier `weights_text` gives its layers (BlockWeightsError for a text the
    loaders refuse, or one whose layout cannot name this file's blocks).
    """
    weights = parse_block_weights(weights_text)
    counts: dict[str, int] = {}
    outside = 0
    for prefix in host_modules(lora):
        block = block_of(prefix)
        if block is None:
            outside += 1
        else:
            counts[block] = counts.get(block, 0) + 1
    weights.check_fits(set(counts))
    blocks = tuple(FileBlock(b, counts[b], weights.weight(b)) for b in sorted(counts, key=_order))
    return blocks, outside

