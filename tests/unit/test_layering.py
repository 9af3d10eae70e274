"""Layering: the engine (trainer/) never imports the host; only nodes/ may."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parents[2] / "trainer"
HOST_MODULES = frozenset({"comfy", "comfy_api", "comfy_extras", "folder_paths", "server", "nodes", "execution"})


def host_imports(source: str, filename: str = "<source>", package_depth: int | None = None) -> list[str]:
    """`line: module` for every import of a host module in `source`, at any depth (functions, try blocks).

    Absolute imports and importlib.import_module / __import__ calls with a literal name are checked;
    a relative import is reported only if it climbs out of trainer/ (`package_depth` levels deep).
    """
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                names = [node.module or ""]
            elif package_depth is not None and node.level > package_depth:
                names = [f"{'.' * node.level}{node.module or ''} (outside trainer/)"]
                found.append(f"{node.lineno}: {names[0]}")
                continue
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if called in ("import_module", "__import__"):
                names = [node.args[0].value]
        found.extend(f"{node.lineno}: {name}" for name in names if name.split(".")[0] in HOST_MODULES)
    return found


def _engine_files() -> list[Path]:
    return sorted(ENGINE.rglob("*.py"))


def test_engine_files_are_found() -> None:
    assert len(_engine_files()) > 10 and ENGINE / "training" / "loop.py" in _engine_files()


@pytest.mark.parametrize("path", _engine_files(), ids=lambda p: str(p.relative_to(ENGINE.parent)))
def test_engine_module_does_not_import_the_host(path: Path) -> None:
    depth = len(path.relative_to(ENGINE).parts)  # trainer/x.py: 1 level; `from .. import` leaves trainer/
    assert host_imports(path.read_text(encoding="utf-8"), str(path), package_depth=depth) == []


@pytest.mark.parametrize(("source", "expected"), [
    ("import comfy.model_management\n", ["1: comfy.model_management"]),
    ("def f():\n    import comfy.model_management\n    return 1\n", ["2: comfy.model_management"]),
    ("try:\n    from folder_paths import get_output_directory\nexcept ImportError:\n    pass\n", ["2: folder_paths"]),
    ("import os, server\n", ["1: server"]),
    ("from comfy_extras.nodes_train import TrainLoraNode\n", ["1: comfy_extras.nodes_train"]),
    ("import importlib\nm = importlib.import_module('comfy.utils')\n", ["2: comfy.utils"]),
    ("from nodes import NODE_CLASS_MAPPINGS\n", ["1: nodes"]),
    ("import execution\nimport comfy_api.latest\n", ["1: execution", "2: comfy_api.latest"]),
    ("from . import errors\nfrom ..errors import LoraLabError\nimport comfyui_helper\nimport servers\n", []),
])
def test_the_scan_catches_host_imports(source: str, expected: list[str]) -> None:
    assert sorted(host_imports(source, package_depth=2)) == expected


def test_a_relative_import_out_of_the_engine_is_caught() -> None:
    assert host_imports("from ...nodes.host import model\n", package_depth=2) == ["1: ...nodes.host (outside trainer/)"]
