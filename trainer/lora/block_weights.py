"""Per-block strengths of a LoRA: the "LoRA Block Weight" syntax users share, and the block each layer belongs to.

Three spellings, as the sd-webui-lora-block-weight extension (hako-mikan) defines the first two:

* a named preset: `INS`, `MIDD`, `OUTALL`, `ALL0.5`, … (`PRESETS`, the extension's 17-value defaults);
* a list of 12, 17, 20, 26 or 61 numbers, one per block of a fixed layout (`LAYOUTS`). The layout's blocks
  are slots of the 26 UNet blocks (`BASE`, `IN00`…`IN11`, `M00`, `OUT00`…`OUT11`) or of the 61 Flux blocks
  (`CLIP`, `T5`, `IN`, `D00`…`D18`, `S00`…`S37`, `OUT`). As in the extension, a UNet block the list leaves
  out gets 0 (17 values say nothing of IN00, IN03, …), and a layer outside every block (time embedding,
  conv_out) keeps 1;
* `block=value` entries, e.g. `double_blocks.0-5=0, single=0.5` or `IN05-OUT05=0.3, BASE=0`: every block not
  named keeps 1 (or the value of `ALL=`); a single block beats a group, and among equals the later entry wins.

Blocks are the host's (LDM) blocks: `block_of` reads them from a layer's host key (`diffusion_model.input_blocks.4.1…`,
`lora_unet_output_blocks_2_1_…`), from diffusers UNet names (`down_blocks.1.attentions.0…`, mapped as the
SD1.x/SDXL UNet lays them out: two res blocks per level), and from DiT names (`double_blocks.N`, `single_blocks.N`,
`joint_blocks.N`). Every text encoder is `BASE` (the Flux layout's `CLIP`), a T5 encoder `T5`.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from ..errors import BlockWeightsError

UNET_BLOCKS: tuple[str, ...] = ("BASE", *(f"IN{i:02}" for i in range(12)), "M00", *(f"OUT{i:02}" for i in range(12)))
FLUX_BLOCKS: tuple[str, ...] = ("BASE", "T5", "IN", *(f"D{i:02}" for i in range(19)), *(f"S{i:02}" for i in range(38)),
                                "OUT")

LAYOUTS: dict[int, tuple[str, ...]] = {
    12: ("BASE", "IN04", "IN05", "IN07", "IN08", "M00", "OUT00", "OUT01", "OUT02", "OUT03", "OUT04", "OUT05"),  # SDXL
    17: ("BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00", *(f"OUT{i:02}" for i in range(3, 12))),  # SD1
    20: ("BASE", *(f"IN{i:02}" for i in range(9)), "M00", *(f"OUT{i:02}" for i in range(9))),  # SDXL LoCon
    26: UNET_BLOCKS,  # SD1 LoCon / LyCORIS
    61: FLUX_BLOCKS,
}
LAYOUT_NAMES = {12: "SDXL LoRA", 17: "SD1.x LoRA", 20: "SDXL LoCon/LyCORIS", 26: "SD1.x LoCon/LyCORIS", 61: "Flux"}

# The extension's default presets (17 values: the SD1.x LoRA layout).
PRESETS: dict[str, str] = {
    "NONE": "0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0",
    "ALL": "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1",
    "INS": "1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0",
    "IND": "1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0",
    "INALL": "1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0",
    "MIDD": "1,0,0,0,1,1,1,1,1,1,1,1,0,0,0,0,0",
    "OUTD": "1,0,0,0,0,0,0,0,1,1,1,1,0,0,0,0,0",
    "OUTS": "1,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1",
    "OUTALL": "1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1",
    "ALL0.5": ",".join(["0.5"] * 17),
    "FLUXALL": ",".join(["1"] * 61),
}

# Group words of the `block=value` syntax -> the kind of block they cover.
_GROUPS = {"DOUBLE": "D", "DOUBLE_BLOCKS": "D", "SINGLE": "S", "SINGLE_BLOCKS": "S", "JOINT": "J", "JOINT_BLOCKS": "J",
           "INPUT_BLOCKS": "IN", "OUTPUT_BLOCKS": "OUT"}
_ALIASES = {"MID": "M00", "MIDDLE_BLOCK": "M00", "MID_BLOCK": "M00", "CLIP": "BASE", "TE": "BASE",
            "TEXT_ENCODER": "BASE", "T5XXL": "T5"}
_INDEXED = {"IN": "IN", "INPUT_BLOCKS": "IN", "OUT": "OUT", "OUTPUT_BLOCKS": "OUT", "M": "M", "D": "D",
            "DOUBLE_BLOCKS": "D", "S": "S", "SINGLE_BLOCKS": "S", "J": "J", "JOINT_BLOCKS": "J"}
HELP = ("Per-block strengths, as the A1111 LoRA Block Weight extension writes them: a preset (INS, IND, INALL, MIDD, "
        "OUTD, OUTS, OUTALL, ALL0.5, NONE, ALL), 17 values for SD1.x (BASE, IN01, IN02, IN04, IN05, IN07, IN08, MID, "
        "OUT03-OUT11), 12 for SDXL (BASE, IN04, IN05, IN07, IN08, MID, OUT00-OUT05), 26/20 for LoCon, 61 for Flux; "
        "or block=value entries such as 'MID=0, OUT03-OUT05=0.5' or 'double_blocks.0-5=0, single=0.5'. "
        "Each block's layers get strength x its value. Empty: every block at 1.")
_ID = re.compile(r"^([A-Z_]+?)[._]?(\d+)$")
_RANDOM = {"R", "U"}


@dataclass(frozen=True)
class BlockWeights:
    """A strength multiplier per block (block ids as `block_of` returns them).

    `blocks` holds single blocks, `groups` kinds of block ("D" = every double block), `default` the rest;
    `layout` is the positional layout the text used (its unlisted blocks get 0), or None.
    """
    text: str
    blocks: dict[str, float] = field(default_factory=dict)
    groups: dict[str, float] = field(default_factory=dict)
    default: float = 1.0
    layout: tuple[str, ...] | None = None

    def weight(self, block: str | None) -> float:
        """The multiplier of a layer in `block` (None: outside every block)."""
        if block is None:
            return 1.0 if self.layout is not None else self.default
        if block in self.blocks:
            return self.blocks[block]
        if _kind(block) in self.groups:
            return self.groups[_kind(block)]
        if self.layout is not None and block in _family(self.layout):
            return 0.0
        return self.default

    @property
    def is_identity(self) -> bool:
        """True when every layer keeps strength 1 (empty text, `ALL` on a layout without gaps…)."""
        if self.layout is not None:
            return all(self.blocks.get(b, 0.0) == 1.0 for b in _family(self.layout))
        return self.default == 1.0 and all(v == 1.0 for v in (*self.blocks.values(), *self.groups.values()))

    def check_fits(self, blocks: set[str | None]) -> None:
        """Refuse a positional layout on a LoRA whose layers lie in blocks it cannot name (SD1 values on Flux)."""
        if self.layout is None:
            return
        family = _family(self.layout)
        foreign = sorted(b for b in blocks if b is not None and b not in family)
        if foreign:
            n = len(self.layout)
            raise BlockWeightsError(
                f"Block weights '{self.text}' are {n} values, the {LAYOUT_NAMES[n]} layout, but this LoRA has "
                f"layers in blocks that layout does not have ({', '.join(foreign[:4])}"
                f"{', …' if len(foreign) > 4 else ''}). Use the layout of this model's family "
                "(61 values for Flux) or name blocks, e.g. 'double_blocks.0-5=0, single=0.5'.")


def _kind(block: str) -> str:
    match = re.match(r"^([A-Z]+)\d+$", block)
    return match.group(1) if match else block


def _family(layout: tuple[str, ...]) -> tuple[str, ...]:
    return FLUX_BLOCKS if layout is FLUX_BLOCKS else UNET_BLOCKS


def _number(text: str, token: str, what: str) -> float:
    token = token.strip()
    if token.upper() in _RANDOM or token.upper().startswith("X"):
        raise BlockWeightsError(f"Block weights '{text}': {what} is '{token}'. The extension's random (R, U) and "
                                "inherited (X) values are not supported here: write a number.")
    try:
        value = float(token)
    except ValueError:
        raise BlockWeightsError(f"Block weights '{text}': {what} is '{token}', not a number. Expected a preset "
                                f"({', '.join(PRESETS)}), {_counts()} comma-separated numbers, or block=value "
                                "entries such as 'IN04=0, OUT05=0.5'.") from None
    if not math.isfinite(value):
        raise BlockWeightsError(f"Block weights '{text}': {what} is {token}; it must be a finite number.")
    return value


def _counts() -> str:
    counts = [str(n) for n in LAYOUTS]
    return ", ".join(counts[:-1]) + " or " + counts[-1]


def _positional(text: str, values: str) -> BlockWeights:
    tokens = [t for t in values.split(",")]
    if tokens and not tokens[-1].strip():
        tokens.pop()  # a trailing comma
    layout = LAYOUTS.get(len(tokens))
    if layout is None:
        raise BlockWeightsError(
            f"Block weights '{text}' hold {len(tokens)} values; expected {_counts()} "
            f"({'; '.join(f'{n}: {name}' for n, name in LAYOUT_NAMES.items())}), a preset, or block=value entries.")
    numbers = [_number(text, t, f"value {i} ({layout[i - 1]})") for i, t in enumerate(tokens, start=1)]
    return BlockWeights(text=text, blocks=dict(zip(layout, numbers, strict=True)), layout=layout)


def _block_id(name: str) -> str | None:
    """The block id a name spells (IN04, input_blocks.4, D3, double_blocks.3, MID, CLIP…); None if unknown."""
    key = name.strip().upper().replace(".", "_")
    key = _ALIASES.get(key, key)
    if key in UNET_BLOCKS or key in FLUX_BLOCKS:
        return key
    match = _ID.match(key)
    if match and match.group(1) in _INDEXED:
        kind, index = _INDEXED[match.group(1)], int(match.group(2))
        if kind == "M" and index != 0:
            return None
        return "M00" if kind == "M" else f"{kind}{index:02}"
    return None


def _expand_range(text: str, left: str, right: str) -> list[str]:
    start = _block_id(left)
    end = _block_id(right) if not right.strip().isdigit() else None
    if start is not None and end is None and right.strip().isdigit():
        end = f"{_kind(start)}{int(right):02}"  # 'double_blocks.0-5': the end in the start's kind
    if start is None or end is None:
        raise BlockWeightsError(f"Block weights '{text}': '{left}-{right}' is not a range of blocks; write e.g. "
                                "'IN01-IN08', 'IN05-OUT05', 'D00-D05' or 'double_blocks.0-5'.")
    for order in (UNET_BLOCKS, FLUX_BLOCKS):
        if start in order and end in order:
            i, j = sorted((order.index(start), order.index(end)))
            return list(order[i:j + 1])
    if _kind(start) == _kind(end) and start != _kind(start):
        i, j = sorted((int(start[len(_kind(start)):]), int(end[len(_kind(end)):])))
        return [f"{_kind(start)}{n:02}" for n in range(i, j + 1)]
    raise BlockWeightsError(f"Block weights '{text}': the range '{left}-{right}' spans two kinds of block; "
                            "give each kind its own range.")


def _named(text: str) -> BlockWeights:
    blocks: dict[str, float] = {}
    groups: dict[str, float] = {}
    default = 1.0
    for entry in text.replace("\n", ",").split(","):
        if not entry.strip():
            continue
        if "=" not in entry:
            raise BlockWeightsError(f"Block weights '{text}': '{entry.strip()}' has no '='. Mix no numbers with "
                                    "block=value entries: write either all values of a layout or name each block.")
        name, _, value_text = entry.partition("=")
        name = name.strip()
        value = _number(text, value_text, f"the value of '{name}'")
        upper = name.upper().replace(".", "_")
        if upper in ("ALL", "*"):
            default = value
        elif upper in _GROUPS:
            groups[_GROUPS[upper]] = value
        elif "-" in name:
            left, _, right = name.partition("-")
            for block in _expand_range(text, left, right):
                blocks[block] = value
        else:
            block = _block_id(name)
            if block is None:
                raise BlockWeightsError(
                    f"Block weights '{text}': '{name}' is not a block. Known: BASE (text encoders), IN00-IN11, MID, "
                    "OUT00-OUT11 (UNet); T5, IN, D00…, S00…, OUT, double_blocks.N, single_blocks.N, double, single "
                    "(Flux); joint_blocks.N, joint (SD3); ALL for every other layer.")
            blocks[block] = value
    return BlockWeights(text=text, blocks=blocks, groups=groups, default=default)


def parse_block_weights(text: str | None) -> BlockWeights:
    """BlockWeights from a preset name, a positional list, or block=value entries; empty text = all 1.

    A pasted preset line `NAME:1,0,…` or `lbw=…` is read as its values.
    """
    raw = (text or "").strip()
    if not raw:
        return BlockWeights(text="")
    body = raw.removeprefix("lbw=").strip()
    if ":" in body:
        label, _, rest = body.partition(":")
        if re.fullmatch(r"[\w.]+", label.strip()):
            body = rest.strip()
    preset = PRESETS.get(body.upper())
    if preset is not None:
        return _positional(raw, preset)
    if "=" in body:
        return _named(raw)
    if "," in body or _looks_numeric(body):
        return _positional(raw, body)
    raise BlockWeightsError(f"Block weights '{raw}': not a known preset. Presets: {', '.join(PRESETS)}; or write "
                            f"{_counts()} comma-separated numbers, or block=value entries such as 'MID=0, OUT05=0.5'.")


def _looks_numeric(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


# ---- which block a layer belongs to --------------------------------------------------------------------

_TEXT_ENCODER = re.compile(r"^(lora_te\d*_|lora_prior_te|text_encoders?(_\d)?[._]|te\d?[._]|clip_[lgh][._]|t5\w*[._]|"
                           r"hydit_clip|cond_stage_model|conditioner[._]|transformer[._]text_model)")
_PATTERNS: tuple[tuple[re.Pattern[str], object], ...] = (
    (re.compile(r"(?:^|_)input_blocks_(\d+)(?:_|$)"), lambda m: f"IN{int(m[1]):02}"),
    (re.compile(r"(?:^|_)middle_block(?:_|$)"), lambda m: "M00"),
    (re.compile(r"(?:^|_)output_blocks_(\d+)(?:_|$)"), lambda m: f"OUT{int(m[1]):02}"),
    # diffusers UNet names, laid out as SD1.x / SDXL: two res blocks per level, three per up level.
    (re.compile(r"(?:^|_)down_blocks_(\d+)_(?:resnets|attentions)_(\d+)(?:_|$)"),
     lambda m: f"IN{1 + 3 * int(m[1]) + int(m[2]):02}"),
    (re.compile(r"(?:^|_)down_blocks_(\d+)_downsamplers(?:_|$)"), lambda m: f"IN{3 + 3 * int(m[1]):02}"),
    (re.compile(r"(?:^|_)mid_block(?:_|$)"), lambda m: "M00"),
    (re.compile(r"(?:^|_)up_blocks_(\d+)_(?:resnets|attentions)_(\d+)(?:_|$)"),
     lambda m: f"OUT{3 * int(m[1]) + int(m[2]):02}"),
    (re.compile(r"(?:^|_)up_blocks_(\d+)_upsamplers(?:_|$)"), lambda m: f"OUT{3 * int(m[1]) + 2:02}"),
    (re.compile(r"(?:^|_)conv_in(?:_|$)"), lambda m: "IN00"),
    # DiT families.
    (re.compile(r"(?:^|_)double_blocks_(\d+)(?:_|$)"), lambda m: f"D{int(m[1]):02}"),
    (re.compile(r"(?:^|_)single_blocks_(\d+)(?:_|$)"), lambda m: f"S{int(m[1]):02}"),
    (re.compile(r"(?:^|_)joint_blocks_(\d+)(?:_|$)"), lambda m: f"J{int(m[1]):02}"),
    (re.compile(r"(?:^|_)(?:img_in|txt_in|time_in|vector_in|guidance_in)(?:_|$)"), lambda m: "IN"),
    (re.compile(r"(?:^|_)final_layer(?:_|$)"), lambda m: "OUT"),
)


def block_of(key: str) -> str | None:
    """The block of a layer from its host key or module name ('IN04', 'M00', 'OUT05', 'D03', 'BASE', 'T5'…).

    None for a layer outside every block (time embedding, conv_out, SD3's embedders).
    """
    flat = key.replace(".", "_")
    bare = flat.removeprefix("diffusion_model_").removeprefix("model_diffusion_model_")
    if bare == flat and _TEXT_ENCODER.match(flat):
        return "T5" if "t5" in flat.lower() else "BASE"
    for pattern, name in _PATTERNS:
        match = pattern.search(bare)
        if match:
            return name(match)  # type: ignore[operator]
    return None
