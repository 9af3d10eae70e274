"""Tests of key normalisation to host (kohya) keys, PEFT alpha handling, trigger words, summary and base-model hints."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch

from scripts.lora_fixtures import FORMATS, SD1_TARGETS, Target, write_format, write_sdxl_only
from trainer.adapters.delta import delta_weight, module_delta_shape
from trainer.adapters.lora import lora_delta
from trainer.errors import LoraFileError
from trainer.lora.file import LoraFile, load_lora_file, parse_lora
from trainer.lora.host_keys import entry_roles, host_modules, host_prefix, module_delta_numel, peft_alpha
from trainer.lora.info import base_model, base_model_hint, base_model_label, summary, trigger_words
from trainer.lora.keys import SCHEME_DIFFUSERS

HOST_HEADS = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", "lycoris_", "diffusion_model.", "text_encoders.")
Q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
KOHYA_Q = "lora_unet_" + Q.replace(".", "_")
KOHYA_TE_Q = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"


def _host_keys(lora: LoraFile) -> dict[str, torch.Tensor]:
    """All keys the host adapter hands to the host's `load_lora`, as `nodes/host/patching.py` flattens them."""
    return {key: tensor for entries in host_modules(lora).values() for key, tensor in entries.items()}


def _shape(target: Target) -> tuple[int, ...]:
    k = {"linear": None, "conv1x1": 1, "conv3x3": 3}[target.kind]
    return (target.out_features, target.in_features) + (() if k is None else (k, k))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("alpha", [None, 8.0])
def test_host_keys_keep_the_delta_and_apply_the_intended_scale(tmp_path: Path, fmt: str,
                                                               alpha: float | None) -> None:
    fixture = write_format(fmt, tmp_path / f"{fmt}.safetensors", SD1_TARGETS, rank=4, alpha=alpha)
    original = load_lora_file(fixture.path)
    host = parse_lora(_host_keys(original), {}, "host")
    assert all(key.startswith(HOST_HEADS) for key in _host_keys(original))
    assert host.unrecognised_keys == ()
    by_host = host_modules(original)
    assert set(by_host) == set(host.modules)
    for target, prefix in fixture.prefixes.items():
        module = original.modules[prefix]
        host_module = host.modules[host_prefix(module, original)]
        entries = by_host[host_prefix(module, original)]  # what the adapter checks and hands to the host
        shape = _shape(target)
        assert module_delta_numel(entries) == math.prod(module_delta_shape(module.tensors) or ()) \
            == torch.Size(shape).numel()
        torch.testing.assert_close(delta_weight(entry_roles(entries), shape), delta_weight(host_module.tensors, shape))
        after = delta_weight(host_module.tensors, shape)
        if module.kind == "lora":
            t = module.tensors
            expected = (lora_delta(t["up"], t["down"], t.get("mid")) * fixture.scales[target]).reshape(shape)
            torch.testing.assert_close(after, expected)
        else:
            torch.testing.assert_close(after, delta_weight(module.tensors, shape))
        assert after.abs().mean() > 1e-3, "fixture deltas must be clearly visible"


def test_peft_keys_become_kohya_with_explicit_alpha(tmp_path: Path) -> None:
    fixture = write_format("peft", tmp_path / "p.safetensors", SD1_TARGETS, rank=4, alpha=2.0)
    host = _host_keys(load_lora_file(fixture.path))
    assert torch.equal(host[f"{KOHYA_Q}.lora_down.weight"], fixture.tensors[f"unet.{Q}.lora_A.weight"])
    assert torch.equal(host[f"{KOHYA_Q}.lora_up.weight"], fixture.tensors[f"unet.{Q}.lora_B.weight"])
    assert host[f"{KOHYA_Q}.alpha"].dim() == 0 and host[f"{KOHYA_Q}.alpha"].item() == 2.0
    assert f"{KOHYA_TE_Q}.lora_down.weight" in host
    assert "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight" in host


def test_peft_without_metadata_alpha_is_rank(tmp_path: Path) -> None:
    fixture = write_format("peft", tmp_path / "p.safetensors", SD1_TARGETS, rank=4)
    host = _host_keys(load_lora_file(fixture.path))
    assert host[f"{KOHYA_Q}.alpha"].item() == 4.0


