"""A rough, documented estimate of training memory, and what to change when it does not fit.

total = weights + LoRA params (fp32) + their grads (fp32) + optimizer state + activations + overhead
  - weights: the frozen model as loaded (caller passes bytes, so fp16/bf16/fp8 loading is accounted for); with
    `offload_fraction` f, only (1 - f) of them stay on the device and the rest is streamed from CPU memory
    layer by layer, through a buffer of OFFLOAD_BUFFER_LAYERS times the largest layer (the host keeps that
    many casts in flight); offloading implies gradient checkpointing (else every streamed weight is kept
    for backward);
  - optimizer: the state each optimizer's library allocates by its first step, per parameter tensor
    (optimizer_state_bytes): AdamW two fp32 moments and a step (8 B/param); adamw8bit two 8-bit moments and a
    block maximum per 256 (~2 B/param; fp32 for tensors under 4096 elements); Lion one moment (4 B/param);
    Adafactor a factored second moment (a row and a column per matrix, ~4/rank B/param on a LoRA matrix);
    Prodigy four fp32 tensors (16 B/param; less with slice_p); schedule-free AdamW two (8 B/param); SGD with
    momentum one;
  - activations: batch x latent pixels (x latent frames, for video) x ACTIVATION_BYTES_PER_LATENT_PIXEL, scaled
    by the element size (fp32 doubles it) and by sqrt(model size / SD1.5 UNet size); gradient checkpointing keeps about
    CHECKPOINTING_FACTOR of them. Weights stored below the compute precision (fp8, or bf16 computed in fp32) are
    cast by the host's layers as they run, and autograd keeps each cast for backward: without gradient
    checkpointing a step holds the whole model at the compute precision (cast_weights_bytes) on top; with it,
    only the block being recomputed. Calibrated on public reports (SD1.5 at 512 px, batch 1, fp16, no
    checkpointing: ~4 GiB of activations; SDXL at 1024 px with checkpointing: ~10 GiB in all);
  - overhead: OVERHEAD_FRACTION of the rest plus OVERHEAD_FIXED_BYTES (allocator fragmentation,
    cuDNN/cuBLAS workspaces). Assumes memory-efficient attention (PyTorch SDPA), linear in tokens.
It is a planning aid, not a promise: expect +-30%.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from .adapter_kinds import TRAINABLE_KINDS
from .adapter_kinds.base import LayerGeometry
from .config import LoraShape

GIB = 1024**3
SD15_UNET_PARAMS_BYTES = 860_000_000 * 2
ACTIVATION_BYTES_PER_LATENT_PIXEL = 1.0 * 1024**2  # at 2-byte elements, SD1.5-sized UNet
CHECKPOINTING_FACTOR = 0.2
OVERHEAD_FRACTION = 0.10
OVERHEAD_FIXED_BYTES = 256 * 1024**2
_ELEMENT_BYTES = {"no": 4, "fp16": 2, "bf16": 2}
OFFLOAD_BUFFER_LAYERS = 2  # the host's cast of an offloaded layer, and the one its offload stream loads ahead
OFFLOAD_STEP = 0.05  # memory_mode auto offloads the smallest multiple of this share of the weights that fits
# Per optimizer kind: state bytes per element of a parameter, and per parameter tensor (torch's 0-d fp32 `step`).
# Counted from each library's state after one step (tests/unit/training/test_optimizer_memory.py), with the
# defaults optimizers.py passes; _tensor_state_bytes adds what optimizer_args change. custom: counted as AdamW.
_STATE_BYTES = {"adamw": (8, 4), "lion": (4, 0), "adamw_schedulefree": (8, 0), "sgd_nesterov": (4, 0),
                "custom": (8, 4)}
STEP_BYTES = 4
# bitsandbytes' 8-bit states: tensors under min_8bit_size keep fp32 states; block-wise absmax per 256 elements.
BNB_MIN_8BIT_SIZE = 4096
BNB_BLOCK_SIZE = 256


def _tensor_state_bytes(optimizer: str, shape: tuple[int, ...], arguments: Mapping[str, Any]) -> int:
    n = math.prod(shape)
    if optimizer == "adamw8bit":
        if n < arguments.get("min_8bit_size", BNB_MIN_8BIT_SIZE):
            return 8 * n
        return 2 * n + 2 * 4 * math.ceil(n / BNB_BLOCK_SIZE)  # (the two 256-entry quantile maps are shared)
    if optimizer == "adafactor":  # torch's: the second moment factored over the last two dims, no momentum
        if len(shape) < 2:
            return 4 * n + STEP_BYTES
        return 4 * (math.prod(shape[:-1]) + math.prod(shape[:-2]) * shape[-1]) + STEP_BYTES
    if optimizer == "prodigy":  # s and p0 over every slice_p-th element, exp_avg (unless beta1 = 0), exp_avg_sq
        sliced = math.ceil(n / arguments.get("slice_p", 1))
        first_moment = n if arguments.get("betas", (0.9, 0.999))[0] > 0 else 0
        return 4 * (2 * sliced + first_moment + n)
    per_element, per_tensor = _STATE_BYTES.get(optimizer, _STATE_BYTES["custom"])
    if optimizer in ("adamw", "custom") and arguments.get("amsgrad", False):
        per_element += 4  # max_exp_avg_sq
    return per_element * n + per_tensor


def adapter_parameter_shapes(model: nn.Module, module_names: Sequence[str], shape: LoraShape) -> list[tuple[int, ...]]:
    """The shapes of the tensors that adapters of `shape` train on these layers of `model`, without building them."""
    modules = dict(model.named_modules())
    kind = TRAINABLE_KINDS[shape.adapter]
    return [tuple(factor) for name in module_names
            for factor in kind.factor_shapes(LayerGeometry.of(modules[name], name), shape).values()]


def optimizer_state_bytes(optimizer: str, shapes: Iterable[tuple[int, ...]],
                          arguments: Mapping[str, Any] | None = None) -> int:
    """Bytes of optimizer state for fp32 trainable tensors of these shapes, as the optimizer kind's library keeps
    them; `arguments`: the run's optimizer_args (Prodigy's slice_p and betas, AdamW's amsgrad, bitsandbytes'
    min_8bit_size change it)."""
    return sum(_tensor_state_bytes(optimizer, tuple(shape), arguments or {}) for shape in shapes)


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
    # The trainable tensors' shapes, for the optimizer state (Adafactor's depends on them); None: one flat tensor.
    parameter_shapes: tuple[tuple[int, ...], ...] | None = None
    optimizer_args: tuple[tuple[str, Any], ...] = ()  # the run's optimizer_args, as (key, value) pairs
    offload_fraction: float = 0.0  # share of the weights kept off the device and streamed per layer
    largest_layer_bytes: int = 0  # the largest single layer's weights (the streaming buffer's unit)
    latent_frames: int = 1  # a video model's latent frames per item (Wan: 1 + (frames - 1) / 4); 1 for images
    cast_weights_bytes: int = 0  # the weights the host's layers cast to the compute dtype, at that dtype

    @property
    def checkpointed(self) -> bool:
        """Whether activations are recomputed: as set, or because weights are offloaded."""
        return self.gradient_checkpointing or self.offload_fraction > 0


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
    latent_pixels = (math.ceil(width / inputs.latent_downscale) * math.ceil(height / inputs.latent_downscale)
                     * inputs.latent_frames)  # a video's latent frames are tokens as its pixels are
    element_scale = _ELEMENT_BYTES.get(inputs.mixed_precision, 4) / 2
    # Activations grow with width more than with depth; sqrt(params) stands in for width.
    model_scale = math.sqrt(max(inputs.model_params_bytes, 1) / SD15_UNET_PARAMS_BYTES)
    activations = inputs.batch_size * latent_pixels * ACTIVATION_BYTES_PER_LATENT_PIXEL * element_scale * model_scale
    if inputs.checkpointed:
        activations *= CHECKPOINTING_FACTOR
    else:  # each layer's cast weight, saved for the gradient of its input
        activations += inputs.cast_weights_bytes
    # The latents themselves (input, noise, target, prediction), fp32.
    activations += 4 * inputs.batch_size * latent_pixels * inputs.latent_channels * 4
    lora = 4 * inputs.trainable_params
    shapes = inputs.parameter_shapes or ((inputs.trainable_params,),)
    # Scaled when a suggestion changes the rank (and so the parameter count) of the same layers.
    counted = sum(math.prod(shape) for shape in shapes)
    optimizer = (optimizer_state_bytes(inputs.optimizer, shapes, dict(inputs.optimizer_args))
                 * inputs.trainable_params // max(counted, 1))
    weights = inputs.model_params_bytes
    if inputs.offload_fraction > 0:
        weights = (round(weights * (1 - inputs.offload_fraction))
                   + min(weights, OFFLOAD_BUFFER_LAYERS * inputs.largest_layer_bytes))
    subtotal = weights + 2 * lora + optimizer + int(activations)
    return MemoryEstimate(inputs=inputs, weights_bytes=weights, lora_bytes=lora,
                          gradient_bytes=lora, optimizer_bytes=optimizer, activation_bytes=int(activations),
                          overhead_bytes=int(OVERHEAD_FRACTION * subtotal) + OVERHEAD_FIXED_BYTES)


def estimate_training_memory(model_params_bytes: int, trainable_params: int, batch_size: int,
                             resolution: int | tuple[int, int], latent_channels: int = 4,
                             gradient_checkpointing: bool = False, mixed_precision: str = "fp16",
                             optimizer: str = "adamw", rank: int | None = None,
                             latent_downscale: int = 8,
                             parameter_shapes: Sequence[tuple[int, ...]] | None = None,
                             optimizer_args: Mapping[str, Any] | None = None, offload_fraction: float = 0.0,
                             largest_layer_bytes: int = 0, latent_frames: int = 1,
                             cast_weights_bytes: int = 0) -> MemoryEstimate:
    """Estimate the accelerator memory one training step needs (see the module docstring for the formula).

    `parameter_shapes`: the trainable tensors' shapes (their element count is trainable_params), for an exact
    optimizer state; without them the parameters count as one flat tensor. `optimizer_args`: the run's
    (Optimisation.optimizer_kwargs()), where they change the state. `offload_fraction`: the share of the weights
    streamed from CPU memory (0..1); `largest_layer_bytes`: the largest layer's weights, its streaming buffer;
    `latent_frames`: a video model's latent frames per item (activations grow with them as with pixels);
    `cast_weights_bytes`: the weights stored below the compute precision, at the compute precision.
    """
    if isinstance(resolution, int):
        resolution = (resolution, resolution)
    for name, value in (("model_params_bytes", model_params_bytes), ("trainable_params", trainable_params),
                        ("cast_weights_bytes", cast_weights_bytes)):
        if value < 0:
            raise ValueError(f"{name} = {value} is not allowed; expected 0 or more.")
    if not 0.0 <= offload_fraction <= 1.0:
        raise ValueError(f"offload_fraction = {offload_fraction} is not allowed; expected 0 to 1.")
    if batch_size < 1 or min(resolution) < 1 or latent_frames < 1:
        raise ValueError(f"batch_size = {batch_size}, resolution = {resolution}, latent_frames = {latent_frames}: "
                         "expected positive values.")
    shapes = None if parameter_shapes is None else tuple(tuple(shape) for shape in parameter_shapes)
    if shapes is not None and sum(math.prod(shape) for shape in shapes) != trainable_params:
        raise ValueError(f"parameter_shapes hold {sum(math.prod(shape) for shape in shapes)} elements; expected "
                         f"trainable_params = {trainable_params}.")
    return _estimate(MemoryInputs(model_params_bytes, trainable_params, batch_size, (resolution[0], resolution[1]),
                                  latent_channels, latent_downscale, gradient_checkpointing, mixed_precision,
                                  optimizer, rank, shapes, tuple(sorted((optimizer_args or {}).items())),
                                  offload_fraction, largest_layer_bytes, latent_frames, cast_weights_bytes))


def _gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


def _alternatives(inputs: MemoryInputs, eight_bit: bool) -> list[tuple[str, MemoryInputs]]:
    """Single changes that lower memory, cheapest in quality first (adamw8bit only where it runs: `eight_bit`)."""
    options: list[tuple[str, MemoryInputs]] = []
    if not inputs.checkpointed:
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


def fits(estimate: MemoryEstimate, available_bytes: int, eight_bit: bool = True,
         can_offload: bool = False) -> tuple[bool, list[str]]:
    """Whether the estimate fits in `available_bytes`; if not, changes that would make it fit. `eight_bit`: whether
    adamw8bit can run here (bitsandbytes needs a CUDA GPU), so that it may be suggested; `can_offload`: whether
    offloading weights frees device memory (a GPU), so that offload_fraction may be suggested."""
    if estimate.total_bytes <= available_bytes:
        return True, []
    suggestions = []
    for label, changed in _alternatives(estimate.inputs, eight_bit):
        total = _estimate(changed).total_bytes
        if total <= available_bytes:
            suggestions.append(f"{label}: about {_gib(total)}")
    offloaded = smallest_offload(estimate.inputs, available_bytes) if can_offload else None
    if offloaded is not None and offloaded.offload_fraction > estimate.inputs.offload_fraction:
        suggestions.append(f"offload_fraction {offloaded.offload_fraction:.2f} (with gradient checkpointing): about "
                           f"{_gib(_estimate(offloaded).total_bytes)}")
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


def smallest_offload(inputs: MemoryInputs, available_bytes: int) -> MemoryInputs | None:
    """`inputs` with gradient checkpointing and the smallest share of the weights offloaded (a multiple of
    OFFLOAD_STEP, at least the share set) that fits in `available_bytes`; None if even offloading them all does not."""
    steps = round(1 / OFFLOAD_STEP)
    for step in range(math.ceil(inputs.offload_fraction * steps - 1e-9), steps + 1):
        offloaded = dataclasses.replace(inputs, gradient_checkpointing=True, offload_fraction=step / steps)
        if _estimate(offloaded).total_bytes <= available_bytes:
            return offloaded
    return None


def _percent(fraction: float) -> str:
    return f"{fraction * 100:.0f}%"


@dataclass(frozen=True)
class MemoryPlan:
    """How a run fits: whether it trains with gradient checkpointing, the share of the frozen weights streamed from
    CPU memory (offload), and what was chosen and why, in words."""

    gradient_checkpointing: bool
    description: str
    offload_fraction: float = 0.0


def _plan(inputs: MemoryInputs, how: str) -> MemoryPlan:
    return MemoryPlan(inputs.checkpointed, how, inputs.offload_fraction)


def plan_memory(estimate: MemoryEstimate, available_bytes: int, automatic: bool,
                can_offload: bool = False) -> MemoryPlan | None:
    """The fastest way the run fits in `available_bytes`: as set when it fits; else, when `automatic`, with gradient
    checkpointing if that fits (slower steps, the same gradients), else (`can_offload`: the device is not the CPU
    memory the weights would be streamed from) with checkpointing and the smallest share of the weights offloaded
    that fits (slower still, the same result). None: it does not fit either way (fits() says what would)."""
    inputs, free = estimate.inputs, _gib(available_bytes)
    if estimate.total_bytes <= available_bytes:
        how = "full activations"
        if inputs.checkpointed:
            how = "gradient checkpointing" + (f" and {_percent(inputs.offload_fraction)} of the weights offloaded"
                                              if inputs.offload_fraction > 0 else "") + " (as set)"
        return _plan(inputs, f"{how}: about {_gib(estimate.total_bytes)} of {free} available")
    if not automatic:
        return None
    if not inputs.checkpointed:
        checkpointed = _estimate(dataclasses.replace(inputs, gradient_checkpointing=True)).total_bytes
        if checkpointed <= available_bytes:
            return MemoryPlan(True, f"gradient checkpointing (auto): about {_gib(checkpointed)} with it, "
                                    f"{_gib(estimate.total_bytes)} without, {free} available")
    offloaded = smallest_offload(inputs, available_bytes) if can_offload else None
    if offloaded is None:
        return None
    share = _percent(offloaded.offload_fraction)
    return _plan(offloaded, f"gradient checkpointing and {share} of the weights offloaded to CPU memory, streamed "
                            f"per layer (auto): about {_gib(_estimate(offloaded).total_bytes)} with them, "
                            f"{_gib(estimate.total_bytes)} as set, {free} available")
