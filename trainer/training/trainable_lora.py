"""The trainable adapters of a run, attached to a host model's Linear/Conv2d layers by forward hooks.

No module is replaced: each selected layer gets a forward hook that adds its adapter's output (one kind per run,
adapter_kinds/: LoRA/LoCon, LoHa, LoKr, DoRA) to the layer's own. The base layer's weights are only ever read,
never modified, and never copied to another dtype as a whole: a base stored in fp8, fp16 or bf16 computes
through its own layers (a host casts such weights per layer to its compute dtype), while the adapter runs in
fp32 (its input cast to fp32, its output back to the base layer's output dtype). DoRA reads the base weight in
fp32 one layer at a time, through the set's `weight_reader`.

Which layers get an adapter is decided in layer_selection.py.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..errors import LoraTargetError
from .adapter_kinds import TRAINABLE_KINDS
from .adapter_kinds.base import LayerGeometry, TrainableAdapter
from .config import LoraShape
from .layer_selection import is_linear_layer
from .memory import adapter_parameter_shapes

logger = logging.getLogger(__name__)

# Gives a base layer's weight as a tensor of its shape (any float dtype, any device); DoRA reads it.
WeightReader = Callable[[nn.Module], torch.Tensor]


def stored_weight(layer: nn.Module) -> torch.Tensor:
    """The layer's `weight` as it is stored: the default weight reader (a host with layers that store their weight
    otherwise, e.g. scaled or quantized, passes its own)."""
    return layer.weight


def adapter_parameter_count(model: nn.Module, module_names: list[str], shape: LoraShape) -> int:
    """How many parameters the adapters of `shape` on these Linear/Conv2d layers train, without building them."""
    return sum(math.prod(factor) for factor in adapter_parameter_shapes(model, module_names, shape))


def _layer_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    if args:
        return args[0]
    return kwargs["input"]


class LoraAdapterSet:
    """All adapters of one training run, keyed by module name (plus an optional key prefix).

    `init_seed` fixes the random init of every adapter (drawn on the CPU in attach order), so the same seed
    gives the same adapters on any device and whatever the host did to the global RNG. The other keywords are
    LoraShape fields (adapter kind, rank dropout, ...).
    """

    def __init__(self, rank: int, alpha: float, dropout: float = 0.0, init_seed: int = 0,
                 weight_reader: WeightReader = stored_weight, **shape: Any) -> None:
        self.shape = LoraShape(rank=rank, alpha=alpha, dropout=dropout, **shape)
        self.rank, self.alpha, self.dropout = rank, alpha, dropout
        self._kind = TRAINABLE_KINDS[self.shape.adapter]
        self._read_weight = weight_reader
        self._init_generator = torch.Generator("cpu").manual_seed(init_seed)
        self._adapters: dict[str, TrainableAdapter] = {}
        self._bases: dict[str, nn.Module] = {}
        self._groups: dict[str, str] = {}
        self._parameter_keys: dict[str, str] = {}
        self._handles: dict[str, RemovableHandle] = {}

    @classmethod
    def from_config(cls, shape: LoraShape, seed: int, weight_reader: WeightReader = stored_weight) -> LoraAdapterSet:
        """An empty set with the config's adapter kind and shape, initialised from `seed`."""
        return cls(weight_reader=weight_reader, init_seed=seed, **vars(shape))

    @property
    def kind(self) -> str:
        """The adapter kind every layer trains (LoraShape.adapter)."""
        return self.shape.adapter

    def _base_weight(self, base: nn.Module, name: str, device: torch.device) -> torch.Tensor:
        weight = self._read_weight(base)
        if type(weight) not in (torch.Tensor, nn.Parameter) or not weight.is_floating_point():
            raise LoraTargetError(f"layer '{name}' stores its weight as a {type(weight).__name__} of {weight.dtype}; "
                                  f"adapter {self.kind} reads the base weight and needs a plain float tensor. Load "
                                  "the model with another weight dtype, or choose another adapter.")
        return weight.detach().to(device=device, dtype=torch.float32)

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
            adapter = self._kind(LayerGeometry.of(base, key), self.shape, key)
            adapter.reset_parameters(self._init_generator,
                                     lambda base=base, key=key: self._base_weight(base, key, torch.device("cpu")))
            adapter.to(device=base.weight.device, dtype=torch.float32)
            self._adapters[key], self._bases[key], self._groups[key] = adapter, base, group
            self._parameter_keys.update({f"{key}.{pname}": key for pname, _ in adapter.named_parameters()})
            self._handles[key] = base.register_forward_hook(self._make_hook(adapter), with_kwargs=True)
        logger.info("attached %s (rank %d, alpha %g) to %d layers", self.kind, self.rank, self.alpha,
                    len(module_names))

    def _make_hook(self, adapter: TrainableAdapter) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
                 output: torch.Tensor) -> torch.Tensor:
            # sd-scripts' module dropout: the whole adapter skipped for this pass, drawn from the global RNG
            # (which the loop seeds per step and checkpoint recompute replays).
            if adapter.training and adapter.module_dropout > 0 and bool(torch.rand(1) < adapter.module_dropout):
                return output
            x = _layer_input(args, kwargs)
            added = adapter(x, lambda: self._base_weight(module, adapter.name, x.device))
            return output + added.to(output.dtype)
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

    def __getitem__(self, key: str) -> TrainableAdapter:
        return self._adapters[key]

    def group_of(self, key: str) -> str:
        return self._groups[key]

    def group_of_parameter(self, name: str) -> str:
        """The optimizer group of a parameter named as `named_parameters` names it."""
        return self._groups[self._parameter_keys[name]]

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """`{key}.{role}` (e.g. `.lora_down.weight`, `.hada_w1_a`, `.dora_scale`) in sorted key order (stable for
        optimizer state)."""
        for key in self.keys():
            for pname, param in self._adapters[key].named_parameters():
                yield f"{key}.{pname}", param

    def parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_parameters()]

    def train(self, mode: bool = True) -> None:
        """Training mode turns dropout, rank and module dropout on; eval mode (False) turns them off."""
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

    def file_tensors(self, key: str) -> dict[str, torch.Tensor]:
        """One layer's tensors as the file holds them, by role (`lora_down.weight`, `hada_w1_a`, ..., `alpha`), fp32."""
        return self._adapters[key].file_tensors()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every trained tensor and alpha, keyed `{key}.{role}` as `named_parameters` (fp32 copies)."""
        out = {name: param.detach().float().clone() for name, param in self.named_parameters()}
        out.update({f"{key}.alpha": self._adapters[key].alpha.detach().float().clone() for key in self.keys()})
        return out

    def state_shapes(self) -> dict[str, torch.Size]:
        """The shape of every `state_dict` entry, without copying anything."""
        shapes = {name: param.shape for name, param in self.named_parameters()}
        shapes.update({f"{key}.alpha": self._adapters[key].alpha.shape for key in self.keys()})
        return shapes

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Copy values from a state_dict() of a set with the same keys, shapes and alpha."""
        expected = self.state_shapes()
        missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
        if missing or unexpected:
            raise LoraTargetError(f"LoRA state does not fit these layers: missing {missing[:3]}, "
                                  f"unexpected {unexpected[:3]} ({len(missing)} / {len(unexpected)} in all).")
        for name, shape in expected.items():
            if state[name].shape != shape:
                raise LoraTargetError(f"'{name}' has shape {tuple(state[name].shape)}, this layer "
                                      f"needs {tuple(shape)} (different rank or layer size?).")
        with torch.no_grad():
            for name, param in self.named_parameters():
                param.copy_(state[name])
            for key in self.keys():
                self._adapters[key].load_alpha(state[f"{key}.alpha"])

    def merged_delta(self, key: str) -> torch.Tensor:
        """fp32 delta W' - W (base weight shape) of one layer, as every loader merges it (strength 1)."""
        adapter = self._adapters[key]
        return adapter.delta_weight(lambda: self._base_weight(self._bases[key], key, adapter.alpha.device))


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
