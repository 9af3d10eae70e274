"""Trained LoHa, LoKr and DoRA files through the host's own loader: W' per layer equals the engine's.

A tiny real SDXL UNet (ComfyUI's own classes, random weights: Linear, 1x1 and 3x3 convs, a strided downsample)
gets adapters of each kind on every attention, feed-forward and convolution target; their factors are set to
random values so every delta is non-zero. The exported file goes through the host's loading path
(`lora_convert.convert_lora`, `comfy.lora.load_lora` with the key map, `add_patches`) with no key left
unloaded and a patch for every trained layer (also through the pack's own loader, as Train LoRA's output MODEL is
patched); the host's `calculate_weight` applied to each layer's weight gives
the weight the engine trains through (W + merged_delta: for DoRA, m * (W + delta) / ||W + delta|| per input column).
"""
from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from scripts.host_import import import_comfy, import_pack_module
from tests.support.tiny_host_models import SDXL_UNET, skip_without_scaled_fp8_layers
from trainer.lora.file import parse_lora
from trainer.training.export import export_lora
from trainer.training.layer_selection import select_targets
from trainer.training.trainable_lora import LoraAdapterSet

CPU = torch.device("cpu")
SHAPES = {
    "loha": {"adapter": "loha"},
    "loha_tucker": {"adapter": "loha", "use_tucker": True},
    "lokr": {"adapter": "lokr"},
    "lokr_tucker_factor4": {"adapter": "lokr", "use_tucker": True, "lokr_factor": 4},
    "dora": {"adapter": "dora"},
    "lora": {"adapter": "lora"},
}


@pytest.fixture(scope="module")
def host() -> SimpleNamespace:
    return SimpleNamespace(comfy=import_comfy(), host_model=import_pack_module("nodes.host.model"),
                           patching=import_pack_module("nodes.host.patching"))


def _sdxl_patcher(host: SimpleNamespace):
    model = host.comfy.supported_models.SDXL(dict(SDXL_UNET)).get_model({})
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # the host leaves the weights uninitialised
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                torch.nn.init.normal_(tensor, std=0.05, generator=generator)
    return host.comfy.model_patcher.ModelPatcher(model, load_device=CPU, offload_device=CPU)


def _randomise(adapters: LoraAdapterSet) -> None:
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in adapters.named_parameters():
            noise = torch.randn(param.shape, generator=generator) * 0.2
            param.copy_(param * (1 + noise) if name.endswith(".dora_scale") else noise)


@pytest.mark.parametrize("name", list(SHAPES))
def test_the_hosts_loader_reproduces_the_trained_weight_of_every_layer(host: SimpleNamespace, name: str,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    patcher = _sdxl_patcher(host)
    unet = host.host_model.diffusion_module(patcher)
    targets = select_targets(unet, "attention_ff_conv")
    adapters = LoraAdapterSet(rank=2, alpha=3.0, init_seed=1, **SHAPES[name])
    adapters.attach(unet, targets)
    assert all(torch.count_nonzero(adapters.merged_delta(k)) == 0 for k in adapters.keys())  # W' = W at step 0
    _randomise(adapters)
    lora = export_lora(adapters, host.host_model.unet_kohya_names(patcher, adapters.keys()), dtype=torch.float32)

    key_map = host.comfy.lora.model_lora_keys_unet(patcher.model, {})
    converted = host.comfy.lora_convert.convert_lora(lora)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        loaded = host.comfy.lora.load_lora(converted, key_map)
    assert [r.getMessage() for r in caplog.records if "lora key not loaded" in r.getMessage()] == []
    claimed = set().union(*(patch.loaded_keys for patch in loaded.values()))
    assert claimed == set(converted)  # every key of the file is one the host's adapters took
    assert set(patcher.add_patches(loaded, 1.0)) == set(loaded) == {f"diffusion_model.{k}.weight" for k in targets}

    state = patcher.model.state_dict()
    kinds = set()
    for key in adapters.keys():
        host_key = f"diffusion_model.{key}.weight"
        weight = state[host_key].float()
        kinds.add(type(loaded[host_key]).__name__)
        patched = host.comfy.lora.calculate_weight([(1.0, loaded[host_key], 1.0, None, None)], weight.clone(),
                                                   host_key)
        trained = weight + adapters.merged_delta(key)
        assert torch.count_nonzero(trained - weight) > 0
        torch.testing.assert_close(patched, trained, rtol=1e-5, atol=1e-6, msg=host_key)
    # Train LoRA's output MODEL: the pack's own loader (as the node's finish applies the trained file) patches
    # every trained layer with the same host adapters.
    trained_file = parse_lora(lora, {}, source_name=f"{name}.safetensors")
    patched_model, _, _ = host.patching.patch_model_and_clip(patcher, None, trained_file, 1.0, 1.0)
    assert set(patched_model.patches) == set(loaded)
    assert {type(p[0][1]).__name__ for p in patched_model.patches.values()} == kinds
    expected = {"loha": "LoHaAdapter", "lokr": "LoKrAdapter"}.get(SHAPES[name]["adapter"], "LoRAAdapter")
    assert kinds == {expected}


def test_dora_on_the_hosts_scaled_fp8_layers_reads_the_weight_they_compute_with(host: SimpleNamespace) -> None:
    """`comfy.ops.scaled_fp8_ops`: an fp8 weight times `scale_weight`. DoRA's magnitude and W' use that weight
    (host_model.layer_weight, the reader Train LoRA passes), not the stored fp8 values: W' = W at step 0."""
    skip_without_scaled_fp8_layers(host.comfy)
    generator = torch.Generator().manual_seed(4)
    true_weight = torch.randn(6, 8, generator=generator)
    layer = host.comfy.ops.scaled_fp8_ops().Linear(8, 6, bias=False, dtype=torch.float8_e4m3fn)
    with torch.no_grad():
        layer.weight = torch.nn.Parameter((true_weight / 4.0).to(torch.float8_e4m3fn), requires_grad=False)
        layer.scale_weight = torch.nn.Parameter(torch.tensor(4.0), requires_grad=False)
    dequantised = layer.weight.float() * 4.0
    model = torch.nn.Sequential(layer)
    x = torch.randn(3, 8, generator=generator)
    before = model(x)
    torch.testing.assert_close(before, x @ dequantised.T)  # the host computes with the scaled weight

    adapters = LoraAdapterSet(rank=2, alpha=2.0, adapter="dora", weight_reader=host.host_model.layer_weight)
    adapters.attach(model, ["0"])
    norms = dequantised.norm(dim=0, keepdim=True) + torch.finfo(torch.float32).eps
    torch.testing.assert_close(adapters["0"].dora_scale.detach(), norms)
    adapters.train(False)
    assert torch.equal(model(x), before)
    _randomise(adapters)
    changed = dequantised + adapters.merged_delta("0")
    low_rank = adapters["0"].lora_up.weight @ adapters["0"].lora_down.weight
    direct = adapters["0"].dora_scale * (dequantised + low_rank) / (
        (dequantised + low_rank).norm(dim=0, keepdim=True) + torch.finfo(torch.float32).eps)
    torch.testing.assert_close(changed, direct.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model(x), x @ changed.T, rtol=1e-5, atol=1e-5)
