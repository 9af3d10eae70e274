"""nodes/host_model.py against tiny real host models of SDXL (UNet + CLIP-L/CLIP-G), SD3 (MMDiT) and Flux: the
kohya names our trainer exports are the names the host's own LoRA loader maps, to the layers we trained; SDXL's
denoiser gets its ADM vector from the host and trains; flow-matching families are refused with a clear message.

Tiny real host models are built in-process from ComfyUI's own classes (`comfy.supported_models.*` configs,
`comfy.model_base.*` models, `comfy.sdxl_clip.SDXLClipModel`): the same module trees as the full models at a
few channels and blocks, weights left uninitialised (only names and shapes matter). For each family:

- every kohya name from `host_model.unet_kohya_names` / `clip_kohya_names` is in kohya's layout (LDM/BFL/SAI
  module paths for the UNet/DiT, lora_te1_ = CLIP-L and lora_te2_ = CLIP-G for SDXL), is a key of the host's
  key map (`comfy.lora.model_lora_keys_unet` / `model_lora_keys_clip`) and maps to exactly that layer's `.weight`;
- a LoRA exported by `export_lora` from adapters attached to the tiny model goes through the host's loading
  path (`comfy.sd.load_lora_for_models`: key map, `lora_convert.convert_lora`, `load_lora`, `add_patches`)
  with no key left unused, a patch for every trained layer, and each patch, applied by the host
  (`comfy.lora.calculate_weight`), adds exactly the delta the adapter trained.
"""
from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from types import SimpleNamespace

import pytest
import torch

from scripts.host_import import import_comfy, import_pack_module
from tests.support.tiny_host_models import FLUX_DIT, SD3_MMDIT, SDXL_UNET, host_model_config
from trainer.training.export import export_lora
from trainer.training.inplace_guard import normalisation_inputs_copied
from trainer.training.layer_selection import select_targets
from trainer.training.trainable_lora import LoraAdapterSet

pytestmark = pytest.mark.usefixtures("host_training_mode")  # as Train LoRA trains

CPU = torch.device("cpu")
TEXT_ENCODER_KEY_PREFIX = "text_encoder:"  # as nodes/host/training_run.py keys CLIP layers in the shared adapter set

# SDXL's text encoders at different widths and depths, so that swapping te1/te2 cannot go unnoticed.
CLIP_L = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 3,
          "projection_dim": 32}
CLIP_G = {"hidden_size": 48, "intermediate_size": 96, "num_attention_heads": 2, "num_hidden_layers": 4,
          "projection_dim": 48}
CLIP_LAYER_TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                      "mlp.fc1", "mlp.fc2")

# (supported_models class, unet config, targets kind, module-name endings that must be among the targets)
FAMILIES = {
    "SDXL": ("SDXL", SDXL_UNET, "attention_ff_conv",
             ("attn1.to_q", "attn1.to_out.0", "attn2.to_k", "attn2.to_v", "ff.net.0.proj", "ff.net.2", "proj_in",
              "proj_out", "in_layers.2", "out_layers.3", "emb_layers.1", "skip_connection", "op", "conv")),
    "SD3": ("SD3", SD3_MMDIT, "attention_ff",
            ("context_block.attn.qkv", "context_block.attn.proj", "context_block.mlp.fc1", "x_block.attn.qkv",
             "x_block.attn.proj", "x_block.mlp.fc2", "x_block.attn2.qkv", "x_block.attn2.proj")),
    "Flux": ("Flux", FLUX_DIT, "attention_ff",
             ("img_attn.qkv", "img_attn.proj", "txt_attn.qkv", "txt_attn.proj", "img_mlp.0", "img_mlp.2",
              "txt_mlp.0", "txt_mlp.2", "single_blocks.0.linear1", "single_blocks.0.linear2")),
}


def _process_globals() -> dict[str, object]:
    """Process-wide settings other tests depend on, which importing a host could change."""
    root = logging.getLogger()
    cuda = torch.backends.cuda
    return {"argv": list(sys.argv), "root handlers": list(root.handlers), "root level": root.level,
            "threads": torch.get_num_threads(), "default dtype": torch.get_default_dtype(),
            "deterministic": torch.are_deterministic_algorithms_enabled(), "grad": torch.is_grad_enabled(),
            "inference mode": torch.is_inference_mode_enabled(),
            "matmul precision": torch.get_float32_matmul_precision(),
            "cudnn": (torch.backends.cudnn.enabled, torch.backends.cudnn.benchmark,
                      torch.backends.cudnn.deterministic, torch.backends.cudnn.allow_tf32),
            "cuda matmul tf32": cuda.matmul.allow_tf32,
            "sdp": (cuda.flash_sdp_enabled(), cuda.mem_efficient_sdp_enabled(), cuda.math_sdp_enabled(),
                    getattr(cuda, "fp16_bf16_reduction_math_sdp_allowed", lambda: None)())}


