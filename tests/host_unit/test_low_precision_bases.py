"""Training on bases stored in fp8 / fp16 / bf16, and on the host's quantized (mixed-precision) layers.

Bug (seen on ComfyUI 0.33): a MODEL from Load Diffusion Model with weight_dtype fp8_e4m3fn failed in Train LoRA
with `"silu_cpu" not implemented for 'Float8_e4m3fn'`: nodes/host/model.py's denoiser cast its inputs to the
weights' storage dtype (`get_dtype()`) instead of the host's compute dtype (`manual_cast_dtype`).

A tiny SD1.5-layout UNet is built in-process from the host's classes as its UNETLoader builds one
(`comfy.sd.load_diffusion_model_state_dict`: `set_inference_dtype(weight dtype, unet_manual_cast(...))`, then
`get_model` and `load_model_weights`), inside inference mode as the host runs nodes. For each stored dtype:

- the denoiser computes in the host's compute dtype: its prediction equals that of an fp32 model holding the
  same (rounded) weights;
- a few LoRA steps at fixed noise lower the loss, only the LoRA (fp32) changes, every base weight keeps its
  stored dtype and its exact bits (release_inference_tensors copies, never upcasts);
- the exported file has the same keys and shapes as one trained on the fp32 base, and the host's own loader
  maps every key of it onto the stored-fp8 model.

The host's scaled-fp8 layers (`comfy.ops.scaled_fp8_ops`) and its mixed-precision quantized Linear
(`comfy.ops.mixed_precision_ops`, not an nn.Linear) are trained through their own cast paths; a layer type
the LoRA cannot train through is refused before anything is attached.
"""
from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from scripts.host_import import import_comfy, import_pack_module
from tests.support.tiny_host_models import TINY_SD15_UNET, skip_without_scaled_fp8_layers
from trainer.errors import LoraTargetError
from trainer.training.export import export_lora
from trainer.training.layer_selection import select_targets
from trainer.training.trainable_lora import LoraAdapterSet, release_inference_tensors

CPU = torch.device("cpu")
STORED_DTYPES = [torch.float8_e4m3fn, torch.float8_e5m2, torch.float16, torch.bfloat16]
TARGETS = "attention_ff_conv"


@pytest.fixture(scope="module")
def host() -> SimpleNamespace:
    comfy = import_comfy()
    return SimpleNamespace(comfy=comfy, host_model=import_pack_module("nodes.host.model"))


@pytest.fixture(scope="module")
def fp32_weights(host: SimpleNamespace) -> dict[str, torch.Tensor]:
    """The UNet's weights as a diffusion-model file holds them (no prefix), filled with a fixed seed."""
    model = _build(host, torch.float32, {})
    generator = torch.Generator().manual_seed(0)
    weights = {}
    for name, tensor in model.diffusion_model.state_dict().items():
        if name.endswith("weight") and tensor.ndim >= 2:
            value = torch.randn(tensor.shape, generator=generator) / tensor[0].numel() ** 0.5
        else:
            value = torch.ones(tensor.shape) if name.endswith("weight") else torch.zeros(tensor.shape)
        weights[name] = value
    return weights


def _build(host: SimpleNamespace, stored: torch.dtype, weights: dict[str, torch.Tensor],
           layer_quant_config: dict | None = None, scaled_fp8: torch.dtype | None = None):
    """The host's SD1.5 model as UNETLoader builds it for `stored` (model_options {"dtype": stored}), weights
    loaded inside inference mode (so every weight is an inference tensor, as in a running host)."""
    config = host.comfy.supported_models.SD15(dict(TINY_SD15_UNET))
    config.scaled_fp8 = scaled_fp8  # what model_detection reads from a scaled-fp8 file's `scaled_fp8` key
    if layer_quant_config is not None:
        if hasattr(config, "quant_config"):  # ComfyUI 0.33: per-layer entries in the weights, as its files hold
            config.quant_config = {"mixed_ops": True}
            weights = {**weights, **{f"{name}.comfy_quant": torch.tensor(list(json.dumps(conf).encode()),
                                                                         dtype=torch.uint8)
                                     for name, conf in layer_quant_config.items()}}
        else:
            config.layer_quant_config = layer_quant_config
        manual_cast = host.comfy.model_management.unet_manual_cast(None, CPU, config.supported_inference_dtypes)
    else:
        manual_cast = host.comfy.model_management.unet_manual_cast(stored, CPU, config.supported_inference_dtypes)
    config.set_inference_dtype(stored, manual_cast)
    with torch.inference_mode():
        model = config.get_model({})
        if weights:
            model.load_model_weights({k: v.clone() for k, v in weights.items()}, "")
    return model


