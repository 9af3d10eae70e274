"""Optimizers by name: one registry (name -> how to build it), a builder that says clearly why one cannot be built.

Each kind names its class by dotted path and is imported only when chosen, so a package that is missing
matters only to the runs that ask for it. The builder takes param groups as the loop makes them (`params`,
`lr`, `base_lr`, `group_name`) and keyword arguments from the config: weight_decay, then the kind's own
defaults, then the user's optimizer_args (sd-scripts' --optimizer_args), which win.

Schedule-free optimizers (a `train()` / `eval()` pair, as in the schedulefree package) train at one point and
are used at another: `averaged_weights` puts the weights to use in place while the model is sampled or saved,
and puts the training weights back bit for bit, so checkpoints do not change the run.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import OptimizerError
from .config import Optimisation

logger = logging.getLogger(__name__)

EXTRA = 'pip install "comfyui-lora-lab[optimizers]"'


@dataclass(frozen=True)
class OptimizerKind:
    """How one optimizer choice is built."""

    name: str
    class_path: str  # module.Class, as imported
    package: str | None = None  # the pip requirement, when not part of torch
    defaults: Mapping[str, Any] = field(default_factory=dict)  # before the user's optimizer_args
    needs_cuda: bool = False
    fallback: str | None = None  # the kind used instead when optimizer_fallback is on (same meaning of lr)
    recorded_as: str | None = None  # the class's module.__name__ path, as kohya's ss_optimizer writes it

    @property
    def recorded_class(self) -> str:
        return self.recorded_as or self.class_path


# Pins match pyproject.toml's `optimizers` extra.
OPTIMIZER_KINDS: dict[str, OptimizerKind] = {kind.name: kind for kind in (
    OptimizerKind("adamw", "torch.optim.AdamW", recorded_as="torch.optim.adamw.AdamW"),
    OptimizerKind("adamw8bit", "bitsandbytes.optim.AdamW8bit", package="bitsandbytes==0.50.2", needs_cuda=True,
                  fallback="adamw", recorded_as="bitsandbytes.optim.adamw.AdamW8bit"),
    OptimizerKind("lion", "lion_pytorch.Lion", package="lion-pytorch==0.2.5", fallback="adamw",
                  recorded_as="lion_pytorch.lion_pytorch.Lion"),
    OptimizerKind("adafactor", "torch.optim.Adafactor"),
    OptimizerKind("prodigy", "prodigyopt.Prodigy", package="prodigyopt==1.1.2",
                  recorded_as="prodigyopt.prodigy.Prodigy"),
    # warmup_steps=0: the loop's own schedule does the warmup (lr_multiplier_at), one warmup, not two.
    OptimizerKind("adamw_schedulefree", "schedulefree.AdamWScheduleFree", package="schedulefree==1.4.1",
                  defaults={"warmup_steps": 0}, fallback="adamw",
                  recorded_as="schedulefree.adamw_schedulefree.AdamWScheduleFree"),
    OptimizerKind("sgd_nesterov", "torch.optim.SGD", defaults={"momentum": 0.9, "nesterov": True},
                  recorded_as="torch.optim.sgd.SGD"),
)}


def kind_for(opt: Optimisation) -> OptimizerKind:
    """The registry entry of opt.optimizer; for "custom", one made from optimizer_class."""
    if opt.optimizer == "custom":
        return OptimizerKind("custom", opt.optimizer_class)
    if opt.optimizer not in OPTIMIZER_KINDS:
        raise OptimizerError(f"optimizer = {opt.optimizer!r} is not known; expected one of "
                             + ", ".join([*OPTIMIZER_KINDS, "custom"]) + ".")
    return OPTIMIZER_KINDS[opt.optimizer]


def optimizer_kwargs(kind: OptimizerKind, opt: Optimisation) -> dict[str, Any]:
    """The keyword arguments the class is called with (besides the param groups)."""
    return {"weight_decay": opt.weight_decay, **kind.defaults, **opt.optimizer_kwargs()}


def _import_class(kind: OptimizerKind) -> type[torch.optim.Optimizer]:
    module_name, _, class_name = kind.class_path.rpartition(".")
    install = (f"pip install {kind.package} (or {EXTRA})" if kind.package
               else f"install the package that provides {module_name}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise OptimizerError(f"optimizer {kind.name} needs the module {module_name}, which is not installed: "
                             f"{install}, or choose another optimizer.") from e
    except (ImportError, RuntimeError, OSError) as e:  # e.g. bitsandbytes without a working CUDA setup
        raise OptimizerError(f"optimizer {kind.name}: the module {module_name} is installed but cannot be "
                             f"loaded ({e}); choose another optimizer.") from e
    cls = getattr(module, class_name, None)
    if cls is None:
        raise OptimizerError(f"optimizer_class = {kind.class_path!r}: the module {module_name} has no "
                             f"{class_name}; check the spelling (e.g. torch.optim.RAdam).")
    if not (inspect.isclass(cls) and issubclass(cls, torch.optim.Optimizer)):
        raise OptimizerError(f"optimizer_class = {kind.class_path!r} is not a torch.optim.Optimizer subclass; "
                             "name an optimizer class (e.g. torch.optim.RAdam).")
    return cls


def _unavailable(kind: OptimizerKind, device: torch.device) -> str | None:
    """Why `kind` cannot run here (a sentence), or None."""
    if kind.needs_cuda and device.type != "cuda":
        return f"optimizer {kind.name} needs a CUDA GPU; this run trains on {device.type}"
    if kind.package is not None:
        module_name = kind.class_path.split(".", 1)[0]
        if importlib.util.find_spec(module_name) is None:
            return f"optimizer {kind.name} needs {kind.package.split('==')[0]}: pip install {kind.package} (or {EXTRA})"
    return None


def build_optimizer(groups: Sequence[dict[str, Any]], opt: Optimisation,
                    device: torch.device) -> tuple[torch.optim.Optimizer, OptimizerKind]:
    """The optimizer of opt over `groups` (each with its own lr), and the kind actually used.

    Raises OptimizerError when the package, module or GPU is missing (unless optimizer_fallback allows
    AdamW instead) and when the class refuses the arguments.
    """
    kind = kind_for(opt)
    reason = _unavailable(kind, device)
    if reason is not None:
        if not (opt.optimizer_fallback and kind.fallback):
            hint = (" or turn optimizer_fallback on to train with AdamW instead" if kind.fallback
                    else f"; {kind.name} has no fallback (its learning rate means something else)")
            raise OptimizerError(f"{reason[0].upper()}{reason[1:]}; choose another optimizer{hint}.")
        logger.warning("%s; optimizer_fallback is on, so training with %s instead", reason, kind.fallback)
        kind = OPTIMIZER_KINDS[kind.fallback]
        kwargs = {"weight_decay": opt.weight_decay}  # the user's optimizer_args were meant for the other class
    else:
        kwargs = optimizer_kwargs(kind, opt)
    if kind.name == "prodigy" and max(g["lr"] for g in groups) < 0.1:
        logger.warning("prodigy with learning_rate %g: Prodigy estimates the learning rate itself and "
                       "learning_rate multiplies that estimate; 1.0 is the usual value", max(g["lr"] for g in groups))
    cls = _import_class(kind)
    try:
        return cls(list(groups), **kwargs), kind
    except (TypeError, ValueError, AssertionError) as e:
        try:
            accepted = ", ".join(name for name in inspect.signature(cls).parameters if name != "params")
        except (TypeError, ValueError):
            accepted = "see its documentation"
        raise OptimizerError(f"optimizer {kind.name} ({kind.class_path}) refused its arguments "
                             f"{kwargs!r}: {e}. It accepts: {accepted}. Fix optimizer_args.") from e


def has_averaged_weights(optimizer: torch.optim.Optimizer) -> bool:
    """True for schedule-free optimizers, whose train() / eval() switch the weights between two points."""
    return callable(getattr(optimizer, "train", None)) and callable(getattr(optimizer, "eval", None))


@contextlib.contextmanager
def averaged_weights(optimizer: torch.optim.Optimizer, params: Sequence[nn.Parameter]) -> Iterator[None]:
    """Inside, the parameters hold the weights to use (schedule-free: eval()'s average x); on exit the training
    weights come back exactly as they were (train() alone would recompute them with rounding)."""
    if not has_averaged_weights(optimizer):
        yield
        return
    with torch.no_grad():
        training = [p.detach().clone() for p in params]
    optimizer.eval()  # type: ignore[attr-defined]
    try:
        yield
    finally:
        optimizer.train()  # type: ignore[attr-defined]
        with torch.no_grad():
            for param, kept in zip(params, training, strict=True):
                param.copy_(kept)


def check_optimizer(opt: Optimisation, device: torch.device) -> str:
    """The name of the optimizer a run of `opt` on `device` will use, found by building it over one probe
    parameter: so a missing package or GPU, or arguments the class refuses, stop the run before any work.
    Raises OptimizerError as build_optimizer does."""
    probe = [{"params": [nn.Parameter(torch.zeros(1, device=device))], "lr": opt.learning_rate,
              "base_lr": opt.learning_rate, "group_name": "probe"}]
    return build_optimizer(probe, opt, device)[1].name
