"""The JSON answers of LoRA Lab's routes: never cached, errors as {"error": message}."""
from __future__ import annotations

from typing import Any

from aiohttp import web

NO_STORE = {"Cache-Control": "no-store"}


def json_answer(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, headers=NO_STORE)


def error_answer(status: int, message: str) -> web.Response:
    return json_answer({"error": message}, status)
