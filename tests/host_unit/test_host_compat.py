"""nodes/host/host_compat.py on the real host (0.3.75 in CI; 0.33 with LORALAB_HOST_DIR pointing at its tree).

A tiny SD1.5-layout UNet built from the host's own classes on the CPU, wrapped in the host's ModelPatcher, LoRA-like
"diff" patches added through `add_patches` as a loaded LoRA adds them. No part of the host is replaced.
"""
from __future__ import annotations

import importlib
from types import SimpleNamespace

import pytest
import torch

from scripts.host_import import import_comfy, import_pack_module
from tests.support.tiny_host_models import TINY_SD15_UNET

CPU = torch.device("cpu")
PATCHED_KEYS = ("diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
                "diffusion_model.middle_block.1.proj_in.weight", "diffusion_model.out.2.weight")


@pytest.fixture(scope="module")
def host() -> SimpleNamespace:
    compat = import_pack_module("nodes.host.host_compat")
    loading = import_pack_module("nodes.host.weight_loading")
    importlib.import_module("comfy.ldm.flux.math")
    return SimpleNamespace(comfy=import_comfy(), compat=compat, loading=loading)


@pytest.fixture(autouse=True)
def nothing_loaded(host: SimpleNamespace):
    """Each test starts and ends with the host's model management empty (as a fresh host)."""
    host.comfy.model_management.unload_all_models()
    yield
    host.comfy.model_management.unload_all_models()


def _model(host: SimpleNamespace):
    """The host's SD1.5 model class on the tiny UNet, fp32, weights filled with a fixed seed (norms at 1)."""
    config = host.comfy.supported_models.SD15(dict(TINY_SD15_UNET))
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, tensor in model.diffusion_model.state_dict(keep_vars=True).items():
            if name.endswith("weight") and tensor.ndim >= 2:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) / tensor[0].numel() ** 0.5)
            else:
                tensor.fill_(1.0 if name.endswith("weight") else 0.0)
    return model


def _patcher(host: SimpleNamespace, with_patches: bool = True):
    patcher = host.comfy.model_patcher.ModelPatcher(_model(host), load_device=CPU, offload_device=CPU)
    if with_patches:
        patcher.add_patches(_diffs(patcher), strength_patch=0.7)
    return patcher


def _diffs(patcher) -> dict[str, tuple]:
    """A "diff" patch (what the host's loader makes of a full-weight LoRA entry) on a few weights."""
    generator = torch.Generator().manual_seed(3)
    state = patcher.model.state_dict()
    return {key: ("diff", (torch.randn(state[key].shape, generator=generator) * 0.1,))
            for key in PATCHED_KEYS}


def _predict(patcher) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 8, 8, generator=generator)
    context = torch.randn(1, 5, 32, generator=generator)
    with torch.no_grad():
        return patcher.model.diffusion_model(x, torch.tensor([500.0]), context=context).clone()


def _flag_values(host: SimpleNamespace) -> tuple:
    mm = host.comfy.model_management
    return tuple(getattr(mm, name, "absent") for name in host.compat.TRAINING_FLAGS)


# --- training_mode ----------------------------------------------------------------------------------------------
def test_training_mode_sets_the_hosts_training_flags_where_it_has_them_and_restores_them(host) -> None:
    mm, compat = host.comfy.model_management, host.compat
    if not all(hasattr(mm, name) for name in compat.TRAINING_FLAGS):  # 0.3.75: nothing to set or create
        with compat.training_mode() as has_flags:
            assert has_flags is False
        assert _flag_values(host) == ("absent", "absent")
        return
    before = (mm.in_training, mm.training_fp8_bwd)
    try:
        mm.in_training, mm.training_fp8_bwd = False, True  # as the host's own TrainLoraNode can leave them
        with compat.training_mode() as has_flags:
            assert has_flags is True
            assert (mm.in_training, mm.training_fp8_bwd) == (True, False)
            with compat.training_mode(enabled=False):  # a sample rendered mid-run: the host's inference paths
                assert (mm.in_training, mm.training_fp8_bwd) == (False, False)
            assert (mm.in_training, mm.training_fp8_bwd) == (True, False)
            with compat.training_mode(fp8_backward=True):
                assert (mm.in_training, mm.training_fp8_bwd) == (True, True)
        assert (mm.in_training, mm.training_fp8_bwd) == (False, True)
        with pytest.raises(RuntimeError, match="a failed step"), compat.training_mode():
            raise RuntimeError("a failed step")
        assert (mm.in_training, mm.training_fp8_bwd) == (False, True)
    finally:
        mm.in_training, mm.training_fp8_bwd = before


def test_flux_rope_has_gradients_in_training_mode(host) -> None:
    """0.33's Flux `apply_rope` runs comfy-kitchen's fused kernel outside training, which has no autograd formula
    ("Trying to backward through comfy_kitchen.apply_rope"); in training mode it is torch's own ops. On 0.3.75 it
    is torch's ops in both. Gradients equal a plain-torch rotation either way."""
    flux_math = host.comfy.ldm.flux.math
    generator = torch.Generator().manual_seed(0)
    xq = torch.randn(1, 2, 6, 8, generator=generator, requires_grad=True)
    xk = torch.randn(1, 2, 6, 8, generator=generator, requires_grad=True)
    freqs = flux_math.rope(torch.arange(6.0)[None], 8, 10000)[:, None]
    with torch.inference_mode(False), host.compat.training_mode():
        q, k = flux_math.apply_rope(xq, xk, freqs)
        (q.square().sum() + (k * 3).sum()).backward()
    # The reference: Flux's rotation written out (pairs [2i, 2i+1] times the 2x2 matrices of `freqs`).
    ref_q = xq.detach().clone().requires_grad_(True)
    ref_k = xk.detach().clone().requires_grad_(True)

    def rotate(x):
        pairs = x.reshape(*x.shape[:-1], -1, 1, 2)
        return (freqs[..., 0] * pairs[..., 0] + freqs[..., 1] * pairs[..., 1]).reshape(x.shape)
    (rotate(ref_q).square().sum() + (rotate(ref_k) * 3).sum()).backward()
    assert torch.allclose(q, rotate(xq.detach()), atol=1e-6)
    assert torch.allclose(xq.grad, ref_q.grad, atol=1e-5) and torch.allclose(xk.grad, ref_k.grad, atol=1e-5)


