"""Configuration: YAML files of plain data, checked against each stage's Params dataclass.

    store: artifacts                   # the store root (also --store)
    stages: [ingest, split, …]         # what `pipeline.py run` runs, in this order
    <stage>: {key: value, …}           # that stage's Params

`--set stage.key=value` overrides a key (the value is read as YAML). An unknown key is an
error that suggests the nearest valid one; a value of the wrong type names the key and the
type it needs.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lineage.errors import UserError

STAGE_ORDER = ("ingest", "split", "train", "infer", "evaluate")
TOP_LEVEL_KEYS = ("store", "stages")
DEFAULT_STORE = "artifacts"


def stage_module(name: str) -> types.ModuleType:
    """Import a stage by name. Stage modules import TensorFlow only inside `run`, so this is cheap."""
    if name not in STAGE_ORDER:
        raise UserError(f"unknown stage {name!r}: stages are {', '.join(STAGE_ORDER)}")
    return importlib.import_module(f"stages.{name}")


@dataclass
class Config:
    store: str
    stages: list[str]
    sections: dict[str, dict]
    path: str | None = None

    def params(self, stage: str) -> Any:
        """The stage's Params built from its section, every key and type checked."""
        module = stage_module(stage)
        section = dict(self.sections.get(stage) or {})
        hints = typing.get_type_hints(module.Params)
        for key, value in section.items():
            if key not in hints:
                raise UserError(_unknown_key(f"{stage}.{key}", self.path))
            section[key] = _checked(f"{stage}.{key}", value, hints[key])
        return module.Params(**section)


def load_config(path: str | None, overrides: list[str] = (), store: str | None = None) -> Config:
    data = _read_yaml(path) if path else {}
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping of keys (store, stages, ingest, split, …)")
    for assignment in overrides:
        _apply_override(data, assignment)
    for key in data:
        if key not in TOP_LEVEL_KEYS and key not in STAGE_ORDER:
            raise UserError(_unknown_key(key, path))
        if key in STAGE_ORDER and data[key] is not None and not isinstance(data[key], dict):
            raise UserError(f"{key} must be a mapping of that stage's keys, not {type(data[key]).__name__}")
    stages = data.get("stages", list(STAGE_ORDER))
    if not isinstance(stages, list) or any(s not in STAGE_ORDER for s in stages):
        raise UserError(f"stages must be a list drawn from {', '.join(STAGE_ORDER)}, got {stages!r}")
    chosen_store = store or data.get("store") or DEFAULT_STORE
    if not isinstance(chosen_store, str):
        raise UserError(f"store must be a folder path (text), got {chosen_store!r}")
    sections = {name: data.get(name) or {} for name in STAGE_ORDER}
    return Config(chosen_store, stages, sections, path)


def _read_yaml(path: str) -> Any:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist (configs/ has {_config_names()})") from None
    try:
        return yaml.load(text, Loader=loader) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"{path} is not valid YAML{where}: {getattr(error, 'problem', error)}") from None


def _apply_override(data: dict, assignment: str) -> None:
    import yaml

    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise UserError(f"--set {assignment!r}: write it as stage.key=value, e.g. --set split.seed=3")
    value = yaml.safe_load(raw) if raw.strip() else ""
    parts = key.strip().split(".")
    target = data
    for part in parts[:-1]:
        if target.get(part) is None:
            target[part] = {}
        if not isinstance(target[part], dict):
            raise UserError(f"--set {key}: {part} is not a section")
        target = target[part]
    target[parts[-1]] = value


def valid_keys() -> list[str]:
    keys = list(TOP_LEVEL_KEYS) + list(STAGE_ORDER)
    for stage in STAGE_ORDER:
        keys += [f"{stage}.{f.name}" for f in dataclasses.fields(stage_module(stage).Params)]
    return keys


def _unknown_key(key: str, path: str | None) -> str:
    where = f" in {path}" if path else ""
    close = difflib.get_close_matches(key, valid_keys(), n=1, cutoff=0.5)
    if not close and "." in key:  # a right key in the wrong section, say
        close = [k for k in valid_keys() if k.endswith("." + key.rsplit(".", 1)[1])][:1]
    hint = f": did you mean {close[0]}?" if close else f": valid keys are {', '.join(valid_keys()[:12])}, …"
    return f"unknown config key {key}{where}{hint}"


def _checked(key: str, value: Any, hint: Any) -> Any:
    """Check a value against a Params type hint (int, float, bool, str, dict, list, X | None)."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
        else (hint,)
    for option in options:
        base = typing.get_origin(option) or option
        if option is type(None) and value is None:
            return None
        if base is bool and isinstance(value, bool):
            return value
        if base is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if base in (str, dict, list) and isinstance(value, base):
            return value
    expected = " or ".join("null" if o is type(None) else getattr(typing.get_origin(o) or o, "__name__", str(o))
                           for o in options)
    return _bad_type(key, value, expected)


def _bad_type(key: str, value: Any, expected: str):
    names = {"str": "text", "int": "a whole number", "float": "a number", "bool": "true or false",
             "dict": "a mapping", "list": "a list"}
    expected = " or ".join(names.get(part, part) for part in expected.split(" or "))
    raise UserError(f"{key} is {value!r} ({type(value).__name__}): it must be {expected}")


def _config_names() -> str:
    folder = Path(__file__).resolve().parent.parent / "configs"
    return ", ".join(sorted(p.name for p in folder.glob("*.yaml"))) or "no configs"
