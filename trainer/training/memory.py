"""A rough, documented estimate of training memory, and what to change when it does not fit.

total = weights + LoRA params (fp32) + their grads (fp32) + optimizer state + activations + overhead
  - weights: the frozen model as loaded (caller passes bytes, so fp16/bf16/fp8 loading is accounted for);
  - optimizer: AdamW keeps two fp32 moments (8 B/param); AdamW8bit two 8-bit moments (~2 B/param);
  - activations: batch x latent pixels x ACTIVATION_BYTES_PER_LATENT_PIXEL, scaled by the element size
    (fp32 doubles it) and by sqrt(model size / SD1.5 UNet size); gradient checkpointing keeps about
    CHECKPOINTING_FACTOR of them. Calibrated on public reports (SD1.5 at 512 px, batch 1, fp16, no
    checkpointing: ~4 GiB of activations; SDXL at 1024 px with checkpointing: ~10 GiB in all);
  - overhead: OVERHEAD_FRACTION of the rest plus OVERHEAD_FIXED_BYTES (allocator fragmentation,
    cuDNN/cuBLAS workspaces). Assumes memory-efficient attention (PyTorch SDPA), linear in tokens.
It is a planning aid, not a promise: expect +-30%.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

GIB = 1024**3
SD15_UNET_PARAMS_BYTES = 860_000_000 * 2
ACTIVATION_BYTES_PER_LATENT_PIXEL = 1.0 * 1024**2  # at 2-byte elements, SD1.5-sized UNet
CHECKPOINTING_FACTOR = 0.2
OVERHEAD_FRACTION = 0.10
OVERHEAD_FIXED_BYTES = 256 * 1024**2
_ELEMENT_BYTES = {"no": 4, "fp16": 2, "bf16": 2}
_OPTIMIZER_BYTES_PER_PARAM = {"adamw": 8.0, "adamw8bit": 2.0}


@dataclass(frozen=True)
class MemoryInputs:
    """What the estimate depends on."""

    model_params_bytes: int
    trainable_params: int
    batch_size: int
    resolution: tuple[int, int]  # (width, height) in pixels
    latent_channels: int = 4
    latent_downscale: int = 8
    gradient_checkpointing: bool = False
    mixed_precision: str = "fp16"
    optimizer: str = "adamw"
    rank: int | None = None  # when given, suggestions may lower it (trainable params scale with rank)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per component; total_bytes is what must fit in the free accelerator memory."""

    inputs: MemoryInputs
    weights_bytes: int
    lora_bytes: int
    gradient_bytes: int
    optimizer_bytes: int
    activation_bytes: int
    overhead_bytes: int

    @property
    def total_bytes(self) -> int:
        return (self.weights_bytes + self.lora_bytes + self.gradient_bytes + self.optimizer_bytes
                + self.activation_bytes + self.overhead_bytes)


def _estimate(inputs: MemoryInputs) -> MemoryEstimate:
    width, height = inputs.resolution
    latent_pixels = math.ceil(width / inputs.latent_downscale) * math.ceil(height / inputs.latent_downscale)
    element_scale = _ELEMENT_BYTES.get(inputs.mixed_precision, 4) / 2
    # Activations grow with width more than with depth; sqrt(params) stands in for width.
    model_scale = math.sqrt(max(inputs.model_params_bytes, 1) / SD15_UNET_PARAMS_BYTES)
    activations = inputs.batch_size * latent_pixels * ACTIVATION_BYTES_PER_LATENT_PIXEL * element_scale * model_scale
    if inputs.gradient_checkpointing:
        activations *= CHECKPOINTING_FACTOR
    # The latents themselves (input, noise, target, prediction), fp32.
    activations += 4 * inputs.batch_size * latent_pixels * inputs.latent_channels * 4
    lora = 4 * inputs.trainable_params
    optimizer = int(_OPTIMIZER_BYTES_PER_PARAM.get(inputs.optimizer, 8.0) * inputs.trainable_params)
    subtotal = inputs.model_params_bytes + 2 * lora + optimizer + int(activations)
    return MemoryEstimate(inputs=inputs, weights_bytes=inputs.model_params_bytes, lora_bytes=lora,
                          gradient_bytes=lora, optimizer_bytes=optimizer, activation_bytes=int(activations),
                          overhead_bytes=int(OVERHEAD_FRACTION * subtotal) + OVERHEAD_FIXED_BYTES)


