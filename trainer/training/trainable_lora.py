"""Trainable LoRA attached to a host model's Linear/Conv2d layers by forward hooks (no module replaced).

A = down, B = up: `down` maps the layer input to `rank` channels (Linear(in, r), or a Conv2d with the
layer's kernel/stride/padding/dilation), `up` maps back to the output (Linear(r, out), or a 1x1 Conv2d),
and the hook returns `base(x) + (alpha / rank) * up(down(dropout(x)))`. The base layer's
weights are only ever read, never modified, and never copied to another dtype: a base stored in fp8, fp16 or
bf16 computes through its own layers (a host casts such weights per layer to its compute dtype), while the
LoRA branch runs in fp32: its input is cast to fp32 and its output back to the base layer's output dtype.

Which layers get an adapter is decided in layer_selection.py.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..adapters.lora import lora_delta
from ..errors import LoraTargetError
from .config import LoraShape
from .layer_selection import is_linear_layer

logger = logging.getLogger(__name__)


class LoraAdapter(nn.Module):
    """The down/up pair and alpha for one base layer; `forward(x)` returns only the scaled delta."""

    lora_down: nn.Linear | nn.Conv2d
    lora_up: nn.Linear | nn.Conv2d
    alpha: torch.Tensor

    def __init__(self, base: nn.Module, rank: int, alpha: float, dropout: float, name: str,
                 generator: torch.Generator | None = None) -> None:
        """`base`: an nn.Conv2d or a linear layer (`is_linear_layer`)."""
        super().__init__()
        if isinstance(base, nn.Conv2d):
            if base.groups != 1:
                raise LoraTargetError(f"layer '{name}' is a grouped convolution (groups={base.groups}); "
                                      "LoRA supports only groups=1 convolutions.")
            kh, kw = base.kernel_size
            in_size, out_size = base.in_channels * kh * kw, base.out_channels
            # Built on "meta" so torch's default init does not consume the host's global RNG.
            self.lora_down = nn.Conv2d(
                base.in_channels, rank, (kh, kw), cast(tuple[int, int], base.stride),
                cast("str | tuple[int, int]", base.padding), cast(tuple[int, int], base.dilation),
                bias=False, padding_mode=base.padding_mode, device="meta")
            self.lora_up = nn.Conv2d(rank, base.out_channels, (1, 1), bias=False, device="meta")
        else:
            in_size, out_size = int(base.in_features), int(base.out_features)
            self.lora_down = nn.Linear(in_size, rank, bias=False, device="meta")
            self.lora_up = nn.Linear(rank, out_size, bias=False, device="meta")
        if rank > min(in_size, out_size):
            raise LoraTargetError(
                f"rank = {rank} is larger than layer '{name}' allows: it maps {in_size} inputs to "
                f"{out_size} outputs, so rank can be at most {min(in_size, out_size)}. Lower the rank.")
        self.to_empty(device="cpu")
        self.register_buffer("alpha", torch.tensor(float(alpha)))
        self.rank = rank
        # A Python float, so the forward never reads the alpha buffer back from the device (a sync per layer
        # on a GPU); load_state_dict keeps it in step with the buffer.
        self.scale = float(alpha) / rank
        self.dropout = dropout
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        # kohya's init: down random, up zero, so up @ down == 0 and the model is unchanged at step 0.
        nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5), generator=generator)
        nn.init.zeros_(self.lora_up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Parameters stay fp32 for stable updates; the base may compute in fp16/bf16, so cast the input here
        # (the hook casts the result back to the base layer's output dtype). Under CUDA autocast the
        # matmuls still run in the autocast dtype.
        x = x.to(self.lora_down.weight.dtype)
        if self.training and self.dropout > 0:
            x = F.dropout(x, p=self.dropout, training=True)
        return self.lora_up(self.lora_down(x) * self.scale)  # scaled at rank width: the cheapest place

    def delta_weight(self) -> torch.Tensor:
        """The fp32 weight delta (shape of the base weight) that this adapter adds."""
        down, up = self.lora_down.weight.detach(), self.lora_up.weight.detach()
        # up is 1x1 for convs, so the combined kernel is a channel mix of down's kernel.
        return (lora_delta(up, down) * self.scale).reshape(up.shape[0], *down.shape[1:])


def lora_parameter_count(model: nn.Module, module_names: list[str], rank: int) -> int:
    """How many parameters LoRAs of `rank` on these Linear/Conv2d layers train (down + up), without building them."""
    modules = dict(model.named_modules())
    count = 0
    for name in module_names:
        base = modules[name]
        if isinstance(base, nn.Conv2d):
            kh, kw = base.kernel_size
            count += rank * (base.in_channels * kh * kw + base.out_channels)
        else:
            count += rank * (int(base.in_features) + int(base.out_features))
    return count


def _layer_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    if args:
        return args[0]
    return kwargs["input"]


class LoraAdapterSet:
    """All adapters of one training run, keyed by module name (plus an optional key prefix).

    `init_seed` fixes the random init of every lora_down (drawn on the CPU in attach order), so the
    same seed gives the same LoRA on any device and whatever the host did to the global RNG.
    """

    def __init__(self, rank: int, alpha: float, dropout: float = 0.0, init_seed: int = 0) -> None:
        self.rank = rank
        self.alpha = alpha
        self.dropout = dropout
        self._init_generator = torch.Generator("cpu").manual_seed(init_seed)
        self._adapters: dict[str, LoraAdapter] = {}
        self._groups: dict[str, str] = {}
        self._handles: dict[str, RemovableHandle] = {}

    @classmethod
    def from_config(cls, shape: LoraShape, seed: int) -> LoraAdapterSet:
        """An empty set with the config's rank, alpha and dropout, initialised from `seed`."""
        return cls(shape.rank, shape.alpha, shape.dropout, init_seed=seed)

    def attach(self, model: nn.Module, module_names: list[str], *, key_prefix: str = "",
               group: str = "unet") -> None:
        """Add an adapter to each named Linear/Conv2d of `model`, freeze the model, hook the adapters in.

        `key_prefix` keeps keys unique when two models (UNet, text encoder) share one set; `group`
        names the optimizer parameter group ("unet" or "text_encoder", which may have its own lr).
        """
        modules = dict(model.named_modules())
        model.requires_grad_(False)
        for name in module_names:
            base = modules.get(name)
            if base is None or not (isinstance(base, nn.Conv2d) or is_linear_layer(base)):
                found = "not found" if base is None else f"a {type(base).__name__}"
                raise LoraTargetError(f"layer '{name}' is {found}; LoRA targets must be Linear or Conv2d layers.")
            key = key_prefix + name
            if key in self._adapters:
                raise LoraTargetError(f"layer '{key}' already has a LoRA attached.")
            adapter = LoraAdapter(base, self.rank, self.alpha, self.dropout, key, self._init_generator)
            adapter.to(device=base.weight.device, dtype=torch.float32)
            self._adapters[key] = adapter
            self._groups[key] = group
            self._handles[key] = base.register_forward_hook(self._make_hook(adapter), with_kwargs=True)
        logger.info("attached LoRA (rank %d, alpha %g) to %d layers", self.rank, self.alpha, len(module_names))

    @staticmethod
    def _make_hook(adapter: LoraAdapter) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
                 output: torch.Tensor) -> torch.Tensor:
            return output + adapter(_layer_input(args, kwargs)).to(output.dtype)
        return hook

    def detach(self) -> None:
        """Remove the hooks: the model computes exactly what it did before attach. Adapters are kept."""
        for handle in self._handles.values():
            handle.remove()
        self._handles.clear()

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def keys(self) -> list[str]:
        return sorted(self._adapters)

    def __len__(self) -> int:
        return len(self._adapters)

    def __getitem__(self, key: str) -> LoraAdapter:
        return self._adapters[key]

    def group_of(self, key: str) -> str:
        return self._groups[key]

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """`{key}.lora_down.weight`, `{key}.lora_up.weight` in sorted key order (stable for optimizer state)."""
        for key in self.keys():
            for pname, param in self._adapters[key].named_parameters():
                yield f"{key}.{pname}", param

    def parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_parameters()]

    def train(self, mode: bool = True) -> None:
        """Training mode turns LoRA dropout on; eval mode (False) turns it off."""
        for adapter in self._adapters.values():
            adapter.train(mode)

    @property
    def training(self) -> bool:
        """Whether any adapter is in training mode (dropout on)."""
        return any(adapter.training for adapter in self._adapters.values())

    @property
    def device(self) -> torch.device:
        for param in self.parameters():
            return param.device
        return torch.device("cpu")

    def state_dict(self) -> dict[str, torch.Tensor]:
        """kohya layout keyed by module name: `.lora_down.weight`, `.lora_up.weight`, `.alpha` (fp32 copies)."""
        out: dict[str, torch.Tensor] = {}
        for key in self.keys():
            adapter = self._adapters[key]
            out[f"{key}.lora_down.weight"] = adapter.lora_down.weight.detach().float().clone()
            out[f"{key}.lora_up.weight"] = adapter.lora_up.weight.detach().float().clone()
            out[f"{key}.alpha"] = adapter.alpha.detach().float().clone()
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Copy values from a state_dict() of a set with the same keys, shapes and alpha."""
        expected = set(self.state_dict())
        missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
        if missing or unexpected:
            raise LoraTargetError(f"LoRA state does not fit these layers: missing {missing[:3]}, "
                                  f"unexpected {unexpected[:3]} ({len(missing)} / {len(unexpected)} in all).")
        with torch.no_grad():
            for key in self.keys():
                adapter = self._adapters[key]
                for suffix, target in (("lora_down.weight", adapter.lora_down.weight),
                                       ("lora_up.weight", adapter.lora_up.weight), ("alpha", adapter.alpha)):
                    value = state[f"{key}.{suffix}"]
                    if value.shape != target.shape:
                        raise LoraTargetError(f"'{key}.{suffix}' has shape {tuple(value.shape)}, this layer "
                                              f"needs {tuple(target.shape)} (different rank or layer size?).")
                    target.copy_(value)
                adapter.scale = float(adapter.alpha) / adapter.rank

    def merged_delta(self, key: str) -> torch.Tensor:
        """fp32 delta W (base weight shape) of one layer, as every loader merges it (strength 1)."""
        return self._adapters[key].delta_weight()


def release_inference_tensors(model: nn.Module) -> int:
    """Replace parameters/buffers created under torch.inference_mode by equal normal tensors.

    Autograd cannot save inference tensors for backward, and a host that loads models inside
    inference_mode (ComfyUI does) leaves every weight as one; a LoRA's gradient has to flow back through
    those layers. Values are unchanged; each replaced tensor is briefly held twice. Call it inside
    `torch.inference_mode(False)`. Returns the number of tensors replaced.
    """
    replaced = 0
    with torch.inference_mode(False):
        for module in model.modules():
            for name, param in list(module.named_parameters(recurse=False)):
                if param.is_inference():
                    setattr(module, name, nn.Parameter(param.detach().clone(), requires_grad=param.requires_grad))
                    replaced += 1
            for name, buffer in list(module.named_buffers(recurse=False)):
                if buffer is not None and buffer.is_inference():
                    setattr(module, name, buffer.clone())
                    replaced += 1
    return replaced
