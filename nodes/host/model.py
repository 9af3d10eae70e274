"""What the engine needs from the host's MODEL, CLIP and VAE: a denoiser, a noise schedule, kohya names."""
from __future__ import annotations

import comfy.model_base
import comfy.model_management
import comfy.utils
import psutil
import torch

from ...trainer.data.latents import Condition, stack_contexts
from ...trainer.data.spec import DatasetItem
from ...trainer.errors import DatasetError, UnsupportedModelError
from ...trainer.training.objective import NoiseSchedule
from .training_attention import training_transformer_options

PREDICTION_TYPES = {comfy.model_base.ModelType.EPS: "epsilon", comfy.model_base.ModelType.V_PREDICTION: "v"}
# Rectified-flow models (SD3 and Wan = FLOW, Flux = FLUX): x_t = (1 - s) x_0 + s noise, the model predicts noise - x_0.
FLOW_MODEL_TYPES = {getattr(comfy.model_base.ModelType, name) for name in ("FLOW", "FLUX")
                    if hasattr(comfy.model_base.ModelType, name)}
LATENT_SCALE = 8  # image pixels per latent pixel of the models that take the image size (SDXL's ADM vector)
FLUX_TRAINING_GUIDANCE = 1.0  # the guidance input of guidance-distilled Flux models while training (kohya's advice)
# kohya's ss_base_model_version and the SAI model-spec architecture for the host's model classes.
BASE_MODEL_VERSIONS = {"SD15": ("sd_v1", "stable-diffusion-v1/lora"),
                       "SD20": ("sd_v2", "stable-diffusion-v2-512/lora"),
                       "SDXL": ("sdxl_base_v1-0", "stable-diffusion-xl-v1-base/lora"),
                       "SD3": ("sd3", "stable-diffusion-v3-medium/lora"),
                       "Flux": ("flux1", "flux-1-dev/lora"), "FluxSchnell": ("flux1", "flux-1-schnell/lora"),
                       # The host detects Wan 2.2's 14B text-to-video models as WAN21_T2V (the same network) and
                       # its 5B TI2V model as WAN22_T2V; musubi-tuner's architecture names.
                       "WAN21_T2V": ("wan21", "wan2.1/lora"), "WAN22_T2V": ("wan22", "wan2.2/lora")}
# UNets whose kohya files use diffusers module names (kohya converts SD1/SD2 to diffusers layout).
DIFFUSERS_NAMED_UNETS = {"SD15", "SD20"}
# Text-encoder prefixes inside the host's CLIP -> kohya prefixes.
CLIP_PREFIXES = {"SD15": {"clip_l.transformer.": "lora_te_"}, "SD20": {"clip_h.transformer.": "lora_te_"},
                 "SDXL": {"clip_l.transformer.": "lora_te1_", "clip_g.transformer.": "lora_te2_"}}


def model_family(model) -> str:
    return type(model.model.model_config).__name__


def diffusion_module(model) -> torch.nn.Module:
    return model.model.diffusion_model


def checkpoint_blocks(model) -> list[torch.nn.Module]:
    """The blocks gradient checkpointing recomputes in backward: the items of the diffusion model's top-level
    block lists (SD3's joint blocks, Flux's double and single blocks) and, for a UNet, the layers of its input,
    middle and output blocks (the host calls those layers one by one, not the blocks' own forward). Only the
    activations between them are kept for backward."""
    diffusion = diffusion_module(model)
    lists = [child for child in diffusion.children() if isinstance(child, torch.nn.ModuleList)]
    middle = getattr(diffusion, "middle_block", None)
    blocks = [block for blocks in lists for block in blocks] + ([middle] if isinstance(middle, torch.nn.Module)
                                                                 else [])
    return [layer for block in blocks
            for layer in (block.children() if isinstance(block, torch.nn.Sequential) else (block,))]


def text_encoder_module(clip) -> torch.nn.Module:
    """The host CLIP's torch module (every text encoder of the model, e.g. clip_l and clip_g for SDXL)."""
    return clip.cond_stage_model