@pytest.mark.parametrize("fmt, down_key", [
    ("diffusers_legacy", f"unet.{Q.removesuffix('.to_q')}.processor.to_q_lora.down.weight"),
    ("diffusers", f"unet.{Q}.lora.down.weight"),
])
def test_diffusers_spellings_map_to_the_same_kohya_names(tmp_path: Path, fmt: str, down_key: str) -> None:
    fixture = write_format(fmt, tmp_path / "d.safetensors", SD1_TARGETS, rank=4)
    assert down_key in fixture.tensors
    host = _host_keys(load_lora_file(fixture.path))
    assert torch.equal(host[f"{KOHYA_Q}.lora_down.weight"], fixture.tensors[down_key])
    assert f"{KOHYA_TE_Q}.lora_up.weight" in host


def test_legacy_to_out_becomes_to_out_0() -> None:
    tensors = {"unet.mid_block.attentions.0.transformer_blocks.0.attn2.processor.to_out_lora.down.weight":
               torch.ones(2, 8),
               "unet.mid_block.attentions.0.transformer_blocks.0.attn2.processor.to_out_lora.up.weight":
               torch.ones(8, 2)}
    host = _host_keys(parse_lora(tensors, {}, "legacy"))
    assert "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_out_0.lora_up.weight" in host


def test_text_encoder_2_uses_te1_and_te2_prefixes(tmp_path: Path) -> None:
    targets = [Target("text_model.encoder.layers.0.mlp.fc1", "linear", 8, 4, component="te"),
               Target("text_model.encoder.layers.0.mlp.fc1", "linear", 8, 4, component="te2")]
    fixture = write_format("diffusers", tmp_path / "te.safetensors", targets, rank=2)
    assert "text_encoder_2.text_model.encoder.layers.0.mlp.fc1.lora_linear_layer.down.weight" in fixture.tensors
    host = _host_keys(load_lora_file(fixture.path))
    assert {k.split(".")[0] for k in host} == {"lora_te1_text_model_encoder_layers_0_mlp_fc1",
                                               "lora_te2_text_model_encoder_layers_0_mlp_fc1"}


def test_passthrough_formats_keep_their_keys(tmp_path: Path) -> None:
    for fmt in ("kohya", "kohya_ldm", "loha", "lokr", "comfyui_native", "lycoris_prefix", "locon_tucker"):
        fixture = write_format(fmt, tmp_path / f"{fmt}.safetensors", SD1_TARGETS, rank=2, alpha=1.0)
        host = _host_keys(load_lora_file(fixture.path))
        assert host.keys() == fixture.tensors.keys(), fmt


def test_peft_dora_magnitude_becomes_dora_scale(tmp_path: Path) -> None:
    fixture = write_format("peft_dora", tmp_path / "pd.safetensors", SD1_TARGETS, rank=2)
    host = _host_keys(load_lora_file(fixture.path))
    assert host[f"{KOHYA_Q}.dora_scale"].shape == (8, 1)
    assert host["lora_unet_down_blocks_0_resnets_0_conv1.dora_scale"].shape == (8, 1, 1, 1)
    assert not any("magnitude" in k for k in host)


def test_dora_magnitude_of_wrong_size() -> None:
    tensors = {"unet.a.to_q.lora_A.weight": torch.ones(2, 8), "unet.a.to_q.lora_B.weight": torch.ones(8, 2),
               "unet.a.to_q.lora_magnitude_vector": torch.ones(5)}
    with pytest.raises(LoraFileError, match="DoRA magnitude has 5 values but the layer has 8 outputs"):
        _host_keys(parse_lora(tensors, {}, "m"))


def test_same_layer_twice_is_refused() -> None:
    tensors = {f"{KOHYA_Q}.lora_down.weight": torch.ones(2, 8), f"{KOHYA_Q}.lora_up.weight": torch.ones(8, 2),
               f"unet.{Q}.lora_A.weight": torch.ones(2, 8), f"unet.{Q}.lora_B.weight": torch.ones(8, 2)}
    with pytest.raises(LoraFileError, match="two modules both become"):
        _host_keys(parse_lora(tensors, {}, "dup"))


def test_unrecognised_keys_are_not_handed_to_the_host(caplog: pytest.LogCaptureFixture) -> None:
    # The log said such keys "are passed on as-is" while host_modules, the shipped path, drops them.
    tensors = {f"{KOHYA_Q}.lora_down.weight": torch.ones(2, 8), f"{KOHYA_Q}.lora_up.weight": torch.ones(8, 2),
               "lora_unet_x.oft_blocks": torch.ones(2, 2, 2)}
    with caplog.at_level(logging.WARNING, logger="trainer.lora.file"):
        lora = parse_lora(tensors, {}, "u")
    assert lora.unrecognised_keys == ("lora_unet_x.oft_blocks",)
    assert "lora_unet_x.oft_blocks" not in _host_keys(lora)
    assert set(host_modules(lora)) == {KOHYA_Q}
    assert "1 keys belong to no LoRA module and are ignored" in caplog.text


