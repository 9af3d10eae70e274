"""optimizer_args as sd-scripts' --optimizer_args: `key=value, ...` with Python literal values, never run."""

from __future__ import annotations

import ast
from typing import Any

from .settings import invalid


def is_dotted_name(text: str) -> bool:
    parts = text.split(".")
    return len(parts) >= 2 and all(part.isidentifier() for part in parts)


def parse_optimizer_args(text: str) -> dict[str, Any]:
    """`key=value, ...` -> {key: value}, each value a Python literal read by ast.literal_eval (nothing is run).

    Parsed as the keyword arguments of a call, so commas inside tuples and strings need no escaping.
    """
    if not text.strip():
        return {}
    try:
        call = ast.parse(f"f({text})", mode="eval").body
    except SyntaxError as e:
        raise invalid("optimizer_args", text, "comma-separated key=value pairs with Python literal values, "
                                               "e.g. betas=(0.9, 0.99), eps=1e-8") from e
    if not isinstance(call, ast.Call) or call.args or any(k.arg is None for k in call.keywords):
        raise invalid("optimizer_args", text, "only key=value pairs (no bare values, no **), "
                                               "e.g. betas=(0.9, 0.99), eps=1e-8")
    parsed: dict[str, Any] = {}
    for keyword in call.keywords:
        assert keyword.arg is not None
        if keyword.arg in parsed:
            raise invalid("optimizer_args", text, f"each key once ({keyword.arg} is given twice)")
        try:
            parsed[keyword.arg] = ast.literal_eval(keyword.value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as e:
            raise invalid("optimizer_args", ast.get_source_segment(f"f({text})", keyword) or keyword.arg,
                           f"a Python literal value for {keyword.arg} (number, True/False/None, tuple, list, "
                           "'quoted text')") from e
    return parsed
