"""One error hierarchy: every exception class of the engine is defined in trainer/errors.py and is a LoraLabError."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path
from types import ModuleType

import pytest

import trainer
from trainer import errors
from trainer.errors import LoraLabError


def _engine_modules(package: ModuleType = trainer) -> list[ModuleType]:
    """trainer and every module below it, imported (the engine imports without a host)."""
    modules = [package]
    for info in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}."):
        modules.append(importlib.import_module(info.name))
    return modules


def _exceptions_defined_in(module: ModuleType) -> list[type[BaseException]]:
    """Exception classes whose home is `module`: module-level ones and those nested in its classes."""
    found: list[type[BaseException]] = []
    pending = [obj for _, obj in inspect.getmembers(module, inspect.isclass) if obj.__module__ == module.__name__]
    while pending:
        cls = pending.pop()
        if issubclass(cls, BaseException):
            found.append(cls)
        pending.extend(obj for _, obj in inspect.getmembers(cls, inspect.isclass)
                       if obj.__module__ == module.__name__ and obj not in found and obj is not cls
                       and obj.__qualname__.startswith(f"{cls.__qualname__}."))
    return found


def _offending(modules: list[ModuleType]) -> list[str]:
    problems = []
    for module in modules:
        for cls in _exceptions_defined_in(module):
            if module is not errors:
                problems.append(f"{module.__name__}.{cls.__qualname__} is defined outside trainer/errors.py")
            if not issubclass(cls, LoraLabError):
                problems.append(f"{module.__name__}.{cls.__qualname__} does not derive from LoraLabError")
    return problems


def test_every_engine_module_is_walked() -> None:
    names = {m.__name__ for m in _engine_modules()}
    root = Path(trainer.__file__).parent.parent
    files = {".".join(p.with_suffix("").relative_to(root).parts).removesuffix(".__init__")
             for p in (root / "trainer").rglob("*.py")}
    assert files <= names


def test_every_engine_exception_is_a_lora_lab_error_defined_in_errors() -> None:
    assert _offending(_engine_modules()) == []


def test_errors_defines_the_classes_the_engine_raises() -> None:
    defined = {cls.__name__ for cls in _exceptions_defined_in(errors)}
    assert {"LoraLabError", "ConfigError", "LoraFileError", "LoraWriteError", "ResumeStateError",
            "ResumeStateWriteError", "DatasetError", "JobError", "StackRowsError", "LoraTargetError",
            "LoraExportError", "NonFiniteLossError"} <= defined


def test_config_error_is_also_a_value_error() -> None:
    assert issubclass(errors.ConfigError, ValueError) and issubclass(errors.ConfigError, LoraLabError)


@pytest.mark.parametrize("source", [
    "class BadInput(ValueError):\n    pass\n",
    "class Stray(LoraLabError):\n    pass\n",
    "class Holder:\n    class Inner(RuntimeError):\n        pass\n",
])
def test_the_check_catches_a_stray_exception(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str) -> None:
    """Not a tautology: an exception defined in another engine module is reported."""
    package = tmp_path / "stray_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "mod.py").write_text("from trainer.errors import LoraLabError\n\n" + source)
    monkeypatch.syspath_prepend(str(tmp_path))
    stray = importlib.import_module("stray_pkg")
    assert len(_offending(_engine_modules(stray))) >= 1


def _stray_exception_classes(root: Path) -> list[str]:
    """Classes under `root` that derive from an exception by name, outside trainer/errors.py (found with ast:
    the host adapter cannot be imported without the host)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef) and any(
                    (isinstance(b, ast.Name) and b.id.endswith(("Error", "Exception", "Stopped", "Halted")))
                    for b in node.bases):
                found.append(f"{path.relative_to(root.parent)}: {node.name}")
    return found


def test_the_host_adapter_defines_no_exception_of_its_own() -> None:
    """nodes/ raises the classes of trainer/errors.py too, so a caller catching LoraLabError catches them all."""
    assert _stray_exception_classes(Path(trainer.__file__).parent.parent / "nodes") == []


def test_the_host_adapter_check_catches_a_stray_class(tmp_path: Path) -> None:
    (tmp_path / "nodes").mkdir()
    (tmp_path / "nodes" / "x.py").write_text("class NameError2(ValueError):\n    pass\n\nclass Fine:\n    pass\n")
    assert _stray_exception_classes(tmp_path / "nodes") == ["nodes/x.py: NameError2"]