def layer_weight(layer: torch.nn.Module) -> torch.Tensor:
    """A layer's weight as it computes with it (DoRA's base weight): the host's scaled-fp8 and quantized layers turn
    their stored weight into it with their own `convert_weight` (times scale_weight; dequantized)."""
    convert = getattr(layer, "convert_weight", None)
    return layer.weight if convert is None else convert(layer.weight)


def adds_residuals_in_place(model) -> bool:
    """Whether the host's denoiser adds to its residual stream in place (its DiT blocks for SD3/Flux), so that
    training through it needs trainer.inplace_guard."""
    return model.model.model_type in FLOW_MODEL_TYPES


def caption_encoder_for(clip):
    """encode(captions) -> {"context": [B, tokens, width], "pooled": [B, width] or None} through the host's
    CLIP, with autograd (for a LoRA on the CLIP)."""
    tokens: dict[str, object] = {}

    def encode(captions: tuple[str, ...]) -> dict[str, torch.Tensor | None]:
        for caption in captions:
            if caption not in tokens:
                tokens[caption] = clip.tokenize(caption)
        encoded = [clip.encode_from_tokens(tokens[c], return_pooled=True) for c in captions]
        pooled = [p for _, p in encoded]
        return {"context": stack_contexts([c[0] for c, _ in encoded]),
                "pooled": torch.cat(pooled) if all(p is not None for p in pooled) else None}
    return encode


def _takes_adm(model) -> bool:
    """Whether the host's model class builds a `y` input from the pooled text (SDXL's ADM vector, SD3/Flux's pooled)."""
    return type(model.model).encode_adm is not comfy.model_base.BaseModel.encode_adm


def _check_text_to_video(model) -> None:
    """Refuse a video model whose input has more channels than its latent (Wan's image-to-video, camera and control
    models): the extra channels carry an image or control condition, which training does not give."""
    unet = diffusion_module(model)
    in_channels, out_channels = getattr(unet, "in_dim", None), getattr(unet, "out_dim", None)
    if in_channels is not None and in_channels != out_channels:
        raise UnsupportedModelError(f"this {model_family(model)} model takes {in_channels} input channels for its "
                                    f"{out_channels} latent channels: an image-to-video or control model, which "
                                    "needs an image condition that LoRA Lab does not train with yet; train a "
                                    "text-to-video model (Wan 2.1 / 2.2 T2V) instead.")


def compute_dtype(model) -> torch.dtype:
    """The dtype the host's denoiser computes in: its manual-cast dtype when the weights are stored in another
    one (fp8 weights, or fp16/bf16 ones on a device that does not compute in them), else the weights' dtype.
    The host's own layers cast each weight to it as they run (`comfy.ops.cast_bias_weight`), as its
    `BaseModel._apply_model` casts the inputs; the stored weights stay as they are."""
    manual_cast = model.model.manual_cast_dtype
    return manual_cast if manual_cast is not None else model.model.get_dtype()