def _patcher(host: SimpleNamespace, model):
    return host.comfy.model_patcher.ModelPatcher(model, load_device=CPU, offload_device=CPU)


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    """The stored bytes of a tensor (fp8 tensors cannot be compared directly on the CPU)."""
    return tensor.detach().contiguous().view(torch.uint8).clone()


def _fixed_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x_t = torch.randn(2, 4, 8, 8, generator=generator)
    target = torch.randn(2, 4, 8, 8, generator=generator)
    context = torch.randn(2, 5, 32, generator=generator)
    return x_t, torch.tensor([100, 600]), context, target


def _train(host: SimpleNamespace, patcher, steps: int = 8) -> tuple[LoraAdapterSet, list[float]]:
    """A LoRA on every target, `steps` Adam steps on one fixed batch; the losses before each step and after."""
    unet = host.host_model.diffusion_module(patcher)
    with torch.inference_mode(False):
        release_inference_tensors(unet)
        adapters = LoraAdapterSet(rank=4, alpha=4.0, init_seed=2)
        adapters.attach(unet, select_targets(unet, TARGETS))
        denoise = host.host_model.denoiser_for(patcher)
        optimizer = torch.optim.Adam(adapters.parameters(), lr=1e-2)
        x_t, timesteps, context, target = _fixed_batch()
        losses = []
        for _ in range(steps + 1):
            loss = (denoise(x_t, timesteps, context) - target).pow(2).mean()
            losses.append(loss.item())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        adapters.detach()
    return adapters, losses


