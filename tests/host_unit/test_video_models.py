"""Video models (Wan 2.1 / 2.2 text-to-video) built from the host's own classes at a tiny size: 5-D latents
[B, C, frames, h, w] train through nodes/host/model.py's denoiser (loss falls, every LoRA gets a gradient, the LoRA
changes the prediction), the kohya names exported are the ones the host's loader maps (no key left), the Conv3d
patch embedding is named when it is left out, and images and videos encode to 5-D latents through the host's own
Wan VAE (`comfy.sd.VAE`)."""
from __future__ import annotations

import importlib
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from scripts.host_import import import_comfy, import_pack_module
from tests.host_unit.test_host_model_families import _assert_patches_are_our_deltas, _load_like_host, _randomise_up
from tests.support.tiny_host_models import SDXL_UNET, WAN21_DIT, WAN21_VAE, WAN22_DIT
from tests.support.tiny_models import config
from tests.support.videos import write_video
from trainer.data.scan import scan_dataset
from trainer.data.video_sampling import VideoSampling
from trainer.errors import ConfigError
from trainer.training.config import LoraShape
from trainer.training.evaluation import evaluate
from trainer.training.export import export_lora
from trainer.training.inplace_guard import normalisation_inputs_copied
from trainer.training.layer_selection import select_layers, select_targets
from trainer.training.loop import train
from trainer.training.trainable_lora import LoraAdapterSet

pytestmark = pytest.mark.usefixtures("host_training_mode")  # as Train LoRA trains

CPU = torch.device("cpu")
FAMILIES = {"WAN21_T2V": WAN21_DIT, "WAN22_T2V": WAN22_DIT}
# Per Wan block: self- and cross-attention q, k, v, o and the two ffn layers.
BLOCK_TARGETS = tuple(f"{attn}.{p}" for attn in ("self_attn", "cross_attn") for p in "qkvo") + ("ffn.0", "ffn.2")


@pytest.fixture(scope="module")
def host() -> SimpleNamespace:
    comfy = import_comfy()
    importlib.import_module("comfy.sd")  # the VAE class
    return SimpleNamespace(comfy=comfy, host_model=import_pack_module("nodes.host.model"),
                           encoded_dataset=import_pack_module("nodes.host.encoded_dataset"))


def _wan(host: SimpleNamespace, family: str, seed: int = 0):
    """The family's tiny Wan model (a ModelPatcher) with weights a real model could have: variance-preserving
    linear and conv weights, norms at weight 1 and bias 0, small modulation. The host leaves them uninitialised,
    and norms at 0 would make every prediction a constant that no LoRA changes."""
    model_config = getattr(host.comfy.supported_models, family)(dict(FAMILIES[family]))
    patcher = host.comfy.model_patcher.ModelPatcher(model_config.get_model({}), load_device=CPU, offload_device=CPU)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in host.host_model.diffusion_module(patcher).modules():
            for name, tensor in module.named_parameters(recurse=False):
                if name == "bias":
                    tensor.zero_()
                elif tensor.ndim == 1:  # LayerNorm / RMSNorm weights
                    tensor.fill_(1.0)
                elif name == "weight":
                    fan_in = tensor[0].numel()
                    tensor.normal_(0.0, fan_in ** -0.5, generator=generator)
                else:  # the blocks' and head's modulation
                    tensor.normal_(0.0, 0.1, generator=generator)
    return patcher


