"""Block weights: every preset and layout, the block=value syntax, every error, and the block of each kind of key."""
from __future__ import annotations

import pytest

from trainer.errors import BlockWeightsError, LoraLabError, StackRowsError
from trainer.lora.block_weights import (
    FLUX_BLOCKS,
    LAYOUTS,
    PRESETS,
    UNET_BLOCKS,
    block_of,
    parse_block_weights,
)
from trainer.lora.stack import entries_from_lora_stack, parse_rows

SD1_17 = ("BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00",
          "OUT03", "OUT04", "OUT05", "OUT06", "OUT07", "OUT08", "OUT09", "OUT10", "OUT11")
SDXL_12 = ("BASE", "IN04", "IN05", "IN07", "IN08", "M00", "OUT00", "OUT01", "OUT02", "OUT03", "OUT04", "OUT05")


def weights_of(text: str, blocks=UNET_BLOCKS) -> dict[str, float]:
    bw = parse_block_weights(text)
    return {b: bw.weight(b) for b in blocks}


# ---- layouts and presets ---------------------------------------------------------------------------------

def test_layouts_are_the_extensions():
    assert LAYOUTS[17] == SD1_17
    assert LAYOUTS[12] == SDXL_12
    assert LAYOUTS[26] == UNET_BLOCKS and len(UNET_BLOCKS) == 26
    assert LAYOUTS[20] == ("BASE", *(f"IN{i:02}" for i in range(9)), "M00", *(f"OUT{i:02}" for i in range(9)))
    assert len(FLUX_BLOCKS) == 61 and FLUX_BLOCKS[:3] == ("BASE", "T5", "IN") and FLUX_BLOCKS[-1] == "OUT"
    assert (FLUX_BLOCKS[3], FLUX_BLOCKS[21], FLUX_BLOCKS[22], FLUX_BLOCKS[59]) == ("D00", "D18", "S00", "S37")


@pytest.mark.parametrize("count", sorted(LAYOUTS))
def test_each_count_maps_values_to_its_blocks_in_order(count):
    values = [round(0.1 * i, 1) for i in range(count)]
    family = FLUX_BLOCKS if count == 61 else UNET_BLOCKS
    got = weights_of(",".join(map(str, values)), family)
    for block, value in zip(LAYOUTS[count], values, strict=True):
        assert got[block] == value
    # As in the extension: a block the layout leaves out gets 0; a layer outside every block keeps 1.
    for block in set(family) - set(LAYOUTS[count]):
        assert got[block] == 0.0, block
    assert parse_block_weights(",".join(map(str, values))).weight(None) == 1.0


EXPECTED_ONES = {
    "NONE": (), "ALL": SD1_17, "INS": ("BASE", "IN01", "IN02", "IN04"),
    "IND": ("BASE", "IN05", "IN07", "IN08"), "INALL": ("BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08"),
    "MIDD": ("BASE", "IN05", "IN07", "IN08", "M00", "OUT03", "OUT04", "OUT05", "OUT06"),
    "OUTD": ("BASE", "OUT03", "OUT04", "OUT05", "OUT06"),
    "OUTS": ("BASE", "OUT07", "OUT08", "OUT09", "OUT10", "OUT11"),
    "OUTALL": ("BASE", *(f"OUT{i:02}" for i in range(3, 12))),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_ONES))
def test_each_preset(name):
    got = weights_of(name)
    assert {b for b, v in got.items() if v == 1.0} == set(EXPECTED_ONES[name])
    assert all(v == 0.0 for b, v in got.items() if b not in EXPECTED_ONES[name])


def test_half_and_flux_presets_and_every_preset_parses():
    assert set(weights_of("ALL0.5").values()) == {0.0, 0.5}
    assert {b for b, v in weights_of("ALL0.5").items() if v == 0.5} == set(SD1_17)
    assert set(weights_of("FLUXALL", FLUX_BLOCKS).values()) == {1.0}
    assert parse_block_weights("FLUXALL").is_identity
    for name in PRESETS:
        assert parse_block_weights(name.lower()).layout is not None  # presets read case-insensitively