def _stored(weights: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The fp32 weights as the loader stores them in `dtype`, read back as fp32 (the values a model holds)."""
    return {k: v.to(dtype).float() for k, v in weights.items()}


@pytest.mark.parametrize("stored", STORED_DTYPES, ids=str)
def test_denoiser_computes_in_the_hosts_compute_dtype(host: SimpleNamespace, fp32_weights, stored) -> None:
    low = _patcher(host, _build(host, stored, fp32_weights))
    assert low.model.get_dtype() == stored and low.model.manual_cast_dtype == torch.float32  # CPU: cast to fp32
    assert host.host_model.compute_dtype(low) == torch.float32
    reference = _patcher(host, _build(host, torch.float32, _stored(fp32_weights, stored)))
    assert host.host_model.compute_dtype(reference) == torch.float32
    x_t, timesteps, context, _ = _fixed_batch()
    with torch.inference_mode(False), torch.no_grad():
        prediction = host.host_model.denoiser_for(low)(x_t, timesteps, context)
        expected = host.host_model.denoiser_for(reference)(x_t, timesteps, context)
    assert prediction.dtype == torch.float32 and torch.isfinite(prediction).all()
    assert torch.allclose(prediction, expected, atol=1e-5, rtol=1e-5)


def test_without_checkpointing_autograd_keeps_the_cast_weights_the_memory_estimate_counts(
        host: SimpleNamespace, fp32_weights) -> None:
    """The host's layers cast each fp8 weight to fp32 (the CPU's compute dtype) as they run, and autograd keeps
    the casts for the input gradients: a step holds the model at fp32 beside its fp8 weights, which the estimate
    counts (cast_weights_bytes) unless gradient checkpointing recomputes them block by block."""
    patcher = _patcher(host, _build(host, torch.float8_e4m3fn, fp32_weights))
    unet = host.host_model.diffusion_module(patcher)
    memory_check = import_pack_module("nodes.host.memory_check")
    counted = memory_check.cast_weights_bytes(patcher, unet)
    assert counted == 4 * sum(p.numel() for p in unet.parameters() if p.dtype == torch.float8_e4m3fn) > 0
    full = _patcher(host, _build(host, torch.float32, fp32_weights))
    assert memory_check.cast_weights_bytes(full, host.host_model.diffusion_module(full)) == 0
    stored_shapes = {tuple(p.shape) for p in unet.parameters() if p.dtype == torch.float8_e4m3fn}
    kept: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.dtype == torch.float32 and not tensor.requires_grad and tuple(tensor.shape) in stored_shapes:
            kept[tensor.data_ptr()] = tensor.numel() * tensor.element_size()
        return tensor

    with torch.inference_mode(False):
        release_inference_tensors(unet)
        adapters = LoraAdapterSet(rank=4, alpha=4.0, init_seed=2)
        adapters.attach(unet, select_targets(unet, TARGETS))
        x_t, timesteps, context, target = _fixed_batch()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss = (host.host_model.denoiser_for(patcher)(x_t, timesteps, context) - target).pow(2).mean()
        loss.backward()
        adapters.detach()
    # Every layer after the first LoRA keeps its cast (those before it need no input gradient).
    assert 0.5 * counted < sum(kept.values()) <= counted, (sum(kept.values()), counted)


@pytest.mark.parametrize("stored", STORED_DTYPES, ids=str)
def test_lora_trains_in_fp32_and_the_stored_weights_stay_as_they_are(host: SimpleNamespace, fp32_weights,
                                                                      stored) -> None:
    patcher = _patcher(host, _build(host, stored, fp32_weights))
    unet = host.host_model.diffusion_module(patcher)
    before = {name: (p.dtype, _bits(p)) for name, p in unet.state_dict().items()}
    assert {dtype for dtype, _ in before.values()} >= {stored}
    assert all(p.is_inference() for p in unet.parameters())

    adapters, losses = _train(host, patcher)

    assert losses[-1] < 0.9 * losses[0], losses
    assert all(p.dtype == torch.float32 for p in adapters.parameters())
    after = unet.state_dict()
    assert set(after) == set(before)
    changed = [name for name, (dtype, bits) in before.items()
               if after[name].dtype != dtype or not torch.equal(_bits(after[name]), bits)]
    assert changed == []  # same dtype (nothing upcast), same bits (nothing written)
    assert not any(p.requires_grad for p in unet.parameters())


def test_fp8_base_exports_the_same_kohya_file_as_the_fp32_base(host: SimpleNamespace, fp32_weights,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    files = {}
    for stored in (torch.float32, torch.float8_e4m3fn):
        patcher = _patcher(host, _build(host, stored, fp32_weights))
        adapters, _ = _train(host, patcher, steps=2)
        names = host.host_model.unet_kohya_names(patcher, adapters.keys())
        files[stored] = (export_lora(adapters, names), patcher)
    fp32_file, fp8_file = files[torch.float32][0], files[torch.float8_e4m3fn][0]
    assert {k: v.shape for k, v in fp8_file.items()} == {k: v.shape for k, v in fp32_file.items()}
    assert {v.dtype for v in fp8_file.values()} == {v.dtype for v in fp32_file.values()}

    fp8_patcher = files[torch.float8_e4m3fn][1]
    key_map = host.comfy.lora.model_lora_keys_unet(fp8_patcher.model, {})
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        loaded = host.comfy.lora.load_lora(host.comfy.lora_convert.convert_lora(fp8_file), key_map)
    assert not [r for r in caplog.records if "lora key not loaded" in r.getMessage()]
    assert set(fp8_patcher.add_patches(loaded, 1.0)) == set(loaded)
    assert len(loaded) == len(fp8_file) // 3  # down, up, alpha per layer


def _linear_names(model) -> list[str]:
    return [name for name, m in model.diffusion_model.named_modules() if isinstance(m, nn.Linear)]


def test_the_hosts_mixed_precision_quantized_linears_train_through_their_cast_path(host: SimpleNamespace,
                                                                                   fp32_weights) -> None:
    """`comfy.ops.mixed_precision_ops` (fp8 checkpoints with per-layer quantization metadata) gives a Linear
    that is not an nn.Linear and holds a QuantizedTensor weight; it is a LoRA target like any Linear."""
    linears = _linear_names(_build(host, torch.float32, {}))
    quant = {name: {"format": "float8_e4m3fn"} for name in linears}
    weights = dict(fp32_weights)
    for name in linears:  # what a quantized checkpoint holds: fp8 weight and its scale
        weights[f"{name}.weight"] = fp32_weights[f"{name}.weight"].to(torch.float8_e4m3fn)
        weights[f"{name}.weight_scale"] = torch.tensor(1.0)
    patcher = _patcher(host, _build(host, torch.float32, weights, layer_quant_config=quant))
    unet = host.host_model.diffusion_module(patcher)
    modules = dict(unet.named_modules())
    assert not isinstance(modules[linears[0]], nn.Linear)
    assert type(modules[linears[0]].weight).__name__ == "QuantizedTensor"

    reference = _build(host, torch.float32, {})
    assert select_targets(unet, TARGETS) == select_targets(reference.diffusion_model, TARGETS)
    before = {name: _bits(modules[name].weight._qdata) for name in linears}
    adapters, losses = _train(host, patcher)
    assert losses[-1] < 0.9 * losses[0], losses
    modules = dict(unet.named_modules())
    assert all(type(modules[n].weight).__name__ == "QuantizedTensor" for n in linears)
    assert all(torch.equal(_bits(modules[n].weight._qdata), before[n]) for n in linears)


def test_a_scaled_fp8_checkpoint_trains_through_the_hosts_scaled_layers(host: SimpleNamespace,
                                                                       fp32_weights) -> None:
    """`comfy.ops.scaled_fp8_ops`: fp8 Linear weights with a per-layer `scale_weight` the host applies."""
    skip_without_scaled_fp8_layers(host.comfy)
    linears = _linear_names(_build(host, torch.float32, {}))
    weights, dequantised = dict(fp32_weights), dict(fp32_weights)
    for name in linears:
        fp8 = (fp32_weights[f"{name}.weight"] / 2.0).to(torch.float8_e4m3fn)
        weights[f"{name}.weight"], weights[f"{name}.scale_weight"] = fp8, torch.tensor(2.0)
        dequantised[f"{name}.weight"] = fp8.float() * 2.0
    patcher = _patcher(host, _build(host, torch.float32, weights, scaled_fp8=torch.float8_e4m3fn))
    modules = dict(host.host_model.diffusion_module(patcher).named_modules())
    assert modules[linears[0]].weight.dtype == torch.float8_e4m3fn
    assert float(modules[linears[0]].scale_weight) == 2.0

    reference = _patcher(host, _build(host, torch.float32, dequantised))
    x_t, timesteps, context, _ = _fixed_batch()
    with torch.inference_mode(False), torch.no_grad():
        prediction = host.host_model.denoiser_for(patcher)(x_t, timesteps, context)
        expected = host.host_model.denoiser_for(reference)(x_t, timesteps, context)
    assert torch.allclose(prediction, expected, atol=1e-5, rtol=1e-5)
    before = {name: _bits(modules[name].weight) for name in linears}
    _, losses = _train(host, patcher)
    assert losses[-1] < 0.9 * losses[0], losses
    modules = dict(host.host_model.diffusion_module(patcher).named_modules())
    assert all(modules[n].weight.dtype == torch.float8_e4m3fn for n in linears)
    assert all(torch.equal(_bits(modules[n].weight), before[n]) for n in linears)


class OpaqueQuantizedLinear(nn.Module):
    """A linear layer of a type that says nothing of its features (packed 4-bit weight, as some loaders give)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(out_features, in_features // 2, dtype=torch.uint8),
                                   requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., :self.weight.shape[0]]


def test_a_layer_type_the_lora_cannot_train_through_is_refused_before_anything_is_attached(
        host: SimpleNamespace) -> None:
    model = _build(host, torch.float32, {})
    unet = model.diffusion_model
    block = unet.input_blocks[1][1].transformer_blocks[0]
    block.attn1.to_q = OpaqueQuantizedLinear(32, 32)
    with pytest.raises(LoraTargetError) as raised:
        select_targets(unet, "attention")
    message = str(raised.value)
    assert "input_blocks.1.1.transformer_blocks.0.attn1.to_q" in message
    assert "OpaqueQuantizedLinear" in message and "cannot train" in message
    assert not any(m._forward_hooks for m in unet.modules())
