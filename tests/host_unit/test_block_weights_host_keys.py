"""block_of on the host's own key maps of tiny real SDXL, SD3 and Flux models: every target weight the host's LoRA
loader can patch lies in the block its name says, and a LoRA key in any spelling the host maps (kohya LDM, kohya
diffusers, diffusers/PEFT fused into a (key, offset) target) gets the block of the layer it patches."""
from __future__ import annotations

import re

import pytest
import torch

from scripts.host_import import import_comfy
from tests.support.tiny_host_models import FLUX_DIT, SD3_MMDIT, SDXL_UNET, host_model_config
from trainer.lora.block_weights import LAYOUTS, block_of

CPU = torch.device("cpu")
MODELS = {"SDXL": ("SDXL", SDXL_UNET),
          "SD3": ("SD3", {**SD3_MMDIT, "depth": 3}),
          "Flux": ("Flux", {**FLUX_DIT, "depth": 2, "depth_single_blocks": 3})}
# What the host's target weight names say: (pattern, block it must be in).
EXPECTED = (
    (r"^diffusion_model\.input_blocks\.(\d+)\.", lambda m: f"IN{int(m[1]):02}"),
    (r"^diffusion_model\.middle_block\.", lambda m: "M00"),
    (r"^diffusion_model\.output_blocks\.(\d+)\.", lambda m: f"OUT{int(m[1]):02}"),
    (r"^diffusion_model\.double_blocks\.(\d+)\.", lambda m: f"D{int(m[1]):02}"),
    (r"^diffusion_model\.single_blocks\.(\d+)\.", lambda m: f"S{int(m[1]):02}"),
    (r"^diffusion_model\.joint_blocks\.(\d+)\.", lambda m: f"J{int(m[1]):02}"),
    (r"^diffusion_model\.(img_in|txt_in|time_in|vector_in|guidance_in)\.", lambda m: "IN"),
    (r"^diffusion_model\.final_layer\.", lambda m: "OUT"),
)


@pytest.fixture(scope="module")
def key_maps() -> dict[str, dict]:
    comfy = import_comfy()
    maps = {}
    for family, (config_class, unet_config) in MODELS.items():
        model = host_model_config(comfy, config_class, unet_config).get_model({})
        maps[family] = comfy.lora.model_lora_keys_unet(model, {})
    return maps


def target_of(value) -> str:
    return value if isinstance(value, str) else value[0]


def expected_block(target: str) -> str | None:
    for pattern, block in EXPECTED:
        match = re.match(pattern, target)
        if match:
            return block(match)
    return None


@pytest.mark.parametrize("family", list(MODELS))
def test_every_host_target_is_in_the_block_its_name_says(key_maps, family):
    targets = {target_of(v) for v in key_maps[family].values()}
    wrong = {t: block_of(t) for t in targets if block_of(t) != expected_block(t)}
    assert wrong == {}
    blocks = {block_of(t) for t in targets}
    expected = {"SDXL": {"IN00", "IN08", "M00", "OUT00", "OUT08"}, "SD3": {"J00", "J02"},
                "Flux": {"D00", "D01", "S00", "S02", "IN", "OUT"}}[family]
    assert expected <= blocks


@pytest.mark.parametrize("family", list(MODELS))
def test_lora_keys_in_every_spelling_get_their_targets_block(key_maps, family):
    # kohya diffusers names (lora_unet_down_blocks_…) are mapped by our own rule, two res blocks per level:
    # the same block as the host's unet_to_diffusers map gives.
    kohya = {k: target_of(v) for k, v in key_maps[family].items() if k.startswith("lora_unet_")}
    wrong = {k: (block_of(k), block_of(t)) for k, t in kohya.items() if block_of(k) != block_of(t)}
    assert wrong == {}
    in_blocks = {k for k, t in kohya.items() if block_of(t) is not None}
    assert len(in_blocks) > 10
    if family == "SDXL":
        assert any(k.startswith("lora_unet_down_blocks_") for k in in_blocks)
        assert any(k.startswith("lora_unet_up_blocks_") for k in in_blocks)
    # Diffusers/PEFT names of the DiTs map to (key, offset) slices of fused weights: the slice's block counts.
    fused = [v for v in key_maps[family].values() if not isinstance(v, str)]
    if family == "Flux":
        assert fused and all(block_of(target_of(v)) is not None for v in fused)


def test_sdxl_attention_lies_in_the_12_value_layout(key_maps):
    attention = {block_of(target_of(v)) for v in key_maps["SDXL"].values() if ".transformer_blocks." in target_of(v)}
    assert attention == set(LAYOUTS[12]) - {"BASE"}
