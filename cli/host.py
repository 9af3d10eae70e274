"""ComfyUI imported as a library, as its own main.py starts it up to the server: arguments, folders, nodes.

What main.py does before it serves is done here in the same order, with the host's own code: ComfyUI's
arguments are parsed by ComfyUI's parser (`--cpu`, `--base-directory`, `--extra-model-paths-config`...), the
extra model paths and the input/output/user folders are applied as `main.apply_custom_paths` applies them, and
the built-in and custom nodes are loaded by `nodes.init_extra_nodes`, so LoRA Lab (and every other pack) is
imported exactly as the host imports it. In place of the server a `HeadlessServer` stands in: the routes the
packs register at import land on its route table (LoRA Lab's status routes among them), and the events they
send come to its listener.
"""
from __future__ import annotations

import asyncio
import importlib
import itertools
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from .processes import Processes

log = logging.getLogger(__name__)

Listener = Callable[[str, Any], None]


class HostSetupError(RuntimeError):
    """ComfyUI could not be set up as a library (wrong folder, LoRA Lab missing)."""


def find_comfy_dir(given: str | None, pack_dir: Path) -> Path:
    """--comfy, else $COMFYUI_DIR, else the ComfyUI whose custom_nodes/ holds this pack."""
    candidates = [Path(given)] if given else []
    if not given and os.environ.get("COMFYUI_DIR"):
        candidates.append(Path(os.environ["COMFYUI_DIR"]))
    if not candidates and pack_dir.parent.name == "custom_nodes":
        candidates.append(pack_dir.parent.parent)
    for folder in candidates:
        folder = folder.expanduser().resolve()
        if (folder / "comfy").is_dir() and (folder / "nodes.py").is_file() and (folder / "folder_paths.py").is_file():
            return folder
        raise HostSetupError(f"{folder} is not a ComfyUI folder (it has no comfy/, nodes.py and folder_paths.py); "
                             "pass --comfy /path/to/ComfyUI")
    raise HostSetupError("where is ComfyUI? This pack is not inside a ComfyUI's custom_nodes/ folder: pass "
                         "--comfy /path/to/ComfyUI (or set COMFYUI_DIR)")


def _node_replace_manager() -> object | None:
    """ComfyUI 0.33's registry that its nodes (comfy_extras/nodes_replacements.py) add their replacements to at
    start; ComfyUI 0.3.75 has none."""
    try:
        from app.node_replace_manager import NodeReplaceManager
    except ImportError:
        return None
    return NodeReplaceManager()


class HeadlessServer:
    """What the host's executor and the packs use of `server.PromptServer.instance`, without a server.

    `routes` collects the routes packs register at import; `send_sync` hands every event to `listener`.
    """

    def __init__(self) -> None:
        from aiohttp import web

        self.routes = web.RouteTableDef()
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.last_prompt_id: str | None = None
        self.sockets: dict = {}
        self.sockets_metadata: dict = {}
        self.listener: Listener | None = None
        self.loop = None
        self.node_replace_manager = _node_replace_manager()

    def send_sync(self, event: str, data: Any, sid: str | None = None) -> None:
        if self.listener is not None:
            self.listener(event, data)

    def add_on_prompt_handler(self, handler: Callable) -> None:
        """Packs may register prompt hooks at import; no prompt is ever posted here."""

    def queue_updated(self) -> None:
        """The host's queue calls this; there is no queue to show."""


@dataclass
class Host:
    """The imported host: its modules, the stand-in server, its parsed arguments."""
    comfy_dir: Path
    args: Any
    nodes: ModuleType
    execution: ModuleType
    server: HeadlessServer

    def input_types(self, class_type: str) -> dict | None:
        node_class = self.nodes.NODE_CLASS_MAPPINGS.get(class_type)
        return None if node_class is None else node_class.INPUT_TYPES()

    @property
    def display_names(self) -> dict[str, str]:
        return dict(self.nodes.NODE_DISPLAY_NAME_MAPPINGS)

    def console_log_level(self) -> str:
        """The console's level from the host's --verbose: its level name (ComfyUI 0.3.75), or ComfyUI 0.33's list of
        (level, log file) outputs, of which the console ones (no file) decide, as its main.py reads them."""
        verbose = self.args.verbose
        if isinstance(verbose, str):
            return verbose
        import comfy.cli_args
        return comfy.cli_args.get_console_log_level(verbose)