def _video_batch(channels: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two clean 3-frame latents [2, C, 3, 4, 4] and their text context [2, tokens, 32]."""
    return torch.randn(2, channels, 3, 4, 4, generator=generator), torch.randn(2, 5, 32, generator=generator)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_wan_is_a_flow_model_whose_names_and_base_version_the_host_knows(host: SimpleNamespace, family: str,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    patcher = _wan(host, family)
    assert host.host_model.model_family(patcher) == family
    schedule = host.host_model.noise_schedule_for(patcher)
    sampling = patcher.get_model_object("model_sampling")
    assert schedule.prediction_type == "flow" and torch.equal(schedule.flow_sigmas, sampling.sigmas.float())
    assert host.host_model.base_model_version(patcher) == {"WAN21_T2V": ("wan21", "wan2.1/lora"),
                                                           "WAN22_T2V": ("wan22", "wan2.2/lora")}[family]

    unet = host.host_model.diffusion_module(patcher)
    targets = select_targets(unet, "attention_ff")
    assert targets == [f"blocks.{b}.{t}" for b in range(WAN21_DIT["num_layers"]) for t in BLOCK_TARGETS]
    names = host.host_model.unet_kohya_names(patcher, targets)
    key_map = host.comfy.lora.model_lora_keys_unet(patcher.model, {})
    assert {kohya: key_map.get(kohya) for kohya in names.values()} == {
        names[t]: f"diffusion_model.{t}.weight" for t in targets}

    adapters = LoraAdapterSet(rank=2, alpha=1.0)
    adapters.attach(unet, targets)
    _randomise_up(adapters)
    lora = export_lora(adapters, names)
    assert len(lora) == 3 * len(targets)
    loaded = _load_like_host(host, lora, key_map, [patcher], caplog)  # no key left, every patch accepted
    _assert_patches_are_our_deltas(host, loaded, adapters, lambda key: f"diffusion_model.{key}.weight",
                                   patcher.model.state_dict())


def test_the_conv3d_patch_embedding_is_named_when_left_out(host: SimpleNamespace,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    unet = host.host_model.diffusion_module(_wan(host, "WAN21_T2V"))
    with caplog.at_level(logging.WARNING):
        selected = select_layers({"diffusion model": unet}, LoraShape(targets="attention_ff_conv"))
    assert selected["diffusion model"] == select_targets(unet, "attention_ff")  # Wan has no Conv2d to add
    assert [r.getMessage() for r in caplog.records] == [
        "targets 'attention_ff_conv': 1 layer(s) left out, a LoRA cannot be trained on their type (LoRA Lab trains "
        "Linear and Conv2d layers): patch_embedding (Conv3d)"]
    with pytest.raises(ConfigError, match=r"'patch_embedding' matches no Linear or Conv2d layer of the diffusion "
                                          r"model, only layers of a type LoRA Lab cannot train a LoRA on "
                                          r"\('patch_embedding', a Conv3d\)"):
        select_layers({"diffusion model": unet}, LoraShape(include_layers="patch_embedding"))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_five_dimensional_latents_train_a_lora_through_the_hosts_wan(host: SimpleNamespace, family: str) -> None:
    patcher = _wan(host, family)
    unet = host.host_model.diffusion_module(patcher)
    denoise = host.host_model.denoiser_for(patcher)
    schedule = host.host_model.noise_schedule_for(patcher)
    latents, context = _video_batch(FAMILIES[family]["out_dim"], torch.Generator().manual_seed(1))

    probe = LoraAdapterSet(rank=2, alpha=2.0)
    probe.attach(unet, select_targets(unet, "attention_ff"))
    timesteps = torch.tensor([100, 700])
    with torch.no_grad(), normalisation_inputs_copied(unet):
        before = denoise(latents, timesteps, context)
        _randomise_up(probe)
        after = denoise(latents, timesteps, context)
        assert not torch.allclose(denoise(latents, timesteps.flip(0), context), after)  # the timestep reaches it
    assert before.shape == latents.shape and torch.isfinite(after).all()
    assert (after - before).abs().max() > 1e-3 * before.abs().max()  # the LoRA changes the prediction
    with normalisation_inputs_copied(unet):
        denoise(latents, timesteps, context).square().mean().backward()
    assert all(probe[k].lora_down.weight.grad.abs().sum() > 0 for k in probe.keys())
    probe.detach()

    cfg = config(steps=30, learning_rate=1e-2, batch_size=2, lora=LoraShape(rank=4, alpha=4.0,
                                                                           targets="attention_ff"))
    adapters = LoraAdapterSet.from_config(cfg.lora, seed=0)
    adapters.attach(unet, select_targets(unet, "attention_ff"))

    def batches(index: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return latents, context

    with normalisation_inputs_copied(unet):
        start = evaluate(denoise, adapters, batches, schedule, fixed_seed=3, num_batches=2)
        result = train(denoise, adapters, batches, schedule, cfg, lambda record: None)
        end = evaluate(denoise, adapters, batches, schedule, fixed_seed=3, num_batches=2)
    assert result.steps_completed == 30
    print(f"{family}: loss at fixed noise {start:.4f} -> {end:.4f}")
    assert end < 0.8 * start, (start, end)


def test_an_image_to_video_wan_is_refused_in_the_users_terms(host: SimpleNamespace) -> None:
    model_config = host.comfy.supported_models.WAN21_I2V({**WAN21_DIT, "model_type": "i2v", "in_dim": 36})
    patcher = host.comfy.model_patcher.ModelPatcher(model_config.get_model({}), load_device=CPU, offload_device=CPU)
    with pytest.raises(host.host_model.UnsupportedModelError, match=r"takes 36 input channels for its 16 latent "
                                                                    r"channels: an image-to-video or control model"):
        host.host_model.denoiser_for(patcher)


class _UnusedClip:
    """Stands in for the CLIP argument, which encode_dataset does not call without contexts."""


def test_images_and_videos_encode_to_five_dimensional_latents_through_the_hosts_wan_vae(
        host: SimpleNamespace, tmp_path: Path) -> None:
    vae_model = host.comfy.ldm.wan.vae.WanVAE(**WAN21_VAE)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in vae_model.state_dict().values():
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
    vae = host.comfy.sd.VAE(sd=vae_model.state_dict(), device=CPU)
    assert (vae.latent_dim, vae.temporal_compression_decode()) == (3, 4)
    patcher = _wan(host, "WAN21_T2V")

    Image.new("RGB", (64, 64), (90, 140, 200)).save(tmp_path / "still.png")
    (tmp_path / "still.txt").write_text("a still", encoding="utf-8")
    write_video(tmp_path / "clip.mp4", 12, size=(64, 64))
    spec = scan_dataset(tmp_path, resolution=64, flip=True, video=VideoSampling(frames=9))
    encoded = host.encoded_dataset.encode_dataset(spec.items, spec, patcher, _UnusedClip(), vae, contexts=False,
                                                  before_each=lambda index, count: None)
    shapes = {item.relative_path: (tuple(e.latent.shape), tuple(e.flipped.shape))
              for item, e in zip(spec.items, encoded, strict=True)}
    assert shapes == {"clip.mp4": ((16, 3, 8, 8), (16, 3, 8, 8)),  # 9 frames -> 1 + 8 / 4 latent frames
                      "still.png": ((16, 1, 8, 8), (16, 1, 8, 8))}  # an image is a one-frame video
    assert [host.host_model.latent_frames(vae, item.frame_count) for item in spec.items] == [3, 1]  # the estimate's
    # A training sample is a one-frame video: decoded as the host's VAEDecode gives it, one [1, H, W, 3] image.
    sample = host.host_model.decode_latents(vae, encoded[1].latent[None])
    assert sample.shape == (1, 64, 64, 3)
    assert all(torch.isfinite(e.latent).all() and e.latent.std() > 0 for e in encoded)

    dataset_error = host.host_model.DatasetError  # the pack's class, as the host-side modules raise it
    with pytest.raises(dataset_error, match=r"video_frames = 7 does not suit this model's VAE, which packs each 4 "
                                           r"frames after the first into one latent frame, so it takes 1 \+ 4k "
                                           r"frames; set video_frames on the LoRA Dataset node to 5 or 9"):
        host.host_model.check_dataset_fits(vae, patcher, scan_dataset(tmp_path, video=VideoSampling(7)).items)
    sdxl = host.comfy.model_patcher.ModelPatcher(host.comfy.supported_models.SDXL(dict(SDXL_UNET)).get_model({}),
                                                 load_device=CPU, offload_device=CPU)
    with pytest.raises(dataset_error, match=r"the dataset holds videos \('clip.mp4'\), but this SDXL model makes "
                                           r"images; train videos on a video model"):
        host.host_model.check_dataset_fits(vae, sdxl, spec.items)
    still = tuple(item for item in spec.items if item.video is None)
    with pytest.raises(host.host_model.UnsupportedModelError, match=r"the connected VAE gives video latents, but "
                                                                    r"this SDXL model takes image latents"):
        host.host_model.check_dataset_fits(vae, sdxl, still)