def test_pasted_forms_and_spacing():
    ins = weights_of("INS")
    assert weights_of("lbw=INS") == ins
    assert weights_of(" 1, 1 ,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0, ") == ins  # spaces and a trailing comma
    assert weights_of("MYPRESET:1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0") == ins  # a line of the extension's preset file
    assert weights_of("-1,0.25,1e-1,0,0,0,0,0,0,0,0,0,0,0,0,0,2")["BASE"] == -1.0


def test_empty_is_identity():
    for text in ("", "   ", None):
        bw = parse_block_weights(text)
        assert bw.is_identity and all(bw.weight(b) == 1.0 for b in (*UNET_BLOCKS, *FLUX_BLOCKS, None))
    assert not parse_block_weights("ALL").is_identity  # 17 values say 0 for IN00, IN03, … (the extension's rule)
    assert parse_block_weights(",".join(["1"] * 26)).is_identity


# ---- block=value ---------------------------------------------------------------------------------------

def test_named_entries_default_to_one():
    bw = parse_block_weights("double_blocks.0-5=0, single=0.5")
    assert [bw.weight(f"D{i:02}") for i in range(8)] == [0, 0, 0, 0, 0, 0, 1, 1]
    assert bw.weight("S00") == bw.weight("S37") == bw.weight("S40") == 0.5
    assert bw.weight("BASE") == bw.weight("IN") == bw.weight(None) == 1.0


def test_named_spellings_ranges_and_precedence():
    bw = parse_block_weights("IN05-OUT05=0.3, BASE=0, MID=2, d3=0.7, input_blocks.1=-1, ALL=0.9")
    assert [bw.weight(b) for b in ("IN04", "IN05", "IN11", "OUT05", "OUT06")] == [0.9, 0.3, 0.3, 0.3, 0.9]
    assert bw.weight("M00") == 2.0 and bw.weight("BASE") == 0.0 and bw.weight("IN01") == -1.0
    assert bw.weight("D03") == 0.7 and bw.weight(None) == 0.9
    # a single block beats its group whatever the order; among equals the later entry wins
    assert parse_block_weights("S05=1, single=0").weight("S05") == 1.0
    assert parse_block_weights("IN01-IN08=0, IN04=1").weight("IN04") == 1.0
    assert parse_block_weights("IN04=1, IN01-IN08=0").weight("IN04") == 0.0
    assert parse_block_weights("OUT05-OUT03=0").weight("OUT04") == 0.0  # a range may run backwards
    assert parse_block_weights("joint_blocks.2-3=0, CLIP=0.5").weight("J03") == 0.0
    assert parse_block_weights("joint=0.5, T5=0").weight("J23") == 0.5
    assert parse_block_weights("D10-D30=0").weight("D25") == 0.0  # past Flux's 19 double blocks


BAD = {
    "1,0,1": "hold 3 values",
    ",".join(["1"] * 18): "hold 18 values",
    "INSS": "not a known preset",
    "1,0,0,0,1,1,1,1,1,1,1,1,0,0,0,0,loud": "value 17 (OUT11) is 'loud', not a number",
    "R,1,1,1,1,1,1,1,1,1,1,1": "random (R, U)",
    "X,1,1,1,1,1,1,1,1,1,1,1": "inherited (X)",
    "IN04=0, OUT99": "has no '='",
    "HEAD=0": "'HEAD' is not a block",
    "M01=0": "'M01' is not a block",
    "IN04=much": "is 'much', not a number",
    "IN04=inf": "finite",
    "D05-OUT03=1": "spans two kinds",
    "IN02-BANANA=1": "not a range of blocks",
    "1,1,1,1,1,1,1,1,1,1,1,nan": "finite",
}


@pytest.mark.parametrize("text", sorted(BAD))
def test_errors_name_the_problem(text):
    with pytest.raises(BlockWeightsError, match=BAD[text].replace("(", r"\(").replace(")", r"\)")) as caught:
        parse_block_weights(text)
    assert isinstance(caught.value, LoraLabError) and isinstance(caught.value, ValueError)
    assert text.strip() in str(caught.value)


