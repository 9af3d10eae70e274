"""Tests of LoRA parsing: every format's modules and kinds are recognised, every validation message is reached."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from scripts.lora_fixtures import (
    FORMATS,
    SD1_TARGETS,
    Target,
    write_format,
    write_full_checkpoint,
    write_html,
    write_nan,
    write_pickle_pt,
    write_rank_mismatch,
    write_sdxl_only,
    write_truncated,
)
from trainer.errors import LoraFileError, LoraShapeError, LoraValueError, NotALoraError
from trainer.lora.file import FORMAT_NAMES, load_lora_file, parse_lora
from trainer.lora.keys import SCHEME_COMFYUI, SCHEME_DIFFUSERS, SCHEME_KOHYA, SCHEME_LYCORIS, classify_prefix

# Formats each fixture must be detected as (a subset of what parse_lora reports).
EXPECTED_FORMATS = {
    "kohya": {"kohya", "locon"},
    "kohya_ldm": {"kohya_ldm", "locon"},
    "locon_tucker": {"kohya", "locon_tucker"},
    "loha": {"loha"},
    "lokr": {"lokr"},
    "dora": {"kohya", "dora"},
    "comfyui_native": {"comfyui_native"},
    "diffusers_legacy": {"diffusers_legacy"},
    "peft": {"peft"},
    "peft_dora": {"peft", "dora"},
    "diffusers": {"diffusers", "transformers_te"},
    "lycoris_prefix": {"lycoris_prefix"},
}
EXPECTED_KINDS = {"loha": "loha", "lokr": "lokr"}


def _kohya(prefix: str, down: torch.Tensor, up: torch.Tensor, alpha: float | None = 1.0) -> dict[str, torch.Tensor]:
    out = {f"{prefix}.lora_down.weight": down, f"{prefix}.lora_up.weight": up}
    if alpha is not None:
        out[f"{prefix}.alpha"] = torch.tensor(alpha)
    return out


GOOD = _kohya("lora_unet_down_blocks_0_attentions_0_proj_in", torch.ones(2, 8), torch.ones(8, 2))


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_parses_into_modules(tmp_path: Path, fmt: str) -> None:
    fixture = write_format(fmt, tmp_path / f"{fmt}.safetensors", SD1_TARGETS, rank=4, alpha=8.0)
    lora = load_lora_file(fixture.path)
    assert EXPECTED_FORMATS[fmt] <= set(lora.formats), lora.formats
    assert set(lora.modules) == set(fixture.prefixes.values())
    assert lora.unrecognised_keys == ()
    assert all(m.kind == EXPECTED_KINDS.get(fmt, "lora") for m in lora.modules.values())
    assert all(f in FORMAT_NAMES for f in lora.formats)
    if fmt in ("dora", "peft_dora"):
        assert all(m.is_dora for m in lora.modules.values())
    if fmt == "locon_tucker":
        assert any(m.has_mid for m in lora.modules.values())


def test_kohya_module_details(tmp_path: Path) -> None:
    fixture = write_format("kohya", tmp_path / "k.safetensors", SD1_TARGETS, rank=4, alpha=2.0)
    lora = load_lora_file(fixture.path)
    module = lora.modules["lora_unet_down_blocks_0_resnets_0_conv1"]
    assert module.kind == "lora" and module.style == "kohya" and module.rank == 4 and module.alpha == 2.0
    assert module.tensors["down"].shape == (4, 4, 3, 3) and module.tensors["up"].shape == (8, 4, 1, 1)
    assert module.keys["down"] == "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight"
    assert lora.ranks == [4] and lora.alphas == [2.0] and lora.format == "kohya+locon"


def test_native_output_with_diff_and_bias(tmp_path: Path) -> None:
    targets = [Target("down_blocks.0.resnets.0.conv1", "conv3x3", 8, 4, "input_blocks.1.0.in_layers.2",
                      has_bias=True),
               Target("down_blocks.0.resnets.0.norm1", "norm", 4, 4, "input_blocks.1.0.in_layers.0")]
    fixture = write_format("comfyui_native", tmp_path / "n.safetensors", targets, rank=2)
    lora = load_lora_file(fixture.path)
    conv = lora.modules["diffusion_model.input_blocks.1.0.in_layers.2"]
    norm = lora.modules["diffusion_model.input_blocks.1.0.in_layers.0"]
    assert conv.kind == "lora" and conv.tensors["down"].shape == (2, 36) and "diff_b" in conv.tensors
    assert norm.kind == "diff" and set(norm.tensors) == {"diff", "diff_b"}
    assert conv.scheme.scheme == SCHEME_COMFYUI and lora.formats == ("comfyui_native",)


@pytest.mark.parametrize("prefix, scheme, component, layout", [
    ("lora_unet_down_blocks_0_attentions_0_proj_in", SCHEME_KOHYA, "unet", "diffusers"),
    ("lora_unet_input_blocks_4_1_proj_in", SCHEME_KOHYA, "unet", "ldm"),
    ("lora_te_text_model_encoder_layers_0_mlp_fc1", SCHEME_KOHYA, "te", "unknown"),
    ("lora_te1_text_model_encoder_layers_0_mlp_fc1", SCHEME_KOHYA, "te1", "unknown"),
    ("lora_te2_text_model_encoder_layers_0_mlp_fc1", SCHEME_KOHYA, "te2", "unknown"),
    ("lycoris_down_blocks_0_attentions_0_proj_in", SCHEME_LYCORIS, "unet", "diffusers"),
    ("diffusion_model.input_blocks.1.1.proj_in", SCHEME_COMFYUI, "unet", "ldm"),
    ("text_encoders.clip_l.transformer.text_model.encoder.layers.0.mlp.fc1", SCHEME_COMFYUI, "te", "unknown"),
    ("unet.down_blocks.0.attentions.0.proj_in", SCHEME_DIFFUSERS, "unet", "diffusers"),
    ("text_encoder.text_model.encoder.layers.0.mlp.fc1", SCHEME_DIFFUSERS, "te", "unknown"),
    ("text_encoder_2.text_model.encoder.layers.0.mlp.fc1", SCHEME_DIFFUSERS, "te2", "unknown"),
    ("base_model.model.down_blocks.0.attentions.0.proj_in", SCHEME_DIFFUSERS, "unet", "diffusers"),
])
def test_prefix_schemes(prefix: str, scheme: str, component: str, layout: str) -> None:
    found = classify_prefix(prefix)
    assert (found.scheme, found.component, found.layout) == (scheme, component, layout)


def test_unknown_and_unpaired_keys_are_collected_not_errors() -> None:
    tensors = {**GOOD,
               "lora_unet_orphan.lora_down.weight": torch.ones(2, 8),  # no lora_up
               "lora_unet_lonely.alpha": torch.tensor(1.0),  # alpha with no weights
               "lora_unet_x.something_else": torch.ones(1)}
    lora = parse_lora(tensors, {}, "mixed.safetensors")
    assert list(lora.modules) == ["lora_unet_down_blocks_0_attentions_0_proj_in"]
    assert set(lora.unrecognised_keys) == {"lora_unet_orphan.lora_down.weight", "lora_unet_lonely.alpha",
                                           "lora_unet_x.something_else"}


def test_no_tensors() -> None:
    with pytest.raises(NotALoraError, match="'e.safetensors' contains no tensors at all"):
        parse_lora({}, {}, "e.safetensors")


def test_no_lora_keys() -> None:
    tensors = {"foo": torch.ones(1), "bar.lora_down.weight": torch.ones(2, 2)}
    with pytest.raises(NotALoraError, match="contains no usable LoRA modules.*lora_down \\+ lora_up"):
        parse_lora(tensors, {}, "odd.safetensors")


def test_full_checkpoint_is_refused(tmp_path: Path) -> None:
    path = write_full_checkpoint(tmp_path / "model.safetensors")
    with pytest.raises(NotALoraError, match="is a full Stable Diffusion checkpoint .*not a LoRA.*"
                                            "model.diffusion_model.input_blocks.0.0.*checkpoint"):
        load_lora_file(path)


def test_unet_only_weights_are_refused() -> None:
    tensors = {"diffusion_model.input_blocks.0.0.weight": torch.ones(2, 2),
               "diffusion_model.input_blocks.0.0.bias": torch.ones(2)}
    with pytest.raises(NotALoraError, match="is a diffusion model \\(UNet\\) file, not a LoRA"):
        parse_lora(tensors, {}, "unet.safetensors")


def test_nan_names_the_key(tmp_path: Path) -> None:
    key = write_nan(tmp_path / "nan.safetensors")
    with pytest.raises(LoraValueError, match=f"tensor '{key}' contains 1 NaN/Inf value") as info:
        load_lora_file(tmp_path / "nan.safetensors")
    assert info.value.key == key


def test_inf_alpha() -> None:
    tensors = {**GOOD, "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(float("inf"))}
    with pytest.raises(LoraValueError, match="proj_in.alpha' contains 1 NaN/Inf"):
        parse_lora(tensors, {}, "inf.safetensors")


def test_alpha_not_scalar() -> None:
    tensors = {**GOOD, "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.ones(2)}
    with pytest.raises(LoraValueError, match="alpha .* has shape \\[2\\]; expected a single number"):
        parse_lora(tensors, {}, "a.safetensors")


def test_rank_mismatch_names_module_and_ranks(tmp_path: Path) -> None:
    prefix = write_rank_mismatch(tmp_path / "rm.safetensors", rank=2)
    with pytest.raises(LoraShapeError, match=f"module '{prefix}' has lora_down of shape .*\\(rank 2\\) but "
                                             "lora_up of shape .*\\(rank 3\\); the ranks must match"):
        load_lora_file(tmp_path / "rm.safetensors")


def test_peft_rank_mismatch_uses_peft_names() -> None:
    tensors = {"unet.a.to_q.lora_A.weight": torch.ones(2, 8), "unet.a.to_q.lora_B.weight": torch.ones(8, 3)}
    with pytest.raises(LoraShapeError, match="down \\(lora_A\\) of shape \\[2, 8\\]"):
        parse_lora(tensors, {}, "p.safetensors")


def test_mid_mismatch() -> None:
    tensors = {**_kohya("lora_unet_c", torch.ones(2, 4, 1, 1), torch.ones(8, 2, 1, 1)),
               "lora_unet_c.lora_mid.weight": torch.ones(3, 2, 3, 3)}
    with pytest.raises(LoraShapeError, match="lora_mid must be \\[up rank, down rank, kh, kw\\]"):
        parse_lora(tensors, {}, "mid.safetensors")


def test_bad_weight_rank() -> None:
    with pytest.raises(LoraShapeError, match="expected 2-D or 4-D"):
        parse_lora(_kohya("lora_unet_c", torch.ones(2), torch.ones(8, 2)), {}, "1d.safetensors")


@pytest.mark.parametrize("tensors, message", [
    ({"m.hada_w1_a": torch.ones(8, 2), "m.hada_w1_b": torch.ones(3, 8), "m.hada_w2_a": torch.ones(8, 2),
      "m.hada_w2_b": torch.ones(2, 8)}, "hada_w1_a of shape \\[8, 2\\] and hada_w1_b of shape \\[3, 8\\]"),
    ({"m.hada_w1_a": torch.ones(8, 2), "m.hada_w1_b": torch.ones(2, 8), "m.hada_w2_a": torch.ones(4, 2),
      "m.hada_w2_b": torch.ones(2, 8)}, "of different output shapes"),
    ({"m.hada_w1_a": torch.ones(8), "m.hada_w1_b": torch.ones(2, 8), "m.hada_w2_a": torch.ones(8, 2),
      "m.hada_w2_b": torch.ones(2, 8)}, "expected 2-D factors"),
    ({"m.lokr_w1": torch.ones(2, 2), "m.lokr_w2_a": torch.ones(4, 2), "m.lokr_w2_b": torch.ones(3, 4)},
     "lokr_w2_a of shape \\[4, 2\\] and lokr_w2_b of shape \\[3, 4\\]: ranks 2 and 3 differ"),
])
def test_lycoris_rank_mismatch(tensors: dict[str, torch.Tensor], message: str) -> None:
    with pytest.raises(LoraShapeError, match=message):
        parse_lora(tensors, {}, "ly.safetensors")


def test_incomplete_lycoris_modules_are_unrecognised() -> None:
    tensors = {**GOOD, "m.hada_w1_a": torch.ones(8, 2), "k.lokr_w1": torch.ones(2, 2)}
    lora = parse_lora(tensors, {}, "partial.safetensors")
    assert set(lora.unrecognised_keys) == {"m.hada_w1_a", "k.lokr_w1"}


def test_two_spellings_of_one_role() -> None:
    tensors = {**_kohya("unet.a", torch.ones(2, 8), torch.ones(8, 2)), "unet.a.lora_A.weight": torch.ones(2, 8)}
    with pytest.raises(LoraFileError, match="module 'unet.a' has two 'down' tensors"):
        parse_lora(tensors, {}, "two.safetensors")


def test_mixed_kinds_in_one_module() -> None:
    tensors = {**GOOD, "lora_unet_down_blocks_0_attentions_0_proj_in.hada_w1_a": torch.ones(8, 2)}
    with pytest.raises(LoraFileError, match="mixes lora and loha tensors"):
        parse_lora(tensors, {}, "mix.safetensors")


@pytest.mark.parametrize("writer, message", [
    (write_truncated, "is truncated"),
    (write_html, "HTML"),
    (write_pickle_pt, "pickle"),
])
def test_file_level_errors_reach_load_lora_file(tmp_path: Path, writer, message: str) -> None:  # type: ignore
    suffix = ".pt" if writer is write_pickle_pt else ".safetensors"
    path = tmp_path / f"bad{suffix}"
    writer(path)
    with pytest.raises(LoraFileError, match=message):
        load_lora_file(path)


def test_sdxl_fixture_parses(tmp_path: Path) -> None:
    lora = load_lora_file(write_sdxl_only(tmp_path / "xl.safetensors").path)
    components = {m.scheme.component for m in lora.modules.values()}
    assert components == {"unet", "te1", "te2"} and "kohya_ldm" in lora.formats


def test_bf16_values_are_checked(tmp_path: Path) -> None:
    fixture = write_format("comfyui_native", tmp_path / "bf.safetensors", SD1_TARGETS[:1], rank=2,
                           dtype=torch.bfloat16)
    lora = load_lora_file(fixture.path)
    assert next(iter(lora.modules.values())).tensors["up"].dtype == torch.bfloat16