def test_numel_from_host_entries() -> None:
    entries = {"lora_unet_c.lora_down.weight": torch.ones(2, 320, 3, 3),
               "lora_unet_c.lora_up.weight": torch.ones(640, 2, 1, 1), "lora_unet_c.alpha": torch.tensor(1.0)}
    assert set(entry_roles(entries)) == {"down", "up", "alpha"}
    assert module_delta_numel(entries) == 640 * 320 * 9
    assert module_delta_numel({"m.lora_A.weight": torch.ones(2, 5), "m.lora_B.weight": torch.ones(7, 2)}) == 35
    assert module_delta_numel({"lora_unet_n.diff_b": torch.ones(4)}) is None
    with pytest.raises(LoraFileError, match="ends in no known LoRA suffix"):
        entry_roles({"lora_unet_x.oft_blocks": torch.ones(2, 2, 2)})


def _meta(config: dict[str, object]) -> dict[str, str]:
    return {"lora_adapter_metadata": json.dumps(config)}


@pytest.mark.parametrize("metadata, component, expected", [
    ({}, "unet", 4.0),
    (_meta({"unet.r": 4, "unet.lora_alpha": 8}), "unet", 8.0),
    (_meta({"unet.lora_alpha": 8, "text_encoder.lora_alpha": 2}), "text_encoder", 2.0),
    (_meta({"r": 4, "lora_alpha": 1}), None, 1.0),
    (_meta({"r": 4, "lora_alpha": 1}), "unet", 1.0),
    (_meta({"unet.lora_alpha": 4, "unet.alpha_pattern": {"attn1.to_q": 16}}), "unet", 16.0),
    (_meta({"unet.lora_alpha": 2, "unet.use_rslora": True}), "unet", 4.0),  # 2 * sqrt(4)
    ({"lora_adapter_metadata": "{not json"}, "unet", 4.0),
])
def test_peft_alpha(metadata: dict[str, str], component: str | None, expected: float) -> None:
    assert peft_alpha(metadata, component, Q, rank=4) == expected


def test_alpha_pattern_only_hits_matching_modules(tmp_path: Path) -> None:
    meta = _meta({"unet.r": 4, "unet.lora_alpha": 4, "unet.alpha_pattern": {"attn1.to_q": 16}})
    fixture = write_format("peft", tmp_path / "ap.safetensors", SD1_TARGETS, rank=4, metadata=meta)
    host = _host_keys(load_lora_file(fixture.path))
    assert host[f"{KOHYA_Q}.alpha"].item() == 16.0
    assert host["lora_unet_down_blocks_0_attentions_0_proj_in.alpha"].item() == 4.0


def test_bare_and_peft_wrapped_names_are_unet() -> None:
    for head in ("", "base_model.model."):
        tensors = {f"{head}{Q}.lora_A.weight": torch.ones(2, 8), f"{head}{Q}.lora_B.weight": torch.ones(8, 2)}
        lora = parse_lora(tensors, {}, "bare")
        assert next(iter(lora.modules.values())).scheme.scheme == SCHEME_DIFFUSERS
        assert set(_host_keys(lora)) == {f"{KOHYA_Q}.lora_down.weight", f"{KOHYA_Q}.lora_up.weight",
                                           f"{KOHYA_Q}.alpha"}


def test_trigger_words_order_and_dedup() -> None:
    datasets = [{"subsets": [{"class_tokens": "sks dog"}, {"class_tokens": None}]},
                {"subsets": [{"class_tokens": "zwx cat, SKS DOG"}]}]
    metadata = {"modelspec.trigger_phrase": "sks dog, photo of sks ,", "ss_datasets": json.dumps(datasets)}
    assert trigger_words(metadata) == ["sks dog", "photo of sks", "zwx cat"]
    assert trigger_words({"ss_datasets": "[{broken"}) == []
    assert trigger_words({"ss_datasets": json.dumps({"not": "a list"})}) == []
    assert trigger_words({}) == []