@pytest.fixture(scope="module")
def host() -> SimpleNamespace:
    before = _process_globals()
    comfy = import_comfy()
    host_model = import_pack_module("nodes.host.model")
    return SimpleNamespace(comfy=comfy, host_model=host_model, globals_before=before, globals_after=_process_globals())


def _unet_patcher(host: SimpleNamespace, family: str):
    config_class, unet_config, _, _ = FAMILIES[family]
    model_config = host_model_config(host.comfy, config_class, unet_config)
    model = model_config.get_model({})
    return host.comfy.model_patcher.ModelPatcher(model, load_device=CPU, offload_device=CPU)


def _clip_patcher(host: SimpleNamespace):
    clip_model = host.comfy.sdxl_clip.SDXLClipModel(
        device=CPU, dtype=torch.float32, model_options={"clip_l_model_config": CLIP_L, "clip_g_model_config": CLIP_G})
    return host.comfy.model_patcher.ModelPatcher(clip_model, load_device=CPU, offload_device=CPU)


def _randomise_up(adapters: LoraAdapterSet) -> None:
    """lora_up starts at zero; random values make every exported delta non-zero (and checkable)."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for key in adapters.keys():
            up = adapters[key].lora_up.weight
            up.copy_(torch.randn(up.shape, generator=generator))


def _fill_weights(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Small random values in every float parameter and buffer (the host leaves them uninitialised)."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                torch.nn.init.normal_(tensor, std=0.05, generator=generator)


def _load_like_host(host: SimpleNamespace, lora: dict[str, torch.Tensor], key_map: dict,
                    patchers: list, caplog: pytest.LogCaptureFixture) -> dict:
    """comfy.sd.load_lora_for_models' steps; asserts no LoRA key and no loaded patch is left unused."""
    lora = host.comfy.lora_convert.convert_lora(lora)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        loaded = host.comfy.lora.load_lora(lora, key_map)
    not_loaded = [r.getMessage() for r in caplog.records if "lora key not loaded" in r.getMessage()]
    assert not_loaded == []
    accepted: set = set()
    for patcher in patchers:
        accepted |= set(patcher.add_patches(loaded, 1.0))
    assert accepted == set(loaded)
    return loaded


def _assert_patches_are_our_deltas(host: SimpleNamespace, loaded: dict, adapters: LoraAdapterSet,
                                   weight_key: Callable[[str], str], state: dict[str, torch.Tensor]) -> None:
    """Every trained layer has a patch on its own weight, and the host turns it into the adapter's delta."""
    expected_keys = {weight_key(key): key for key in adapters.keys()}
    assert set(loaded) == set(expected_keys)
    for host_key, adapter_key in expected_keys.items():
        delta = adapters.merged_delta(adapter_key)
        assert delta.shape == state[host_key].shape, host_key
        patched = host.comfy.lora.calculate_weight([(1.0, loaded[host_key], 1.0, None, None)],
                                                   torch.zeros(delta.shape), host_key)
        scale = delta.abs().max()
        assert scale > 0
        assert (patched - delta).abs().max() <= 1e-2 * scale, host_key  # fp16 export


def test_importing_the_host_leaves_process_settings_alone(host: SimpleNamespace) -> None:
    assert host.globals_after == host.globals_before
    assert host.comfy.model_management.get_torch_device() == CPU


