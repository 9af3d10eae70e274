"""Configs of tiny real SD1.5, SDXL, SD3, Flux and Wan denoisers (and a Wan VAE), built from the host's own classes
by the host_unit tests."""
from __future__ import annotations

import dataclasses
import importlib

import pytest
import torch

# SD1.5's UNet layout (1x1-conv proj_in, cross-attention) at 32 channels, one level.
TINY_SD15_UNET = {"use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4,
                  "model_channels": 32, "num_res_blocks": [1], "channel_mult": [1], "transformer_depth": [1],
                  "transformer_depth_output": [1, 1], "transformer_depth_middle": 1, "num_heads": 2,
                  "num_head_channels": -1, "use_spatial_transformer": True, "legacy": False, "context_dim": 32,
                  "use_linear_in_transformer": False, "adm_in_channels": None, "use_temporal_attention": False,
                  "use_temporal_resblock": False}
# SDXL's UNet (comfy.model_detection's SDXL config) with 32/64/128 channels and one transformer per block
# where SDXL has 2 or 10: same levels, res blocks, linear proj_in/out and label embedding (ADM) as the real one.
# ADM input = a 32-wide pooled text embedding + the six 256-wide size embeddings the host's encode_adm adds.
SDXL_UNET = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
             "legacy": False, "num_classes": "sequential", "adm_in_channels": 1536 + 32, "dtype": torch.float32,
             "in_channels": 4, "model_channels": 32, "num_res_blocks": [2, 2, 2],
             "transformer_depth": [0, 0, 1, 1, 1, 1], "channel_mult": [1, 2, 4], "transformer_depth_middle": 1,
             "use_linear_in_transformer": True, "context_dim": 32, "num_head_channels": 16,
             "transformer_depth_output": [0, 0, 0, 1, 1, 1, 1, 1, 1],
             "use_temporal_attention": False, "use_temporal_resblock": False}
# SD3.5-medium-like MMDiT (what comfy.model_detection reads from a checkpoint): depth 2 -> hidden 128, 2 heads;
# the last joint block's context block is pre-only (qkv, no proj/mlp); block 0 has the x-block attn2.
SD3_MMDIT = {"in_channels": 16, "patch_size": 2, "out_channels": 16, "depth": 2, "input_size": None,
             "adm_in_channels": 32,
             "context_embedder_config": {"target": "torch.nn.Linear",
                                         "params": {"in_features": 32, "out_features": 128}},
             "num_patches": 64, "pos_embed_max_size": 8, "qk_norm": "rms", "pos_embed_scaling_factor": None,
             "x_block_self_attn_layers": [0]}
# Flux-dev's config (comfy.model_detection) with hidden 64 / 2 heads, one double and one single block.
FLUX_DIT = {"image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": 32, "context_in_dim": 32,
            "hidden_size": 64, "mlp_ratio": 4.0, "num_heads": 2, "depth": 1, "depth_single_blocks": 1,
            "axes_dim": [8, 12, 12], "theta": 10000, "patch_size": 2, "qkv_bias": True, "guidance_embed": True}
# Wan 2.1 text-to-video (comfy.model_detection's keys for a WanModel) with hidden 32 / 2 heads and two blocks:
# the same patch embedding (Conv3d, patch 1x2x2), self/cross attention (q, k, v, o), ffn, modulation and head as
# the 1.3B / 14B models; a 32-wide text embedding stands in for UMT5-XXL's 4096.
WAN21_DIT = {"image_model": "wan2.1", "model_type": "t2v", "patch_size": (1, 2, 2), "text_len": 16, "in_dim": 16,
             "dim": 32, "ffn_dim": 64, "freq_dim": 32, "text_dim": 32, "out_dim": 16, "num_heads": 2,
             "num_layers": 2, "window_size": (-1, -1), "qk_norm": True, "cross_attn_norm": True, "eps": 1e-6}
# Wan 2.2's 5B TI2V model (the host's WAN22_T2V: 48 latent channels in and out, the 16x Wan 2.2 VAE's).
WAN22_DIT = {**WAN21_DIT, "in_dim": 48, "out_dim": 48}
# Wan 2.1's VAE (comfy.sd.VAE builds it from a state dict: its width from decoder.head.0.gamma) at width 8 where
# the real one has 96: 0.9 M parameters, 8x spatial and 4x temporal compression as the real one.
WAN21_VAE = {"dim": 8, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_scales": [],
             "temperal_downsample": [False, True, True], "dropout": 0.0}


def host_model_config(comfy, config_class: str, unet_config: dict):
    """The host's `comfy.supported_models.<config_class>` for one of these configs, with the keys a newer host's model
    class requires filled in as its model detection fills them for such a checkpoint (ComfyUI 0.33's Flux takes
    `txt_ids_dims`, [] for Flux-dev; 0.3.75's refuses the key)."""
    config = dict(unet_config)
    if config.get("image_model") == "flux":
        params = importlib.import_module("comfy.ldm.flux.model").FluxParams
        if "txt_ids_dims" in {field.name for field in dataclasses.fields(params)}:
            config.setdefault("txt_ids_dims", [])
    return getattr(comfy.supported_models, config_class)(config)


def skip_without_scaled_fp8_layers(comfy) -> None:
    """ComfyUI 0.3.75 builds scaled-fp8 checkpoints with `comfy.ops.scaled_fp8_ops`; 0.33 has no such layer type (it
    converts those files into its mixed-precision layers at load, which the quantized-Linear tests train)."""
    if not hasattr(comfy.ops, "scaled_fp8_ops"):
        pytest.skip("this host has no scaled-fp8 layer type: it loads such files as mixed-precision layers")
