"""A checkpoint file from the host's MODEL, CLIP and VAE with their patches applied, in the checkpoints folder.

The steps are the host's `comfy.sd.save_checkpoint`: the patched state dict as the host builds it for saving
(`host_compat.checkpoint_state_dict`: the call differs between 0.3.75 and 0.33), write with
`comfy.utils.save_torch_file`; between the state dict and the write the weights are cast to the precision
asked (the host's function has no such step). The file goes to a temp name first and is linked into place
only if no file has that name, so an existing checkpoint is never overwritten and a failure leaves nothing.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable

import comfy.model_base
import comfy.model_management
import comfy.model_sampling
import comfy.utils
import folder_paths
import torch
from safetensors import SafetensorError

from ...trainer.errors import LoraToolError, LoraWriteError
from .host_compat import checkpoint_state_dict
from .run_files import RunFiles

SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
CASTABLE = (torch.float32, torch.float16, torch.bfloat16)  # fp8 weights and marker tensors stay as they are


def checkpoint_target(output_name: str) -> tuple[str, str]:
    """(file name, full path) in the first checkpoints folder; the name checked as RunFiles.for_name checks it."""
    name = f"{RunFiles.for_name(output_name).name}.safetensors"
    folder = folder_paths.get_folder_paths("checkpoints")[0]
    path = os.path.join(folder, name)
    if os.path.exists(path) or folder_paths.get_full_path("checkpoints", name) is not None:
        raise LoraToolError(f"'{name}' already exists in the checkpoints folder; choose another output name "
                            "(LoRA Lab never overwrites a checkpoint).")
    return name, path


def model_type_fields(model) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, marker tensors) the host's CheckpointSave writes for this model's type, so that the host's
    loader detects v-prediction, zero-terminal SNR and EDM sigmas again (comfy_extras.nodes_model_merging)."""
    metadata: dict[str, str] = {}
    base = model.model
    if isinstance(base, comfy.model_base.SDXL_instructpix2pix):
        metadata["modelspec.architecture"] = "stable-diffusion-xl-v1-edit"
    elif isinstance(base, comfy.model_base.SDXL):
        metadata["modelspec.architecture"] = "stable-diffusion-xl-v1-base"
    elif isinstance(base, comfy.model_base.SDXLRefiner):
        metadata["modelspec.architecture"] = "stable-diffusion-xl-v1-refiner"
    elif isinstance(base, comfy.model_base.SVD_img2vid):
        metadata["modelspec.architecture"] = "stable-video-diffusion-img2vid-v1"
    elif isinstance(base, comfy.model_base.SD3):
        metadata["modelspec.architecture"] = "stable-diffusion-v3-medium"
    if metadata:
        metadata.update({"modelspec.sai_model_spec": "1.0.0", "modelspec.implementation": "sgm"})
    extra: dict[str, torch.Tensor] = {}
    sampling = model.get_model_object("model_sampling")
    if isinstance(sampling, comfy.model_sampling.ModelSamplingContinuousEDM) and \
            isinstance(sampling, comfy.model_sampling.V_PREDICTION):
        extra["edm_vpred.sigma_max"] = torch.tensor(sampling.sigma_max).float()
        extra["edm_vpred.sigma_min"] = torch.tensor(sampling.sigma_min).float()
    if base.model_type == comfy.model_base.ModelType.EPS:
        metadata["modelspec.predict_key"] = "epsilon"
    elif base.model_type == comfy.model_base.ModelType.V_PREDICTION:
        metadata["modelspec.predict_key"] = "v"
        extra["v_pred"] = torch.tensor([])
        if getattr(sampling, "zsnr", False):
            extra["ztsnr"] = torch.tensor([])
    return metadata, extra


def _cast(sd: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in sd.items():
        if value.dtype in CASTABLE and value.numel():
            value = value.to("cpu", dtype)
            if not bool(torch.isfinite(value).all()):
                raise LoraToolError(f"{key} holds NaN/Inf at {dtype} (a LoRA strength too high, or values too "
                                    "large for fp16); save as bf16 or fp32, or lower the strengths.")
        out[key] = value.contiguous()
    return out


def _link_into_place(tmp_path: str, path: str) -> None:
    try:
        os.link(tmp_path, path)  # fails if the name was taken meanwhile: never replaces a file
    except FileExistsError as e:
        raise LoraToolError(f"'{os.path.basename(path)}' appeared in the checkpoints folder while baking; "
                            "choose another output name.") from e
    except OSError:  # a filesystem without hard links
        if os.path.exists(path):
            raise LoraToolError(f"'{os.path.basename(path)}' already exists; choose another output name.") from None
        os.replace(tmp_path, path)


def save_checkpoint(path: str, model, clip, vae, precision: str, metadata: dict[str, str],
                    before_write: Callable[[], None] | None = None) -> None:
    """Write MODEL + CLIP + VAE, patches applied, to `path` at `precision`; see the module docstring.

    `before_write` runs once the weights are ready and before anything is written (raise in it to cancel).
    """
    if precision not in SAVE_DTYPES:
        raise LoraToolError(f"precision {precision!r} is unknown; use one of {', '.join(SAVE_DTYPES)}.")
    type_metadata, extra = model_type_fields(model)
    sd = checkpoint_state_dict(model, clip, vae)
    sd.update(extra)
    sd = _cast(sd, SAVE_DTYPES[precision])
    if before_write is not None:
        before_write()
    folder = os.path.dirname(path)
    fd, tmp_path = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        comfy.utils.save_torch_file(sd, tmp_path, metadata={**type_metadata, **metadata})
        _link_into_place(tmp_path, path)
    except (OSError, SafetensorError) as e:
        raise LoraWriteError(f"Cannot write the checkpoint '{path}': {getattr(e, 'strerror', None) or e}. "
                             "Nothing was written.",
                             path=path) from e
    finally:
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)