@pytest.mark.parametrize("family", list(FAMILIES))
def test_unet_kohya_names_are_host_keys_of_the_same_layers(host: SimpleNamespace, family: str) -> None:
    patcher = _unet_patcher(host, family)
    assert host.host_model.model_family(patcher) == family
    unet = host.host_model.diffusion_module(patcher)
    _, _, kind, required = FAMILIES[family]
    targets = select_targets(unet, kind)
    missing = [end for end in required if not any(t == end or t.endswith("." + end) for t in targets)]
    assert missing == []  # the selection covers every kind of layer this family trains
    assert not [t for t in targets if "embedder." in t]  # timestep / pooled-text embedders stay frozen

    names = host.host_model.unet_kohya_names(patcher, targets)
    # The host also maps diffusers names for SDXL's UNet, so its key map alone does not pin the layout:
    # kohya's sd-scripts (and A1111/Forge) name SDXL, SD3 and Flux layers by the model's own module path.
    assert names == {t: "lora_unet_" + t.replace(".", "_") for t in targets}
    assert len(set(names.values())) == len(targets)
    key_map = host.comfy.lora.model_lora_keys_unet(patcher.model, {})
    wrong = {kohya: key_map.get(kohya) for module, kohya in names.items()
             if key_map.get(kohya) != f"diffusion_model.{module}.weight"}
    assert wrong == {}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_exported_unet_lora_loads_fully_through_the_host(host: SimpleNamespace, family: str,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    patcher = _unet_patcher(host, family)
    unet = host.host_model.diffusion_module(patcher)
    targets = select_targets(unet, FAMILIES[family][2])
    adapters = LoraAdapterSet(rank=2, alpha=1.0)
    adapters.attach(unet, targets)
    _randomise_up(adapters)
    lora = export_lora(adapters, host.host_model.unet_kohya_names(patcher, adapters.keys()))
    assert len(lora) == 3 * len(targets)

    key_map = host.comfy.lora.model_lora_keys_unet(patcher.model, {})
    loaded = _load_like_host(host, lora, key_map, [patcher], caplog)
    _assert_patches_are_our_deltas(host, loaded, adapters, lambda key: f"diffusion_model.{key}.weight",
                                   patcher.model.state_dict())


def test_sdxl_text_encoder_names_are_host_keys_of_the_same_layers(host: SimpleNamespace) -> None:
    model, clip = _unet_patcher(host, "SDXL"), _clip_patcher(host)
    text_encoder = host.host_model.text_encoder_module(SimpleNamespace(cond_stage_model=clip.model))
    targets = select_targets(text_encoder, "attention_ff")
    per_encoder = {prefix: [t for t in targets if t.startswith(prefix)]
                   for prefix in ("clip_l.transformer.", "clip_g.transformer.")}
    assert len(per_encoder["clip_l.transformer."]) == CLIP_L["num_hidden_layers"] * len(CLIP_LAYER_TARGETS)
    assert len(per_encoder["clip_g.transformer."]) == CLIP_G["num_hidden_layers"] * len(CLIP_LAYER_TARGETS)
    assert len(targets) == sum(len(v) for v in per_encoder.values())

    names = host.host_model.clip_kohya_names(model, targets, TEXT_ENCODER_KEY_PREFIX)
    assert sorted(names) == sorted(TEXT_ENCODER_KEY_PREFIX + t for t in targets)
    assert len(set(names.values())) == len(targets)
    # kohya's SDXL layout: te1 is CLIP-L, te2 is CLIP-G (OpenCLIP bigG).
    for target in per_encoder["clip_l.transformer."]:
        assert names[TEXT_ENCODER_KEY_PREFIX + target].startswith("lora_te1_text_model_encoder_layers_")
    for target in per_encoder["clip_g.transformer."]:
        assert names[TEXT_ENCODER_KEY_PREFIX + target].startswith("lora_te2_text_model_encoder_layers_")

    key_map = host.comfy.lora.model_lora_keys_clip(clip.model, {})
    wrong = {kohya: key_map.get(kohya) for key, kohya in names.items()
             if key_map.get(kohya) != key.removeprefix(TEXT_ENCODER_KEY_PREFIX) + ".weight"}
    assert wrong == {}


def test_exported_sdxl_unet_and_text_encoder_lora_loads_fully_through_the_host(
        host: SimpleNamespace, caplog: pytest.LogCaptureFixture) -> None:
    """One adapter set over the UNet and both text encoders, as a run with train_text_encoder exports it."""
    model, clip = _unet_patcher(host, "SDXL"), _clip_patcher(host)
    unet = host.host_model.diffusion_module(model)
    text_encoder = host.host_model.text_encoder_module(SimpleNamespace(cond_stage_model=clip.model))
    adapters = LoraAdapterSet(rank=2, alpha=4.0)
    unet_layers = select_targets(unet, "attention_ff_conv")
    adapters.attach(unet, unet_layers)
    name_map = host.host_model.unet_kohya_names(model, adapters.keys())
    text_layers = select_targets(text_encoder, "attention_ff_conv")
    name_map.update(host.host_model.clip_kohya_names(model, text_layers, TEXT_ENCODER_KEY_PREFIX))
    adapters.attach(text_encoder, text_layers, key_prefix=TEXT_ENCODER_KEY_PREFIX, group="text_encoder")
    _randomise_up(adapters)
    lora = export_lora(adapters, name_map)
    prefixes = {k.split("_")[1] for k in lora}
    assert prefixes == {"unet", "te1", "te2"}

    key_map = host.comfy.lora.model_lora_keys_unet(model.model, {})
    key_map = host.comfy.lora.model_lora_keys_clip(clip.model, key_map)
    loaded = _load_like_host(host, lora, key_map, [model, clip], caplog)
    assert len(clip.patches) == len(text_layers) and len(model.patches) == len(unet_layers)

    def weight_key(key: str) -> str:
        if key.startswith(TEXT_ENCODER_KEY_PREFIX):
            return key.removeprefix(TEXT_ENCODER_KEY_PREFIX) + ".weight"
        return f"diffusion_model.{key}.weight"
    _assert_patches_are_our_deltas(host, loaded, adapters, weight_key,
                                   {**model.model.state_dict(), **clip.model.state_dict()})


@pytest.mark.parametrize("family", ["SD3", "Flux"])
def test_text_encoder_training_is_refused_where_no_kohya_prefix_is_known(host: SimpleNamespace, family: str) -> None:
    with pytest.raises(host.host_model.UnsupportedModelError, match="text encoder"):
        host.host_model.clip_kohya_names(_unet_patcher(host, family), ["clip_l.transformer.x"], "")


def test_sdxl_denoiser_gets_its_adm_vector_from_the_host_and_trains_a_lora(host: SimpleNamespace) -> None:
    patcher = _unet_patcher(host, "SDXL")
    unet = host.host_model.diffusion_module(patcher)
    adapters = LoraAdapterSet(rank=2, alpha=2.0)
    adapters.attach(unet, select_targets(unet, "attention"))
    _randomise_up(adapters)
    denoise = host.host_model.denoiser_for(patcher)
    assert not host.host_model.adds_residuals_in_place(patcher)  # trained without the in-place guard
    generator = torch.Generator().manual_seed(0)
    x, condition = _denoiser_inputs("SDXL", generator)
    _fill_weights(unet, generator)
    prediction = denoise(x, torch.tensor([10, 500]), condition)
    assert prediction.shape == x.shape and torch.isfinite(prediction).all()
    prediction.square().mean().backward()
    assert all(adapters[k].lora_down.weight.grad is not None for k in adapters.keys())
    with torch.no_grad():  # the pooled text reaches the model through the ADM vector
        assert not torch.allclose(denoise(x, torch.tensor([10, 500]), {**condition, "pooled": condition["pooled"] * 2}),
                                  prediction)
    with pytest.raises(host.host_model.UnsupportedModelError, match="pooled"):
        denoise(x, torch.tensor([10, 500]), condition["context"])


# (latent channels, context tokens, context width, pooled width) of the tiny models above.
DENOISER_INPUTS = {"SDXL": (4, 77, 32, 32), "SD3": (16, 7, 32, 32), "Flux": (16, 7, 32, 32)}


def _denoiser_inputs(family: str, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A batch of 2 noisy latents at 8x8 and their condition ({"context", "pooled"}) for the family's tiny model."""
    channels, tokens, context_width, pooled_width = DENOISER_INPUTS[family]
    x = torch.randn(2, channels, 8, 8, generator=generator)
    return x, {"context": torch.randn(2, tokens, context_width, generator=generator),
               "pooled": torch.randn(2, pooled_width, generator=generator)}


def _unet_with_lora(host: SimpleNamespace, family: str, targets: str, generator: torch.Generator):
    """The family's tiny model with random weights and a LoRA (non-zero up) on `targets`: patcher, module, adapters."""
    patcher = _unet_patcher(host, family)
    unet = host.host_model.diffusion_module(patcher)
    _fill_weights(unet, generator)
    adapters = LoraAdapterSet(rank=2, alpha=2.0)
    adapters.attach(unet, select_targets(unet, targets))
    _randomise_up(adapters)
    return patcher, unet, adapters


@pytest.mark.parametrize("family", ["SD3", "Flux"])
def test_flow_models_train_on_their_own_sigma_table_and_inputs(host: SimpleNamespace, family: str) -> None:
    generator = torch.Generator().manual_seed(0)
    patcher, unet, adapters = _unet_with_lora(host, family, "attention_ff", generator)
    sampling = patcher.get_model_object("model_sampling")
    schedule = host.host_model.noise_schedule_for(patcher)
    assert schedule.prediction_type == "flow"
    assert torch.equal(schedule.flow_sigmas, sampling.sigmas.float())  # SD3's shift, Flux's time shift
    x, condition = _denoiser_inputs(family, generator)
    denoise = host.host_model.denoiser_for(patcher)
    timesteps = torch.tensor([0, schedule.num_timesteps - 1])
    assert host.host_model.adds_residuals_in_place(patcher)
    with normalisation_inputs_copied(unet):  # as training_run guards these models (in-place residual adds)
        prediction = denoise(x, timesteps, condition)
        prediction.square().mean().backward()
    assert prediction.shape == x.shape and torch.isfinite(prediction).all()
    assert all(adapters[k].lora_down.weight.grad is not None for k in adapters.keys())
    with torch.no_grad():  # the timestep reaches the model as its sigma: another step, another prediction
        assert not torch.allclose(denoise(x, timesteps.flip(0), condition), prediction)
        assert not torch.allclose(denoise(x, timesteps, {**condition, "pooled": condition["pooled"] * 2}),
                                  prediction)


@pytest.mark.parametrize("family", ["SDXL", "Flux"])
def test_training_runs_the_hosts_pytorch_attention_and_predicts_what_the_hosts_own_choice_does(
        host: SimpleNamespace, family: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import comfy.ldm.modules.attention as attention
    training_attention = import_pack_module("nodes.host.training_attention")
    assert attention.optimized_attention.__name__ == "attention_sub_quad"  # what the host picks on a CPU
    for replaced in (attention.attention_sub_quad, attention.attention_sage, attention.attention_split):
        assert training_attention.trains_with(replaced) is attention.attention_pytorch
    assert training_attention.trains_with(attention.attention_xformers) is attention.attention_xformers

    generator = torch.Generator().manual_seed(0)
    patcher, unet, adapters = _unet_with_lora(host, family, "attention", generator)
    x, condition = _denoiser_inputs(family, generator)
    timesteps = torch.tensor([10, 500]) if family == "SDXL" else torch.tensor([0, 999])
    denoise = host.host_model.denoiser_for(patcher)

    def prediction_and_gradients() -> tuple[torch.Tensor, list[torch.Tensor]]:
        with normalisation_inputs_copied(unet):
            prediction = denoise(x, timesteps, condition)
            prediction.square().mean().backward()
        grads = [adapters[k].lora_down.weight.grad.clone() for k in adapters.keys()]
        for key in adapters.keys():
            adapters[key].lora_down.weight.grad = adapters[key].lora_up.weight.grad = None
        return prediction.detach(), grads

    calls: list[int] = []
    pytorch_attention = attention.attention_pytorch
    monkeypatch.setattr(attention, "attention_pytorch", lambda *a, **k: calls.append(1) or pytorch_attention(*a, **k))
    trained, trained_grads = prediction_and_gradients()
    assert calls, "the training forward did not go through the host's pytorch attention"
    calls.clear()
    monkeypatch.setattr(host.host_model, "training_transformer_options", dict)  # the host's own choice
    reference, reference_grads = prediction_and_gradients()
    assert not calls
    torch.testing.assert_close(trained, reference, rtol=1e-4, atol=1e-5)
    for got, expected in zip(trained_grads, reference_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("family", ["SDXL", "SD3", "Flux"])
def test_gradient_checkpointing_recomputes_the_hosts_blocks_with_the_same_gradients(host: SimpleNamespace,
                                                                                     family: str) -> None:
    gradient_checkpointing = import_pack_module("trainer.training.loop").gradient_checkpointing
    generator = torch.Generator().manual_seed(0)
    patcher, unet, adapters = _unet_with_lora(host, family, "attention_ff", generator)
    blocks = host.host_model.checkpoint_blocks(patcher)
    lists = [child for child in unet.children() if isinstance(child, torch.nn.ModuleList)]
    assert lists and len(blocks) >= sum(len(c) for c in lists)  # every block of its block lists, or their layers
    x, condition = _denoiser_inputs(family, generator)
    timesteps = torch.tensor([10, 500])
    denoise = host.host_model.denoiser_for(patcher)

    def gradients(modules) -> list[torch.Tensor]:
        with normalisation_inputs_copied(unet), gradient_checkpointing(modules):
            saved: list[int] = []
            with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
                loss = denoise(x, timesteps, condition).square().mean()
            loss.backward()
        grads = [p.grad.clone() for p in adapters.parameters()]
        for p in adapters.parameters():
            p.grad = None
        return grads, sum(saved)

    plain, plain_saved = gradients(None)
    checkpointed, checkpointed_saved = gradients(blocks)
    assert checkpointed_saved < plain_saved / 2  # only the blocks' inputs are kept for backward
    for got, expected in zip(checkpointed, plain, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
