"""Import the host's `comfy` package and the pack's host-side modules (nodes/*) inside a pytest process.

No ComfyUI server is started. `nodes/` uses relative imports (`from ..trainer ...`) and its __init__ registers
routes with the host's server, so its modules are loaded under a synthetic package, `loralab_pack`, whose
__init__ files are never executed. Importing `comfy` has process-wide effects, which `import_comfy` contains:

- ComfyUI's checkout is appended to sys.path (not prepended), so its top-level `nodes.py` / `utils/` never
  shadow this repository's `nodes/` package or anything installed;
- `comfy.model_management` picks its device at import time and fails without a driver when CUDA is
  compiled in, so `comfy.cli_args.args.cpu` is set first (argv is not parsed: ComfyUI parses `[]` unless
  `comfy.options.enable_args_parsing()` was called);
- its module-level `logging.info` calls run `logging.basicConfig()` when the root logger has no handler,
  and it turns on `torch.backends.cuda` fp16/bf16 SDPA reduction; both are undone after the import.
"""
from __future__ import annotations

import importlib
import logging
import os
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOST = Path(os.environ.get("LORALAB_HOST_DIR", REPO / ".host" / "ComfyUI"))  # the same tree comfy_host.py starts
PACK = "loralab_pack"  # the synthetic package the repository is imported as
HOST_MODULES = ("comfy.model_management", "comfy.lora", "comfy.lora_convert", "comfy.model_base",
                "comfy.model_patcher", "comfy.sdxl_clip", "comfy.supported_models", "comfy.utils")


def import_comfy() -> types.ModuleType:
    """The host's `comfy` package with the modules the LoRA tests use, on the CPU."""
    if str(HOST) not in sys.path:
        sys.path.append(str(HOST))
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    fp16_sdpa = _fp16_bf16_sdpa()
    try:
        if "comfy.model_management" not in sys.modules:
            import comfy.cli_args
            comfy.cli_args.args.cpu = True
        for name in HOST_MODULES:
            importlib.import_module(name)
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
        _fp16_bf16_sdpa(fp16_sdpa)
    return sys.modules["comfy"]


def _fp16_bf16_sdpa(value: bool | None = None) -> bool | None:
    import torch
    backend = torch.backends.cuda
    if not hasattr(backend, "fp16_bf16_reduction_math_sdp_allowed"):
        return None
    if value is not None:
        backend.allow_fp16_bf16_reduction_math_sdp(value)
    return backend.fp16_bf16_reduction_math_sdp_allowed()


def import_pack_module(name: str) -> types.ModuleType:
    """`import_pack_module("nodes.host.model")`: a pack module that imports relatively and needs the host."""
    import_comfy()
    parent = None
    for package, path in ((PACK, REPO), (f"{PACK}.nodes", REPO / "nodes")):
        if package not in sys.modules:
            module = types.ModuleType(package)
            module.__path__ = [str(path)]  # a package whose __init__.py is never run
            module.__package__ = package
            sys.modules[package] = module
            if parent is not None:
                setattr(parent, package.rpartition(".")[2], module)
        parent = sys.modules[package]
    return importlib.import_module(f"{PACK}.{name}")
