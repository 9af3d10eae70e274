"""Builds the small random-weight checkpoint that ComfyUI detects as SD1.5 (no download possible here).

Run with the host's folder on sys.path (``--comfy-dir``): the UNet and VAE are built from the host's own
classes so their key names and shapes are exactly what the host's loader expects; the text encoder is
transformers' CLIPTextModel with the host's fixed CLIP-L config.

Why every tensor is filled by hand: the host's layers skip weight initialisation (``torch.empty``).
Norm weights must be 1: a model whose norm weights are 0 predicts a constant, no LoRA changes its
output, and every equality test on it would pass vacuously.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
from pathlib import Path

import torch

log = logging.getLogger("make_tiny_checkpoint")

UNET_CONFIG = {
    "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
    "num_res_blocks": [1, 1], "channel_mult": [1, 2], "transformer_depth": [1, 1],
    "transformer_depth_output": [1, 1, 1, 1], "transformer_depth_middle": 1,
    "num_heads": 8, "num_head_channels": -1,
    "use_spatial_transformer": True, "legacy": False, "context_dim": 768,
    "use_linear_in_transformer": False, "adm_in_channels": None, "use_temporal_attention": False,
    "use_temporal_resblock": False,
}
# The real SD1.5 UNet (860 M parameters): what users train, for the speed benchmarks and profiles.
FULL_UNET_CONFIG = {**UNET_CONFIG, "image_size": 64, "num_res_blocks": [2, 2, 2, 2], "channel_mult": [1, 2, 4, 4],
                    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
                    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]}
VAE_DDCONFIG = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3,
                "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}


def fill_deterministically(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Variance-preserving normal weights for matrices and kernels, norms at 1/0, biases 0."""
    with torch.no_grad():
        for name, tensor in module.state_dict(keep_vars=True).items():
            leaf = name.rsplit(".", 1)[-1]
            if tensor.dtype not in (torch.float32, torch.float16, torch.bfloat16):
                continue
            if tensor.ndim >= 2:
                fan_in = tensor[0].numel()
                std = 0.02 if "embedding" in name else 1.0 / math.sqrt(fan_in)
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * std)
            elif leaf == "weight":  # 1-D weights belong to norm layers
                tensor.fill_(1.0)
            elif leaf == "bias":
                tensor.zero_()


def build_state_dict(seed: int, unet_config: dict) -> dict[str, torch.Tensor]:
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from transformers import CLIPTextConfig, CLIPTextModel

    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    unet = UNetModel(**unet_config)
    fill_deterministically(unet, generator)
    state.update({f"model.diffusion_model.{k}": v for k, v in unet.state_dict().items()})
    del unet

    vae = AutoencoderKL(ddconfig=VAE_DDCONFIG, embed_dim=4)
    fill_deterministically(vae, generator)
    state.update({f"first_stage_model.{k}": v for k, v in vae.state_dict().items()})
    del vae

    import comfy.sd1_clip
    config_path = Path(comfy.sd1_clip.__file__).with_name("sd1_clip_config.json")
    clip = CLIPTextModel(CLIPTextConfig(**json.loads(config_path.read_text())))
    fill_deterministically(clip, generator)
    state.update({f"cond_stage_model.transformer.{k}": v for k, v in clip.state_dict().items()
                  if not k.endswith("position_ids")})
    return {k: v.detach().to(torch.float16).contiguous() for k, v in state.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfy-dir", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=20261201)
    parser.add_argument("--full-size", action="store_true",
                        help="the real SD1.5 UNet (channel_mult [1, 2, 4, 4], two res blocks per level) instead of "
                             "the small one")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.out.exists():
        log.info("checkpoint already built: %s", args.out)
        return
    sys.path.insert(0, str(args.comfy_dir.resolve()))
    sys.argv = [sys.argv[0], "--cpu"]  # the host's modules read its CLI flags at import; no GPU is needed to build
    import comfy.options
    comfy.options.enable_args_parsing()
    from safetensors.torch import save_file

    state = build_state_dict(args.seed, FULL_UNET_CONFIG if args.full_size else UNET_CONFIG)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=args.out.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp, metadata={"loralab.note": "random weights, SD1.5 architecture, for tests"})
        os.replace(tmp, args.out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    params = sum(v.numel() for v in state.values())
    log.info("wrote %s (%.0f M parameters)", args.out, params / 1e6)


if __name__ == "__main__":
    main()
