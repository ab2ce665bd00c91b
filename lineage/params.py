"""What a stage's Params may hold, and the one check every config value goes through.

A stage declares its parameters as a dataclass whose type hints say everything a value must
be, so the config can be checked in full before any work starts:

    resize: Literal["resize", "crop", "pad"] = "crop"          # a choice: the error lists them
    batch_size: Annotated[int, Range(1)] = 32                   # a bound: at least 1
    augmentation: Augmentation = …                             # a TypedDict: nested keys checked
    per_class: dict[Literal["train", "val", "test"], float]    # keys and values both checked

`check_value` walks such a hint and returns the value (ints widened to float where a float is
asked for) or raises a UserError that names the key, the value and what it must be. It knows
no stage: workflow/config.py calls it for every key of every section.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from lineage.errors import UserError

@dataclass(frozen=True)
class Range:
    """Bounds for a number: `min`/`max` inclusive, `above`/`below` exclusive, `None` unbounded."""

    min: float | None = None
    max: float | None = None
    below: float | None = None
    above: float | None = None

    def check(self, key: str, value: float) -> None:
        if (self.min is not None and value < self.min) or (self.max is not None and value > self.max) \
                or (self.below is not None and value >= self.below) \
                or (self.above is not None and value <= self.above) or not math.isfinite(value):
            raise UserError(f"{key} is {value!r}: it must be {self.describe()}")

    def describe(self) -> str:
        if self.above is not None:
            return f"above {_number(self.above)}" + (f" and at most {_number(self.max)}" if self.max is not None else "")
        if self.min is not None and self.max is not None:
            return f"from {_number(self.min)} to {_number(self.max)}"
        if self.min is not None and self.below is not None:
            return f"at least {_number(self.min)} and below {_number(self.below)}"
        if self.min is not None:
            return f"at least {_number(self.min)}"
        if self.max is not None:
            return f"at most {_number(self.max)}"
        return f"below {_number(self.below)}" if self.below is not None else "a finite number"


def param_hints(params_class: type) -> dict[str, Any]:
    """A Params dataclass's field types, with their Annotated bounds kept."""
    return typing.get_type_hints(params_class, include_extras=True)


def check_value(key: str, value: Any, hint: Any) -> Any:
    """`value` if it fits `hint` (ints widened to float where a float is asked for), else a UserError."""
    origin = typing.get_origin(hint)
    if origin is Annotated:
        base, *extras = typing.get_args(hint)
        value = check_value(key, value, base)
        for extra in extras:
            if isinstance(extra, Range) and value is not None and not isinstance(value, str):
                extra.check(key, value)
        return value
    if origin is Literal:
        choices = typing.get_args(hint)
        if any(value == choice and type(value) is type(choice) for choice in choices):
            return value
        raise UserError(f"{key} is {value!r}: use one of {', '.join(_show(c) for c in choices)}")
    if origin is types.UnionType or origin is typing.Union:
        return _check_union(key, value, typing.get_args(hint))
    if _is_typed_dict(hint):
        return _check_typed_dict(key, value, hint)
    if origin is list:
        items = _need(key, value, list, "a list")
        (item_hint,) = typing.get_args(hint) or (Any,)
        return [check_value(f"{key}[{i}]", item, item_hint) for i, item in enumerate(items)]
    if origin is dict:
        mapping = _need(key, value, dict, "a mapping")
        key_hint, value_hint = typing.get_args(hint) or (Any, Any)
        checked = {}
        for name, item in mapping.items():
            try:
                name = check_value(f"{key} key", name, key_hint)
            except UserError:
                raise UserError(f"{key}.{name} is not a key of {key}: use {_describe(key_hint)}") from None
            checked[name] = check_value(f"{key}.{name}", item, value_hint)
        return checked
    return _check_plain(key, value, hint)


def _check_plain(key: str, value: Any, hint: Any) -> Any:
    if hint is Any:
        return value
    if hint is type(None):
        if value is None:
            return None
        raise UserError(f"{key} is {value!r}: it must be null")
    if hint is bool:
        return _need(key, value, bool, "true or false")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise UserError(f"{key} is {value!r} ({_kind(value)}): it must be a whole number")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise UserError(f"{key} is {value!r} ({_kind(value)}): it must be a number")
    if hint is str:
        return _need(key, value, str, "text")
    if hint in (dict, list):
        return _need(key, value, hint, "a mapping" if hint is dict else "a list")
    raise TypeError(f"{key}: params type {hint!r} is not one check_value knows")


def _check_union(key: str, value: Any, options: tuple) -> Any:
    """The option whose kind the value has decides: its bound or choice error is the useful one."""
    for option in options:
        if _same_kind(value, option):
            return check_value(key, value, option)
    wanted = " or ".join(_describe(o) for o in options)
    raise UserError(f"{key} is {value!r} ({_kind(value)}): it must be {wanted}")


def _same_kind(value: Any, hint: Any) -> bool:
    """Whether `value` is of the kind `hint` asks for, bounds and choices aside."""
    origin = typing.get_origin(hint)
    if origin is Annotated:
        return _same_kind(value, typing.get_args(hint)[0])
    if origin is Literal:
        return any(type(value) is type(choice) for choice in typing.get_args(hint))
    if origin is types.UnionType or origin is typing.Union:
        return any(_same_kind(value, option) for option in typing.get_args(hint))
    if origin in (list, dict) or _is_typed_dict(hint):
        return isinstance(value, origin or dict)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is type(None):
        return value is None
    return hint is Any or (isinstance(hint, type) and isinstance(value, hint))


def _check_typed_dict(key: str, value: Any, hint: Any) -> dict:
    mapping = _need(key, value, dict, "a mapping")
    fields = typing.get_type_hints(hint, include_extras=True)
    unknown = [k for k in mapping if k not in fields]
    if unknown:
        raise UserError(f"{key}.{unknown[0]} is not a key of {key}: use {', '.join(fields)}")
    return {k: check_value(f"{key}.{k}", v, fields[k]) for k, v in mapping.items()}


def _is_typed_dict(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, dict) and hasattr(hint, "__total__")


def _need(key: str, value: Any, kind: type, described: str) -> Any:
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise UserError(f"{key} is {value!r} ({_kind(value)}): it must be {described}")


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Annotated:
        base, *extras = typing.get_args(hint)
        bounds = [e.describe() for e in extras if isinstance(e, Range)]
        return _describe(base) + (f" {bounds[0]}" if bounds else "")
    if origin is Literal:
        return "one of " + ", ".join(_show(c) for c in typing.get_args(hint))
    if origin is list:
        return "a list"
    if origin is dict or _is_typed_dict(hint):
        return "a mapping"
    return {type(None): "null", bool: "true or false", int: "a whole number", float: "a number",
            str: "text", dict: "a mapping", list: "a list"}.get(hint, str(hint))


def _kind(value: Any) -> str:
    return {type(None): "null", bool: "true/false", int: "a whole number", float: "a number", str: "text",
            dict: "a mapping", list: "a list"}.get(type(value), type(value).__name__)


def _show(choice: Any) -> str:
    return "null" if choice is None else str(choice).lower() if isinstance(choice, bool) else str(choice)


def _number(value: float) -> str:
    return f"{value:g}"
