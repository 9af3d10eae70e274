"""kohya export: key names, shapes, dtype, finiteness, metadata and hashes through a real safetensors file."""

from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path

import pytest
import torch

from tests.support.reference import merge_weight
from tests.support.tiny_models import attach, config, make_model
from trainer.errors import LoraExportError, LoraValueError
from trainer.safetensors_io import read_safetensors
from trainer.training.config import LoraShape, TrainConfig
from trainer.training.export import TrainingSummary, export_lora, kohya_metadata, model_hashes, save_lora
from trainer.training.trainable_lora import LoraAdapterSet

BLOCK = "attn.transformer_blocks.0"
KOHYA_BLOCK = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0"


def _adapters() -> tuple[torch.nn.Module, LoraAdapterSet, dict[str, str]]:
    model = make_model()
    adapters = attach(model, LoraShape(rank=4, alpha=2.0, targets="attention_ff_conv"))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in adapters.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    name_map = {k: (KOHYA_BLOCK + k[len(BLOCK):] if k.startswith(BLOCK) else "lora_unet_" + k).replace(".", "_")
                for k in adapters.keys()}
    return model, adapters, name_map


def _summary() -> TrainingSummary:
    return TrainingSummary(output_name="my_char", num_train_images=12, resolution=(512, 768), steps_completed=500,
                           tag_frequency={"10_mychar": {"mychar": 12, "red hair": 5}}, trigger_phrase="mychar",
                           dataset_dirs={"10_mychar": {"n_repeats": 10, "img_count": 12}})


def test_export_keys_shapes_dtype() -> None:
    _, adapters, name_map = _adapters()
    tensors = export_lora(adapters, name_map)
    q = f"{KOHYA_BLOCK}_attn1_to_q"
    assert tensors[f"{q}.lora_down.weight"].shape == (4, 16) and tensors[f"{q}.lora_down.weight"].dtype == torch.float16
    assert tensors[f"{q}.lora_up.weight"].shape == (16, 4)
    assert tensors[f"{KOHYA_BLOCK}_attn1_to_out_0.alpha"].shape == () and tensors[f"{q}.alpha"].item() == 2.0
    assert tensors["lora_unet_res_in_layers_2.lora_down.weight"].shape == (4, 16, 3, 3)
    assert tensors["lora_unet_res_in_layers_2.lora_up.weight"].shape == (16, 4, 1, 1)
    assert len(tensors) == 3 * len(adapters)
    assert export_lora(adapters, name_map, dtype=torch.float32)[f"{q}.lora_up.weight"].dtype == torch.float32


def test_file_round_trip_merges_like_the_engine(tmp_path: Path) -> None:
    model, adapters, name_map = _adapters()
    cfg = config(steps=500, lora=LoraShape(rank=4, alpha=2.0, targets="attention_ff_conv"))
    metadata = kohya_metadata(cfg, _summary(), "sd_v1", now=datetime.datetime(2025, 1, 2, 3, 4, 5, 678))
    tensors = export_lora(adapters, name_map, dtype=torch.float32)
    written = save_lora(tmp_path / "my_char.safetensors", tensors, metadata)
    loaded, read_metadata = read_safetensors(tmp_path / "my_char.safetensors")
    assert read_metadata == written and set(loaded) == set(tensors)
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())
    assert TrainConfig.from_metadata(read_metadata) == cfg
    # the loader-side math on the file equals the engine's merged delta
    key = "res.in_layers.2"
    prefix = name_map[key]
    roles = {role: loaded[f"{prefix}.{suffix}"]
             for role, suffix in (("down", "lora_down.weight"), ("up", "lora_up.weight"), ("alpha", "alpha"))}
    weight = dict(model.named_modules())[key].weight.detach()
    torch.testing.assert_close(merge_weight(weight, roles) - weight, adapters.merged_delta(key), rtol=1e-5, atol=1e-6)


def test_hash_is_sha256_of_the_files_data_section(tmp_path: Path) -> None:
    _, adapters, name_map = _adapters()
    tensors = export_lora(adapters, name_map)
    written = save_lora(tmp_path / "a.safetensors", tensors, {"ss_network_dim": "4", "modelspec.title": "t"})
    data = (tmp_path / "a.safetensors").read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    assert written["sshs_model_hash"] == hashlib.sha256(data[8 + header_len:]).hexdigest()
    assert len(written["sshs_legacy_hash"]) == 8
    assert model_hashes(tensors, {"ss_x": "1"})[0] == written["sshs_model_hash"]  # metadata-independent


def test_export_refuses_non_finite_and_fp16_overflow() -> None:
    _, adapters, name_map = _adapters()
    key = adapters.keys()[0]
    with torch.no_grad():
        adapters[key].lora_up.weight[0, 0] = 1e6
    with pytest.raises(LoraValueError, match="too large for torch.float16.*save as bf16 or fp32"):
        export_lora(adapters, name_map)
    assert export_lora(adapters, name_map, dtype=torch.bfloat16)
    with torch.no_grad():
        adapters[key].lora_up.weight[0, 0] = float("nan")
    with pytest.raises(LoraValueError, match=f"layer '{key}' holds NaN/Inf values"):
        export_lora(adapters, name_map, dtype=torch.float32)