def estimate_training_memory(model_params_bytes: int, trainable_params: int, batch_size: int,
                             resolution: int | tuple[int, int], latent_channels: int = 4,
                             gradient_checkpointing: bool = False, mixed_precision: str = "fp16",
                             optimizer: str = "adamw", rank: int | None = None,
                             latent_downscale: int = 8) -> MemoryEstimate:
    """Estimate the accelerator memory one training step needs (see the module docstring for the formula)."""
    if isinstance(resolution, int):
        resolution = (resolution, resolution)
    for name, value in (("model_params_bytes", model_params_bytes), ("trainable_params", trainable_params)):
        if value < 0:
            raise ValueError(f"{name} = {value} is not allowed; expected 0 or more.")
    if batch_size < 1 or min(resolution) < 1:
        raise ValueError(f"batch_size = {batch_size}, resolution = {resolution}: expected positive values.")
    return _estimate(MemoryInputs(model_params_bytes, trainable_params, batch_size, (resolution[0], resolution[1]),
                                  latent_channels, latent_downscale, gradient_checkpointing, mixed_precision,
                                  optimizer, rank))


def _gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


def _alternatives(inputs: MemoryInputs, eight_bit: bool) -> list[tuple[str, MemoryInputs]]:
    """Single changes that lower memory, cheapest in quality first (adamw8bit only where it runs: `eight_bit`)."""
    options: list[tuple[str, MemoryInputs]] = []
    if not inputs.gradient_checkpointing:
        options.append(("turn on gradient checkpointing", dataclasses.replace(inputs, gradient_checkpointing=True)))
    batch = inputs.batch_size // 2
    while batch >= 1:
        accumulation = math.ceil(inputs.batch_size / batch)
        options.append((f"batch_size {batch} with grad_accumulation {accumulation} (same effective batch)",
                        dataclasses.replace(inputs, batch_size=batch)))
        batch //= 2
    if inputs.optimizer == "adamw" and eight_bit:
        options.append(("optimizer adamw8bit", dataclasses.replace(inputs, optimizer="adamw8bit")))
    if inputs.rank is not None:
        rank = inputs.rank // 2
        while rank >= 4:
            params = inputs.trainable_params * rank // inputs.rank
            options.append((f"rank {rank}", dataclasses.replace(inputs, rank=rank, trainable_params=params)))
            rank //= 2
    width, height = inputs.resolution
    side = max(width, height) - 128
    while side >= 256:
        factor = side / max(width, height)
        size = (int(width * factor) // 64 * 64, int(height * factor) // 64 * 64)
        options.append((f"resolution {size[0]}x{size[1]}", dataclasses.replace(inputs, resolution=size)))
        side -= 128
    return options


def fits(estimate: MemoryEstimate, available_bytes: int, eight_bit: bool = True) -> tuple[bool, list[str]]:
    """Whether the estimate fits in `available_bytes`; if not, changes that would make it fit. `eight_bit`: whether
    adamw8bit can run here (bitsandbytes needs a CUDA GPU), so that it may be suggested."""
    if estimate.total_bytes <= available_bytes:
        return True, []
    suggestions = []
    for label, changed in _alternatives(estimate.inputs, eight_bit):
        total = _estimate(changed).total_bytes
        if total <= available_bytes:
            suggestions.append(f"{label}: about {_gib(total)}")
    if suggestions:
        return False, suggestions
    inputs = estimate.inputs
    use_8bit = eight_bit and inputs.optimizer == "adamw"
    smallest = dataclasses.replace(inputs, gradient_checkpointing=True, batch_size=1,
                                   optimizer="adamw8bit" if use_8bit else inputs.optimizer)
    together = "gradient checkpointing, batch_size 1 and adamw8bit" if use_8bit else \
        "gradient checkpointing and batch_size 1"
    total = _estimate(smallest).total_bytes
    if total <= available_bytes:
        return False, [f"{together} together: about {_gib(total)}"]
    return False, [f"even with {together} about {_gib(total)} is needed "
                   f"({_gib(estimate.weights_bytes)} for the model weights) but {_gib(available_bytes)} is free; "
                   "close other programs, lower the resolution, or load the model in a smaller dtype"]
