"""How a setting is declared once (type, default, help, range, choices) and checked; the config sections use it."""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from collections.abc import Sequence
from dataclasses import field
from typing import Any

from ..errors import ConfigError


# Each field declares one setting once: type, default, help, range (metadata["ui"]: min / max / step, enforced
# here and shown by the node widgets) and choices (metadata["choices"]); nodes/ generates its inputs from them.
def setting(default: Any, help: str, *, choices: Sequence[str] | None = None, exclusive_min: bool = False,
            **ui: Any) -> Any:
    """A config field: its default, help text, range (`ui`: min, max, step, round, multiline) and choices.

    min and max are inclusive unless `exclusive_min` (a learning rate must be above 0, yet 0 is where its
    widget starts).
    """
    metadata: dict[str, Any] = {"help": help}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    if ui:
        metadata["ui"] = dict(ui)
    if exclusive_min:
        metadata["exclusive_min"] = True
    return field(default=default, metadata=metadata)


def invalid(field_name: str, value: object, allowed: str) -> ConfigError:
    return ConfigError(f"{field_name} = {value!r} is not allowed; expected {allowed}.")


def _check_field(name: str, kind: type, value: object, metadata: typing.Mapping[str, Any]) -> None:
    """One field against its declared type, range and choices."""
    ui = metadata.get("ui", {})
    low, high = ui.get("min"), ui.get("max")
    if kind is bool:
        if not isinstance(value, bool):
            raise invalid(name, value, "True or False")
    elif kind is int:
        # bool is an int subclass; True as a rank is a caller bug, not a rank of 1.
        if not isinstance(value, int) or isinstance(value, bool):
            raise invalid(name, value, "an integer")
        if (low is not None and value < low) or (high is not None and value > high):
            raise invalid(name, value, f"an integer between {low} and {high}" if high is not None
                           else f"an integer of at least {low}")
    elif kind is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise invalid(name, value, "a finite number")
        exclusive = metadata.get("exclusive_min", False)
        if (low is not None and (value <= low if exclusive else value < low)) or (high is not None and value > high):
            lower = f"greater than {low}" if exclusive else f"at least {low}"
            raise invalid(name, value, f"a number {lower}" + (f" and at most {high}" if high is not None else ""))
    elif kind is str:
        choices = metadata.get("choices")
        if choices is not None and value not in choices:
            raise invalid(name, value, "one of " + ", ".join(repr(c) for c in choices))
        if not isinstance(value, str):
            raise invalid(name, value, "a text")
    else:  # a new field type needs its own check (and its own node input kind)
        raise TypeError(f"{name}: no check for fields of type {kind!r}")


def check_fields(instance: object) -> None:
    for f in dataclasses.fields(instance):  # type: ignore[arg-type]
        _check_field(f.name, field_type(type(instance), f.name), getattr(instance, f.name), f.metadata)


@functools.cache
def _field_types(cls: type) -> dict[str, type]:
    return typing.get_type_hints(cls)  # the annotations are strings (postponed evaluation)


def field_type(cls: type, name: str) -> type:
    """The declared type of one config field (int, float, bool or str)."""
    return _field_types(cls)[name]


def config_field(cls: type, name: str) -> dataclasses.Field[Any]:
    """One config field, with its default and metadata."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def field_help(cls: type, name: str) -> str:
    """The help text of one config field, e.g. for a node tooltip."""
    return str(config_field(cls, name).metadata.get("help", ""))