def test_base_model_from_metadata() -> None:
    assert base_model({"ss_base_model_version": "sd_v1", "modelspec.architecture": "x"}) == "sd_v1"
    assert base_model({"modelspec.architecture": "stable-diffusion-xl-v1-base/lora"}).startswith("stable-diff")
    assert base_model({}) is None


def test_summary(tmp_path: Path) -> None:
    meta = {"ss_base_model_version": "sd_v1", "modelspec.trigger_phrase": "sks"}
    fixture = write_format("kohya", tmp_path / "s.safetensors", SD1_TARGETS, rank=4, alpha=2.0, metadata=meta)
    info = summary(load_lora_file(fixture.path))
    assert info["formats"] == ["kohya", "locon"] and info["ranks"] == [4] and info["alpha"] == 2.0
    assert info["modules"] == len(SD1_TARGETS) and info["module_kinds"] == {"lora": len(SD1_TARGETS)}
    assert info["base_model"] == "sd_v1" and info["base_model_hint"] == "sd1"
    assert info["trigger_words"] == ["sks"] and info["unrecognised_keys"] == 0
    assert info["format_names"][0].startswith("kohya")


@pytest.mark.parametrize("with_metadata", [True, False])
def test_sdxl_hint(tmp_path: Path, with_metadata: bool) -> None:
    lora = load_lora_file(write_sdxl_only(tmp_path / "xl.safetensors", with_metadata=with_metadata).path)
    assert base_model_hint(lora) == "sdxl" and base_model_label("sdxl") == "SDXL"


@pytest.mark.parametrize("width, expected", [(768, "sd1"), (1024, "sd2"), (2048, "sdxl")])
def test_hint_from_cross_attention_width(width: int, expected: str) -> None:
    prefix = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
    tensors = {f"{prefix}.lora_down.weight": torch.ones(2, width), f"{prefix}.lora_up.weight": torch.ones(640, 2)}
    assert base_model_hint(parse_lora(tensors, {}, "w")) == expected


@pytest.mark.parametrize("prefix, width, expected", [
    (KOHYA_TE_Q, 768, "sd1"), (KOHYA_TE_Q, 1024, "sd2"),
    ("lora_unet_double_blocks_0_img_attn_qkv", 8, "flux"), ("lora_unet_joint_blocks_0_x_block_attn_qkv", 8, "sd3"),
    ("lora_unet_input_blocks_7_1_transformer_blocks_3_attn1_to_q", 8, "sdxl"),
    ("lora_unet_something_else", 8, None),
])
def test_hint_from_names(prefix: str, width: int, expected: str | None) -> None:
    tensors = {f"{prefix}.lora_down.weight": torch.ones(2, width), f"{prefix}.lora_up.weight": torch.ones(8, 2)}
    assert base_model_hint(parse_lora(tensors, {}, "n")) == expected
    assert base_model_label(None) == "an unknown model"


def test_other_peft_names_pass_through_with_metadata_alpha() -> None:
    prefix = "transformer.single_transformer_blocks.0.attn.to_q"
    tensors = {f"{prefix}.lora_A.weight": torch.ones(2, 8), f"{prefix}.lora_B.weight": torch.ones(8, 2)}
    lora = parse_lora(tensors, _meta({"transformer.r": 2, "transformer.lora_alpha": 1}), "flux")
    host = _host_keys(lora)
    assert set(host) == set(tensors) | {f"{prefix}.alpha"} and host[f"{prefix}.alpha"].item() == 1.0


def test_lokr_tucker_is_handed_over_as_full_factors_with_the_same_delta() -> None:
    gen = torch.Generator().manual_seed(2)
    roles = {"lokr_w1_a": torch.randn(2, 1, generator=gen), "lokr_w1_b": torch.randn(1, 2, generator=gen),
             "lokr_w2_a": torch.randn(2, 3, generator=gen), "lokr_w2_b": torch.randn(2, 4, generator=gen),
             "lokr_t2": torch.randn(2, 2, 3, 3, generator=gen), "alpha": torch.tensor(3.0)}
    lora = parse_lora({f"lora_unet_c.{k}": v for k, v in roles.items()}, {}, "lokr_tucker")
    entries = host_modules(lora)["lora_unet_c"]
    assert set(entries) == {"lora_unet_c.lokr_w1", "lora_unet_c.lokr_w2"}
    torch.testing.assert_close(delta_weight(entry_roles(entries), (6, 8, 3, 3)), delta_weight(roles, (6, 8, 3, 3)))
