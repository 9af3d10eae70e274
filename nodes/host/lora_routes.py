"""The routes about one LoRA file of the host's loras folders, found by the name the host lists (never a path):

    GET /loralab/loras/info?name=<name>                    what it holds (lora_info.summary, parsed once)
    GET /loralab/loras/blocks?name=<name>[&weights=<text>]  its blocks, each with its layer count and its weight
                                                            under a block-weight text (the editor's sliders)

Both answer {"name", "readable": true, ...} for a file they read, and {"name", "readable": false, "reason"} with
200 for a listed file that is not a readable LoRA (truncated, a pickle, not a LoRA, an I/O error): an expected
answer about the file, not a failed request (a browser logs every 4xx as a console error, one per such file).
400 for a malformed name or text, 404 for a name the host does not list.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web

from ...trainer.errors import BlockWeightsError, LoraFileError, LoraNameError
from ...trainer.lora import info as lora_info
from ...trainer.lora.file import LoraFile
from ...trainer.lora.file_blocks import file_blocks
from .lora_files import check_lora_name, lora_names, parsed_loras
from .responses import error_answer, json_answer

MAX_LORA_NAME = 1024
MAX_WEIGHTS_TEXT = 4096  # 61 Flux values or many block=value entries fit with room to spare


def _one(request: web.Request, key: str, default: str | None = None) -> str | web.Response:
    """The query parameter `key`, given once (or absent when it has a default)."""
    values = request.query.getall(key, [])
    if not values and default is not None:
        return default
    if len(values) != 1:
        what = "a LoRA file name as the loras list shows it" if key == "name" else "a block-weight text"
        return error_answer(400, f"Give exactly one '{key}': {what}.")
    return values[0]


def _lora_name(request: web.Request) -> str | web.Response:
    name = _one(request, "name")
    if isinstance(name, web.Response):
        return name
    too_long = len(name) > MAX_LORA_NAME
    problem = f"a LoRA name has at most {MAX_LORA_NAME} characters" if too_long else check_lora_name(name)
    return error_answer(400, f"{problem[:1].upper()}{problem[1:]}.") if problem else name


def _unreadable(name: str, reason: str) -> web.Response:
    return json_answer({"name": name, "readable": False, "reason": reason})


async def _with_listed_file(name: str, answer: Callable[[LoraFile], dict[str, Any]]) -> web.Response:
    """`answer(file)` for a file the host lists, read through Load LoRA's cache off the event loop."""
    not_listed = error_answer(404, f"No LoRA file {name!r} in the loras folders.")

    def read() -> dict[str, Any] | None:
        return answer(parsed_loras.get(name)) if name in lora_names() else None

    try:
        data = await asyncio.get_running_loop().run_in_executor(None, read)
    except LoraNameError:  # removed since it was listed
        return not_listed
    except LoraFileError as e:
        # The reader names the file by its full path; the answer names it as the user chose it.
        return _unreadable(name, str(e).replace(e.path, name) if e.path else str(e))
    except BlockWeightsError as e:
        return error_answer(400, str(e))
    except OSError as e:
        return _unreadable(name, f"Cannot read LoRA file {name!r}: {e.strerror or type(e).__name__}.")
    return not_listed if data is None else json_answer({"name": name, "readable": True, **data})


def _summary(lora: LoraFile) -> dict[str, Any]:
    info = lora_info.summary(lora)
    hint = info["base_model_hint"]
    return {**info, "base_model_hint_label": lora_info.base_model_label(hint) if hint else None}


async def lora_file_info(request: web.Request) -> web.Response:
    """GET /loralab/loras/info?name=<name>: formats, ranks, alphas, base model, trigger words of one LoRA file."""
    name = _lora_name(request)
    return name if isinstance(name, web.Response) else await _with_listed_file(name, _summary)


async def lora_file_blocks(request: web.Request) -> web.Response:
    """GET /loralab/loras/blocks?name=<name>&weights=<text>: {"name", "readable", "weights", "blocks": [{"block",
    "layers", "weight"}], "outside"}: the file's blocks in layout order and how many layers lie outside every block."""
    name = _lora_name(request)
    if isinstance(name, web.Response):
        return name
    text = _one(request, "weights", "")
    if isinstance(text, web.Response):
        return text
    if len(text) > MAX_WEIGHTS_TEXT:
        return error_answer(400, f"A block-weight text has at most {MAX_WEIGHTS_TEXT} characters.")

    def answer(lora: LoraFile) -> dict[str, Any]:
        blocks, outside = file_blocks(lora, text)
        return {"weights": text, "outside": outside,
                "blocks": [{"block": b.block, "layers": b.layers, "weight": b.weight} for b in blocks]}

    return await _with_listed_file(name, answer)