# --- is_dynamic / weight_loading -----------------------------------------------------------------------------------
def test_a_cpu_patcher_is_never_dynamic(host) -> None:
    mp = host.comfy.model_patcher
    assert host.compat.is_dynamic(_patcher(host, with_patches=False)) is False
    if hasattr(mp, "ModelPatcherDynamic"):  # 0.33: on a CPU load device it hands back a plain ModelPatcher
        made = mp.ModelPatcherDynamic(_model(host), load_device=CPU, offload_device=CPU)
        assert type(made) is mp.ModelPatcher and host.compat.is_dynamic(made) is False


def test_a_partial_load_keeps_the_budget_registers_the_model_and_computes_the_same(host) -> None:
    mm = host.comfy.model_management
    full = _patcher(host)
    mm.load_models_gpu([full], force_full_load=True)
    reference = _predict(full)
    assert full.loaded_size() == full.model_size()
    mm.unload_all_models()

    patcher = _patcher(host)
    loaded = host.loading.load_for_training(patcher, None, offload_fraction=0.5)
    assert loaded.on_device_bytes == patcher.loaded_size() and 0 < loaded.on_device_bytes <= patcher.model_size() // 2
    assert not loaded.host_streams and "offloaded and streamed per layer" in loaded.describe()
    assert patcher in mm.loaded_models()  # managed: the host can unload it, the next sampler finds it
    assert patcher.model.model_lowvram  # the rest streams through the host's cast path, patches included
    assert torch.allclose(_predict(patcher), reference, atol=1e-6)
    assert not torch.allclose(_predict(patcher), _predict_unpatched(host), atol=1e-3)  # the patches do count

    # The next inference load (what a sampler calls) takes the model back to a full load, same output.
    mm.load_models_gpu([patcher], force_full_load=True)
    assert patcher.loaded_size() == patcher.model_size() and not patcher.model.model_lowvram
    assert torch.allclose(_predict(patcher), reference, atol=1e-6)


def _predict_unpatched(host) -> torch.Tensor:
    bare = _patcher(host, with_patches=False)
    host.comfy.model_management.load_models_gpu([bare], force_full_load=True)
    out = _predict(bare)
    host.comfy.model_management.unload_all_models()
    return out


def test_offloading_everything_leaves_only_what_the_host_cannot_stream(host) -> None:
    patcher = _patcher(host)
    loaded = host.loading.load_for_training(patcher, None, offload_fraction=1.0)
    assert loaded.on_device_bytes < patcher.model_size() // 10  # only non-castable bits


# --- checkpoint_state_dict --------------------------------------------------------------------------------------
@pytest.mark.parametrize("offloaded", [False, True], ids=["loaded", "offloaded"])
def test_checkpoint_state_dict_holds_every_unet_weight_with_its_patch(host, offloaded) -> None:
    bare = _patcher(host, with_patches=False)
    base = {k: v.clone() for k, v in bare.model.state_dict().items()}
    diffs = _diffs(bare)
    patcher = _patcher(host)
    if offloaded:
        host.loading.load_for_training(patcher, None, offload_fraction=1.0)
    sd = host.compat.checkpoint_state_dict(patcher)
    unet = {k: v for k, v in sd.items() if k.startswith("model.diffusion_model.")}
    assert set(unet) == {"model." + k for k in base if k.startswith("diffusion_model.")}
    for key, value in unet.items():
        assert isinstance(value.device, torch.device) and value.dtype == torch.float32, key
        expected = base[key[len("model."):]]
        if key[len("model."):] in diffs:
            expected = expected + 0.7 * diffs[key[len("model."):]][1][0]
        assert torch.allclose(value, expected, atol=1e-6), key
    # The model itself is left unpatched-equal to what a sampler would compute with.
    assert torch.allclose(_predict(patcher), _predict(_loaded(host, _patcher(host))), atol=1e-6)


def _loaded(host, patcher):
    host.comfy.model_management.load_models_gpu([patcher], force_full_load=True)
    return patcher


def test_a_lazy_patched_weight_of_the_newer_host_is_materialised(host) -> None:
    """0.33's ModelPatcher.state_dict_for_saving hands weights not patched in place as LazyCastingParam (its device
    a fake "comfy-lazy-caster"); they become plain tensors holding the patched weight. A plain tensor (all 0.3.75
    gives) passes through as it is."""
    mp = host.comfy.model_patcher
    patcher = _patcher(host)
    key = PATCHED_KEYS[0]
    weight = host.comfy.utils.get_attr(patcher.model, key)
    assert host.compat._materialised(weight) is weight
    if hasattr(mp, "LazyCastingParam"):
        lazy = mp.LazyCastingParam(patcher, key, weight)
        value = host.compat._materialised(lazy)
        assert type(value) is torch.Tensor and value.device == CPU
        assert torch.allclose(value, weight + 0.7 * _diffs(patcher)[key][1][0], atol=1e-6)
