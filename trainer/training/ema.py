"""An exponential moving average of the LoRA weights: fp32 copies on the CPU, swapped in to save or sample.

ema <- decay * ema + (1 - decay) * weights, i.e. lerp(ema, weights, 1 - decay), every `every_n_steps` updates,
starting from the weights it is made from (the untrained LoRA). No warmup: the decay is the same at every update.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from ..errors import ResumeStateError
from .config import Ema
from .trainable_lora import LoraAdapterSet


class AdapterEma:
    """The EMA of every trained parameter of a LoraAdapterSet, by parameter name."""

    def __init__(self, adapters: LoraAdapterSet, settings: Ema) -> None:
        self.settings = settings
        self._names = [name for name, _ in adapters.named_parameters()]
        self.shadow: dict[str, torch.Tensor] = {
            name: p.detach().to("cpu", torch.float32, copy=True) for name, p in adapters.named_parameters()}

    def update(self, step: int, adapters: LoraAdapterSet) -> bool:
        """After update number `step` (1-based): fold the weights in when step is a multiple of every_n_steps."""
        if step % self.settings.every_n_steps != 0:
            return False
        with torch.no_grad():
            weights = [p.detach().to("cpu", torch.float32) for _, p in adapters.named_parameters()]
            torch._foreach_lerp_([self.shadow[n] for n in self._names], weights, 1.0 - self.settings.decay)
        return True

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Copies of the averages, by parameter name (for the resume state)."""
        return {name: value.clone() for name, value in self.shadow.items()}

    def load_state_dict(self, saved: dict[str, torch.Tensor], source: str | None = None) -> None:
        """Continue from saved averages; they must cover exactly these parameters with their shapes."""
        if set(saved) != set(self.shadow) or any(saved[n].shape != v.shape for n, v in self.shadow.items()):
            where = f"The resume state '{source}'" if source else "The resume state"
            raise ResumeStateError(f"{where} holds no EMA of this run's LoRA layers (ema is on now). Resume with "
                                   "the saved run's settings, or turn resume off to start a new run.", path=source)
        for name, value in saved.items():
            self.shadow[name] = value.detach().to("cpu", torch.float32, copy=True)

    @contextlib.contextmanager
    def applied(self, adapters: LoraAdapterSet) -> Iterator[None]:
        """The adapters hold the EMA weights inside (to export or sample), their own weights again after."""
        params = dict(adapters.named_parameters())
        with torch.no_grad():
            own = {name: p.detach().clone() for name, p in params.items()}
            for name, p in params.items():
                p.copy_(self.shadow[name].to(p.device, p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(own[name])