def denoiser_for(model, encode_captions=None):
    """denoiser(x_t, timesteps, condition) -> the model's raw prediction, in fp32, computed in the host's
    compute dtype for this model (`compute_dtype`: fp32 for fp8 weights on the CPU, never the fp8 storage dtype).

    The condition is the captions' context (a tensor, or {"context", "pooled"}), or the captions themselves,
    encoded here by `encode_captions` (when the text encoder trains, its LoRA needs the encoding inside the
    step's autograd graph). Whatever else the model takes comes from the host's own code: `y` from its
    `encode_adm` (SDXL: pooled text + the image size, original = target = the bucket, no crop, as kohya
    trains; SD3/Flux: the pooled text), the timestep input from its model_sampling (flow models take
    their sigma, scaled), and Flux's guidance input. Video models (Wan) take x_t as [B, C, frames, h, w].
    """
    _check_text_to_video(model)
    unet = diffusion_module(model)
    dtype = compute_dtype(model)
    sampling = model.get_model_object("model_sampling")
    flow = model.model.model_type in FLOW_MODEL_TYPES
    takes_adm = _takes_adm(model)
    guidance = FLUX_TRAINING_GUIDANCE if getattr(getattr(unet, "params", None), "guidance_embed", False) else None

    def denoise(x_t: torch.Tensor, timesteps: torch.Tensor, condition: Condition) -> torch.Tensor:
        if isinstance(condition, torch.Tensor):
            condition = {"context": condition, "pooled": None}
        elif not isinstance(condition, dict):
            condition = encode_captions(condition)
        extra = {}
        if takes_adm:
            if condition["pooled"] is None:
                raise UnsupportedModelError(f"this {model_family(model)} model needs the text encoder's pooled "
                                            "output, which the connected CLIP does not give; connect the "
                                            "checkpoint's own CLIP.")
            height, width = x_t.shape[-2] * LATENT_SCALE, x_t.shape[-1] * LATENT_SCALE
            y = model.model.encode_adm(pooled_output=condition["pooled"], width=width, height=height)
            extra["y"] = y.to(x_t.device, dtype)
        if guidance is not None:
            extra["guidance"] = torch.full((x_t.shape[0],), guidance, device=x_t.device, dtype=dtype)
        if flow:
            sigmas = sampling.sigmas[timesteps.to(sampling.sigmas.device)]
            timesteps = sampling.timestep(sigmas).to(x_t.device, dtype)
        context = condition["context"].to(x_t.device, dtype)
        return unet(x_t.to(dtype), timesteps, context=context, transformer_options=training_transformer_options(),
                    **extra).float()
    return denoise


def noise_schedule_for(model) -> NoiseSchedule:
    """The model's own schedule: for DDPM models alphas_cumprod from its discrete sigmas, for flow models its
    (shifted) sigma table, and the prediction type."""
    sigmas = model.get_model_object("model_sampling").sigmas.detach().float().cpu()
    if model.model.model_type in FLOW_MODEL_TYPES:
        return NoiseSchedule.flow(sigmas=sigmas)
    prediction = PREDICTION_TYPES.get(model.model.model_type)
    if prediction is None:
        raise UnsupportedModelError(f"{model_family(model)} models ({model.model.model_type.name} prediction) "
                                    "cannot be trained yet; supported: epsilon, v-prediction and rectified-flow "
                                    "models (SD1.x, SD2.x, SDXL, SD3, Flux, Wan). LoRAs for them still load with "
                                    "Load LoRA and Stack LoRAs.")
    return NoiseSchedule(alphas_cumprod=1.0 / (1.0 + sigmas ** 2), prediction_type=prediction)


def unet_kohya_names(model, module_names: list[str]) -> dict[str, str]:
    """Engine module name (the host's LDM name) -> kohya prefix; diffusers names for SD1/SD2 UNets."""
    family = model_family(model)
    if family in DIFFUSERS_NAMED_UNETS:
        to_ldm = comfy.utils.unet_to_diffusers(model.model.model_config.unet_config)
        ldm_to_diffusers = {ldm.removesuffix(".weight"): d.removesuffix(".weight")
                            for d, ldm in to_ldm.items() if ldm.endswith(".weight")}
        return {n: "lora_unet_" + ldm_to_diffusers.get(n, n).replace(".", "_") for n in module_names}
    return {n: "lora_unet_" + n.replace(".", "_") for n in module_names}


def clip_kohya_names(model, module_names: list[str], key_prefix: str) -> dict[str, str]:
    """Engine key (`key_prefix` + module name inside the host's CLIP) -> kohya prefix (lora_te_, lora_te1_, ...)."""
    family = model_family(model)
    prefixes = CLIP_PREFIXES.get(family)
    if prefixes is None:
        raise UnsupportedModelError(f"training the text encoder of a {family} model is not supported yet; "
                                    "supported: SD1.x, SD2.x and SDXL. Turn train_text_encoder off.")
    names = {}
    for name in module_names:
        head = next((h for h in prefixes if name.startswith(h)), None)
        if head is None:
            raise UnsupportedModelError(f"text-encoder layer '{name}' is not in a known {family} text encoder "
                                        f"({', '.join(prefixes)}).")
        names[key_prefix + name] = prefixes[head] + name[len(head):].replace(".", "_")
    return names