def test_layout_of_another_family_is_refused():
    parse_block_weights("INS").check_fits({"BASE", "IN01", "M00", "OUT03", None})
    parse_block_weights("FLUXALL").check_fits({"BASE", "T5", "D00", "S12", "IN", "OUT"})
    with pytest.raises(BlockWeightsError, match=r"17 values, the SD1.x LoRA layout.*D00.*61 values for Flux"):
        parse_block_weights("INS").check_fits({"BASE", "D00", "S01"})
    with pytest.raises(BlockWeightsError, match="Flux layout"):
        parse_block_weights("FLUXALL").check_fits({"IN04"})
    parse_block_weights("IN04=0").check_fits({"D00"})  # named entries fit every family


# ---- the block of a layer --------------------------------------------------------------------------------

SD1_DIFFUSERS = {  # kohya names of the SD1.x UNet (diffusers layout, two res blocks per level)
    "lora_unet_conv_in": "IN00",
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": "IN01",
    "lora_unet_down_blocks_0_attentions_1_proj_in": "IN02",
    "lora_unet_down_blocks_0_resnets_1_conv1": "IN02",
    "lora_unet_down_blocks_0_downsamplers_0_conv": "IN03",
    "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k": "IN04",
    "lora_unet_down_blocks_2_attentions_1_proj_out": "IN08",
    "lora_unet_down_blocks_3_resnets_1_conv2": "IN11",
    "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_2": "M00",
    "lora_unet_mid_block_resnets_1_time_emb_proj": "M00",
    "lora_unet_up_blocks_0_resnets_2_conv1": "OUT02",
    "lora_unet_up_blocks_0_upsamplers_0_conv": "OUT02",
    "lora_unet_up_blocks_1_attentions_0_proj_in": "OUT03",
    "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn1_to_out_0": "OUT11",
    "unet.up_blocks.2.attentions.1.transformer_blocks.0.attn1.to_v": "OUT07",  # PEFT spelling
    "lycoris_down_blocks_1_attentions_1_proj_in": "IN05",
    "lora_unet_time_embedding_linear_1": None,
    "lora_unet_conv_out": None,
}
LDM = {  # the host's own names (SD1.x, SD2.x, SDXL) and kohya LDM names
    "diffusion_model.input_blocks.0.0.weight": "IN00",
    "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight": "IN01",
    "diffusion_model.input_blocks.11.0.out_layers.3.weight": "IN11",
    "diffusion_model.middle_block.1.proj_in.weight": "M00",
    "diffusion_model.output_blocks.3.1.transformer_blocks.0.attn1.to_k.weight": "OUT03",
    "diffusion_model.output_blocks.10.1.proj_out.bias": "OUT10",
    "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q": "IN04",  # SDXL kohya
    "lora_unet_output_blocks_2_1_proj_in": "OUT02",
    "lora_unet_middle_block_1_transformer_blocks_9_ff_net_2": "M00",
    "diffusion_model.time_embed.0.weight": None,
    "diffusion_model.out.2.weight": None,
    "diffusion_model.label_emb.0.0.weight": None,
}
TEXT_ENCODERS = {
    "lora_te_text_model_encoder_layers_0_self_attn_q_proj": "BASE",
    "lora_te1_text_model_encoder_layers_11_mlp_fc1": "BASE",
    "lora_te2_text_model_encoder_layers_31_mlp_fc2": "BASE",
    "text_encoder.text_model.encoder.layers.0.self_attn.q_proj": "BASE",
    "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj": "BASE",
    "text_encoders.clip_l.transformer.text_model.encoder.layers.0.mlp.fc1": "BASE",
    "clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight": "BASE",
    "clip_g.transformer.text_model.encoder.layers.30.mlp.fc2.weight": "BASE",
    "t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.weight": "T5",
}
DIT = {
    "diffusion_model.double_blocks.0.img_attn.qkv.weight": "D00",
    "lora_unet_double_blocks_18_txt_mlp_2": "D18",
    "diffusion_model.single_blocks.37.linear1.weight": "S37",
    "lora_unet_single_blocks_5_linear2": "S05",
    "diffusion_model.img_in.weight": "IN",
    "diffusion_model.txt_in.weight": "IN",
    "diffusion_model.time_in.in_layer.weight": "IN",
    "diffusion_model.guidance_in.out_layer.weight": "IN",
    "diffusion_model.final_layer.linear.weight": "OUT",
    "diffusion_model.joint_blocks.23.x_block.attn.qkv.weight": "J23",
    "diffusion_model.context_embedder.weight": None,
}


