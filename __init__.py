"""LoRA Lab: load, stack, train and preview LoRAs inside ComfyUI.

The host imports this file from custom_nodes/. Outside a host (pytest, a CLI) it imports cleanly and
registers nothing: the node classes need the host's modules.
"""
import importlib.util

WEB_DIRECTORY = "./js"

if importlib.util.find_spec("folder_paths") is not None and importlib.util.find_spec("comfy") is not None:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
    from .nodes.host.routes import register_routes

    register_routes()
else:
    NODE_CLASS_MAPPINGS: dict = {}
    NODE_DISPLAY_NAME_MAPPINGS: dict = {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