def base_model_version(model) -> tuple[str, str]:
    """(ss_base_model_version, modelspec.architecture) for the connected model."""
    family = model_family(model)
    if family not in BASE_MODEL_VERSIONS:
        return family.lower(), f"{family.lower()}/lora"
    return BASE_MODEL_VERSIONS[family]


def check_dataset_fits(vae, model, items: tuple[DatasetItem, ...]) -> None:
    """Refuse, before anything is encoded, videos on an image model, a VAE whose latents the model does not take
    (an image VAE on a video model, or the reverse), and a frame count the video VAE cannot encode."""
    family = model_family(model)
    model_dims, vae_dims = model.model.latent_format.latent_dimensions, vae.latent_dim
    videos = [item for item in items if item.video is not None]
    if videos and model_dims != 3:
        raise DatasetError(f"the dataset holds videos ('{videos[0].relative_path}'"
                           + (f" and {len(videos) - 1} more" if len(videos) > 1 else "")
                           + f"), but this {family} model makes images; train videos on a video model (Wan 2.1 / "
                           "2.2), or remove them from the dataset folder.")
    if vae_dims != model_dims:
        kinds = {2: "image", 3: "video"}
        raise UnsupportedModelError(f"the connected VAE gives {kinds.get(vae_dims, vae_dims)} latents, but this "
                                    f"{family} model takes {kinds.get(model_dims, model_dims)} latents; connect the "
                                    "VAE that belongs to the model.")
    if not videos:
        return
    frames, step = videos[0].video.frames, vae.temporal_compression_decode()
    if step and (frames - 1) % step:
        lower = 1 + (frames - 1) // step * step
        raise DatasetError(f"video_frames = {frames} does not suit this model's VAE, which packs each {step} frames "
                           f"after the first into one latent frame, so it takes 1 + {step}k frames; set video_frames "
                           f"on the LoRA Dataset node to {lower} or {lower + step}.")


def latent_frames(vae, frames: int) -> int:
    """The latent frames `frames` video frames encode to: Wan's VAE packs each 4 after the first into one."""
    step = vae.temporal_compression_decode() if frames > 1 else None
    return 1 + (frames - 1) // step if step else frames


def encode_pixels(vae, model, pixels: torch.Tensor) -> torch.Tensor:
    """[B, H, W, 3] in 0..1 -> latents in the model's own latent space (scaled as the UNet expects). A video VAE
    (Wan's) takes the B pixels as the frames of one video: [1, C, latent frames, h, w].

    Cloned outside inference mode: the host encodes in inference mode, and autograd cannot save such tensors.
    """
    with torch.inference_mode(False), torch.no_grad():
        return model.model.process_latent_in(vae.encode(pixels)).float().cpu().clone()


def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Latents -> images [N, H, W, 3] in 0..1, as the host's VAEDecode node gives them (a video model's frames
    in a row)."""
    images = vae.decode(latents)
    return images.reshape(-1, *images.shape[-3:]) if images.ndim == 5 else images


def encode_caption(clip, caption: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The cross-attention context [1, tokens, width] and pooled embedding [1, width] (None if the CLIP has
    none) the host's CLIP gives a caption (normal tensors, as above)."""
    with torch.inference_mode(False), torch.no_grad():
        context, pooled = clip.encode_from_tokens(clip.tokenize(caption), return_pooled=True)
        return context.float().cpu().clone(), None if pooled is None else pooled.float().cpu().clone()


def memory_in_use() -> int:
    """Accelerator memory allocated by torch, or this process's resident memory on the CPU."""
    device = comfy.model_management.get_torch_device()
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    return int(psutil.Process().memory_info().rss)


def free_memory_bytes() -> int:
    return int(comfy.model_management.get_free_memory(comfy.model_management.get_torch_device()))