@pytest.mark.parametrize("key", sorted({**SD1_DIFFUSERS, **LDM, **TEXT_ENCODERS, **DIT}))
def test_block_of(key):
    assert block_of(key) == {**SD1_DIFFUSERS, **LDM, **TEXT_ENCODERS, **DIT}[key]


def test_diffusers_and_ldm_names_agree_on_sd1_and_sdxl():
    # The host's unet_to_diffusers map for two res blocks per level: input 1+3b+i, output 3b+i.
    for b in range(4):
        for i in range(2):
            assert block_of(f"lora_unet_down_blocks_{b}_resnets_{i}_conv1") == block_of(
                f"diffusion_model.input_blocks.{1 + 3 * b + i}.0.in_layers.2.weight")
        for i in range(3):
            assert block_of(f"lora_unet_up_blocks_{b}_resnets_{i}_conv1") == block_of(
                f"diffusion_model.output_blocks.{3 * b + i}.0.in_layers.2.weight")
    # SDXL: attention in levels 1 and 2 -> the 12-value layout's IN04, IN05, IN07, IN08 and OUT00-OUT05.
    sdxl_attention = {block_of(f"lora_unet_down_blocks_{b}_attentions_{i}_proj_in") for b in (1, 2) for i in (0, 1)}
    sdxl_attention |= {block_of(f"lora_unet_up_blocks_{b}_attentions_{i}_proj_in") for b in (0, 1) for i in (0, 1, 2)}
    sdxl_attention.add(block_of("lora_unet_mid_block_attentions_0_proj_in"))
    assert sdxl_attention == set(SDXL_12) - {"BASE"}


def test_block_weight_of_a_key():
    ins = parse_block_weights("INS")
    assert ins.weight(block_of("lora_unet_down_blocks_0_attentions_0_proj_in")) == 1.0
    assert ins.weight(block_of("lora_unet_mid_block_attentions_0_proj_in")) == 0.0
    assert ins.weight(block_of("lora_te_text_model_encoder_layers_0_mlp_fc1")) == 1.0
    assert ins.weight(block_of("lora_unet_time_embedding_linear_1")) == 1.0


# ---- Stack rows ------------------------------------------------------------------------------------------

def test_stack_rows_carry_block_weights():
    rows = parse_rows('[{"lora": "a.safetensors", "block_weights": "INS"}, {"lora": "b.safetensors"},'
                      ' {"lora": "c.safetensors", "block_weights": null}]')
    assert [r.block_weights for r in rows] == ["INS", "", ""]
    item = rows[0].as_tuple()
    assert item == ("a.safetensors", 1.0, 1.0) and len(item) == 3 and isinstance(item, tuple)
    # Our own later Stack LoRAs node reads them back; another pack's plain tuples have none.
    assert [e.block_weights for e in entries_from_lora_stack([item, ("d.safetensors", 1.0, 0.5)])] == ["INS", ""]


@pytest.mark.parametrize(("value", "message"), [('"1,2"', "row 1: Block weights '1,2' hold 2 values"),
                                                ("17", "row 1: 'block_weights' must be text")])
def test_stack_row_bad_block_weights(value, message):
    with pytest.raises(StackRowsError, match=message):
        parse_rows(f'[{{"lora": "a.safetensors", "block_weights": {value}}}]')