def start_host(comfy_dir: Path, host_argv: list[str], pack_dir: Path, processes: Processes | None = None) -> Host:
    """Imports the ComfyUI at `comfy_dir` with `host_argv` as its command line and loads its nodes (under
    torchrun, on this process's own GPU)."""
    _prefer_host_modules(comfy_dir, pack_dir)
    saved_argv = sys.argv
    sys.argv = [str(comfy_dir / "main.py"), *host_argv]
    try:
        import comfy.options
        comfy.options.enable_args_parsing()
        from comfy.cli_args import args  # ComfyUI's own parser: its options, its errors
    finally:
        sys.argv = saved_argv
    _device_environment(args, processes or Processes())
    _apply_custom_paths(args)

    import comfy.model_management
    import comfy.utils
    import execution
    import server

    nodes = importlib.import_module("nodes")  # the host's nodes.py, not this pack's nodes/ package

    if Path(nodes.__file__).resolve().parent != comfy_dir:
        raise HostSetupError(f"'nodes' was imported from {nodes.__file__}, not from {comfy_dir}: run this "
                             "command from outside the pack's folder")
    stand_in = HeadlessServer()
    server.PromptServer.instance = stand_in

    def progress_hook(value, total, preview, prompt_id=None, node_id=None) -> None:
        # main.hijack_progress: the host's ops see Cancel through the progress bar
        comfy.model_management.throw_exception_if_processing_interrupted()

    comfy.utils.set_progress_bar_global_hook(progress_hook)
    init_custom = (not args.disable_all_custom_nodes) or len(args.whitelist_custom_nodes) > 0
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=init_custom, init_api_nodes=not args.disable_api_nodes))
    if "LoraLabTrainLora" not in nodes.NODE_CLASS_MAPPINGS:  # the pack is not in custom_nodes/: load this copy
        log.info("LoRA Lab is not in %s's custom_nodes; loading it from %s", comfy_dir, pack_dir)
        if not asyncio.run(nodes.load_custom_node(str(pack_dir), set(nodes.NODE_CLASS_MAPPINGS))):
            raise HostSetupError(f"LoRA Lab ({pack_dir}) failed to import into ComfyUI; the log above says why")
    return Host(comfy_dir, args, nodes, execution, stand_in)


def _prefer_host_modules(comfy_dir: Path, pack_dir: Path) -> None:
    """ComfyUI's folder first on sys.path, as when main.py runs; the pack's folder off it, so that the
    host's `nodes` module is not shadowed by the pack's `nodes/` package."""
    pack = pack_dir.resolve()
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != pack]
    if str(comfy_dir) not in sys.path:
        sys.path.insert(0, str(comfy_dir))


def _device_environment(args: Any, processes: Processes) -> None:
    """main.py's device selection by environment, before CUDA starts; under torchrun each process gets the
    LOCAL_RANK-th visible GPU, as if given --cuda-device (the host then trains on it as cuda:0)."""
    device = args.cuda_device
    if device is None and processes.several:
        visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        if visible and processes.local_rank >= len(visible):
            raise HostSetupError(f"{processes.label()} has LOCAL_RANK={processes.local_rank}, but "
                                 f"CUDA_VISIBLE_DEVICES={','.join(visible)} names {len(visible)} GPUs: start at most "
                                 "one process per GPU (torchrun --nproc_per_node)")
        device = visible[processes.local_rank] if visible else processes.local_rank
    if device is not None:
        for name in ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ASCEND_RT_VISIBLE_DEVICES"):
            os.environ[name] = str(device)
    if args.deterministic and "CUBLAS_WORKSPACE_CONFIG" not in os.environ:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"


def _apply_custom_paths(args: Any) -> None:
    """main.apply_custom_paths (ComfyUI 0.3.75), and start_comfyui's temp folder."""
    import folder_paths
    import utils.extra_config

    default_config = Path(folder_paths.__file__).resolve().parent / "extra_model_paths.yaml"
    if default_config.is_file():
        utils.extra_config.load_extra_path_config(str(default_config))
    for config_path in itertools.chain(*(args.extra_model_paths_config or [])):
        utils.extra_config.load_extra_path_config(config_path)
    if args.output_directory:
        folder_paths.set_output_directory(os.path.abspath(args.output_directory))
    output = folder_paths.get_output_directory()
    for name in ("checkpoints", "clip", "vae", "diffusion_models", "loras"):
        folder_paths.add_model_folder_path(name, os.path.join(output, name))
    if args.input_directory:
        folder_paths.set_input_directory(os.path.abspath(args.input_directory))
    if args.user_directory:
        folder_paths.set_user_directory(os.path.abspath(args.user_directory))
    if args.temp_directory:
        folder_paths.set_temp_directory(os.path.join(os.path.abspath(args.temp_directory), "temp"))