def test_export_refuses_incomplete_or_colliding_name_map() -> None:
    _, adapters, name_map = _adapters()
    key = adapters.keys()[0]
    with pytest.raises(LoraExportError, match=f"1 trained layers have no kohya name, e.g. '{key}'"):
        export_lora(adapters, {k: v for k, v in name_map.items() if k != key})
    with pytest.raises(LoraExportError, match="same kohya name"):
        export_lora(adapters, {k: "lora_unet_x" for k in name_map})


def test_kohya_metadata_keys() -> None:
    cfg = config(steps=1000, lora=LoraShape(rank=8, alpha=4.0, targets="attention_ff_conv"), seed=3)
    md = kohya_metadata(cfg, _summary(), "sdxl_base_v1-0", prediction_type="epsilon",
                        now=datetime.datetime(2025, 1, 2, 3, 4, 5, 678))
    assert all(isinstance(v, str) for v in md.values())
    assert md["ss_network_module"] == "networks.lora" and md["ss_network_dim"] == "8"
    assert md["ss_network_alpha"] == "4.0" and md["ss_base_model_version"] == "sdxl_base_v1-0"
    assert md["ss_steps"] == "500" and md["ss_max_train_steps"] == "1000" and md["ss_seed"] == "3"
    assert md["ss_learning_rate"] == "0.01" and md["ss_resolution"] == "(512, 768)"
    assert md["ss_num_train_images"] == "12" and md["ss_output_name"] == "my_char" and md["ss_v2"] == "False"
    assert json.loads(md["ss_tag_frequency"]) == {"10_mychar": {"mychar": 12, "red hair": 5}}
    assert json.loads(md["ss_network_args"]) == {"conv_dim": "8", "conv_alpha": "4.0"}
    assert json.loads(md["ss_datasets"])[0]["subsets"][0]["class_tokens"] == "mychar"
    assert md["modelspec.sai_model_spec"] == "1.0.0"
    assert md["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert md["modelspec.implementation"] == "https://github.com/Stability-AI/generative-models"
    assert md["modelspec.resolution"] == "512x768" and md["modelspec.title"] == "my_char"
    assert md["modelspec.trigger_phrase"] == "mychar" and md["modelspec.date"] == "2025-01-02T03:04:05"
    assert md["modelspec.prediction_type"] == "epsilon"
    sd1 = kohya_metadata(config(), _summary(), "sd_v1")
    assert (sd1["modelspec.architecture"] == "stable-diffusion-v1/lora"
            and sd1["modelspec.implementation"] == "diffusers")


def test_kohya_metadata_records_the_objective_and_network_options_as_sd_scripts_names_them() -> None:
    plain = kohya_metadata(config(), _summary(), "sd_v1")
    assert (plain["ss_loss_type"], plain["ss_multires_noise_iterations"], plain["ss_ip_noise_gamma"]) == (
        "l2", "None", "None")
    assert plain["ss_zero_terminal_snr"] == "False" and "loraplus_lr_ratio" not in plain["ss_network_args"]
    lora = LoraShape(rank=4, alpha=4.0, targets="attention", include_layers="proj_in", exclude_layers="attn1")
    md = kohya_metadata(config(lora=lora, loss_type="huber", huber_schedule="exponential", huber_c=0.2,
                               debiased_estimation=True, multires_noise_iterations=6, multires_noise_discount=0.4,
                               ip_noise_gamma=0.1, ip_noise_gamma_random_strength=True, zero_terminal_snr=True,
                               noise_offset=0.05, noise_offset_random_strength=True, loraplus_lr_ratio=16.0),
                        _summary(), "sd_v1")
    assert {k: md[k] for k in ("ss_loss_type", "ss_huber_schedule", "ss_huber_c", "ss_debiased_estimation",
                               "ss_multires_noise_iterations", "ss_multires_noise_discount", "ss_ip_noise_gamma",
                               "ss_ip_noise_gamma_random_strength", "ss_zero_terminal_snr", "ss_noise_offset",
                               "ss_noise_offset_random_strength")} == {
        "ss_loss_type": "huber", "ss_huber_schedule": "exponential", "ss_huber_c": "0.2",
        "ss_debiased_estimation": "True", "ss_multires_noise_iterations": "6", "ss_multires_noise_discount": "0.4",
        "ss_ip_noise_gamma": "0.1", "ss_ip_noise_gamma_random_strength": "True", "ss_zero_terminal_snr": "True",
        "ss_noise_offset": "0.05", "ss_noise_offset_random_strength": "True"}
    assert json.loads(md["ss_network_args"]) == {"loraplus_lr_ratio": "16.0", "include_patterns": "proj_in",
                                                 "exclude_patterns": "attn1"}
