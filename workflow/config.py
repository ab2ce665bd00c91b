"""Configuration: YAML files of plain data, checked in full against each stage's Params.

    store: artifacts                   # the store root (also --store)
    stages: [ingest, split, …]         # what `pipeline.py run` runs, in this order
    <stage>: {key: value, …}           # that stage's Params

YAML is read with 1.2 semantics (ruamel.yaml's safe loader), as a user reading the file would:
`on`, `yes`, `no` and `off` are strings, `1e-3` is a number, `010` is 10, `1:30` is text. PyYAML
reads YAML 1.1, where `infer: {on: test}` has the key True and `1:30` is 90.

Every section is checked when the config is loaded, whatever the command: an unknown key is an
error that suggests the nearest valid one, and a value of the wrong type, out of range or not
among the choices names the key and what it must be (lineage/params.py). `Config.params(stage)`
then builds the stage's Params, whose own checks relate one key to another. Nothing runs before
all of that has passed, so a typo costs a second, not an hour of training.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lineage.contract import NamesClasses
from lineage.errors import UserError
from lineage.params import check_value, param_hints
from stages import STAGES, load_stage

TOP_LEVEL_KEYS = ("store", "stages")
DEFAULT_STORE = "artifacts"
LATEST_SPLIT = ("split", "split:latest")


@dataclass
class Config:
    store: str
    stages: list[str]
    sections: dict[str, dict]
    path: str | None = None
    _built: dict[str, Any] = field(default_factory=dict, repr=False)

    def params(self, stage: str) -> Any:
        """The stage's Params built from its section, every key, type, range and choice checked."""
        if stage not in self._built:
            module = load_stage(stage)
            section = check_section(stage, self.sections.get(stage) or {}, self.path)
            self._built[stage] = module.Params(**section)
        return self._built[stage]

    def check(self, stages: list[str]) -> dict[str, Any]:
        """Build the Params of every stage a command will run, and check what one stage's settings
        mean for another's, before the first of them starts."""
        built = {name: self.params(name) for name in stages}
        split = built.get("split")
        if split is not None:
            parts = [name for name, amount in split.per_class.items() if amount]
            train, infer = built.get("train"), built.get("infer")
            if train is not None and train.input in LATEST_SPLIT and "val" not in parts:
                raise UserError(f"split.per_class is {split.per_class}, which leaves no val images, but train "
                                "needs them for checkpoints and early stopping: add val, e.g. "
                                "{train: 0.8, val: 0.1, test: 0.1}")
            if infer is not None and not infer.folder and infer.split in LATEST_SPLIT and infer.on not in parts:
                raise UserError(f"infer.on is {infer.on}, but split.per_class ({split.per_class}) makes no "
                                f"{infer.on} images: add {infer.on} to split.per_class or set infer.on to one "
                                f"of {', '.join(parts)}")
        return built

    def class_checkers(self, stages: list[str]) -> list[str]:
        """The stages among these whose settings name classes of the data they will read (evaluate.scatter,
        say): those with the `check_classes` hook that read the newest versions of their inputs."""
        return [name for name in stages
                if isinstance(load_stage(name), NamesClasses) and _reads_latest(self.params(name))]

    def check_classes(self, stages: list[str], classes: list[str], where: str) -> None:
        """What can be checked only once the data's classes are known: `pipeline.py run` calls this as soon
        as a version with classes exists, before training."""
        for name in self.class_checkers(stages):
            load_stage(name).check_classes(self.params(name), classes, where)


def _reads_latest(params: Any) -> bool:
    """Whether the stage reads the newest versions of its inputs: then it reads what this run makes, and
    the classes just found are its classes; a stage pinned to `model:v3` may have others."""
    refs = [getattr(params, f.name) for f in dataclasses.fields(params) if f.metadata.get("cache") is False
            and f.name in ("input", "model", "split")]
    return all(":" not in ref or ref.endswith(":latest") for ref in refs if isinstance(ref, str))


def load_config(path: str | None, overrides: list[str] = (), store: str | None = None) -> Config:
    data = read_yaml_file(path) if path else {}
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping of keys (store, stages, ingest, split, …), "
                        f"not {_kind(data)}")
    for assignment in overrides:
        _apply_override(data, assignment)
    for key in data:
        if key not in TOP_LEVEL_KEYS and key not in STAGES:
            raise UserError(_unknown_key(key, path))
        if key in STAGES and data[key] is not None and not isinstance(data[key], dict):
            raise UserError(f"{key} must be a mapping of that stage's keys, not {_kind(data[key])}"
                            + (f" (in {path})" if path else ""))
    stages = _checked_stages(data.get("stages", list(STAGES)))
    chosen_store = store or data.get("store") or DEFAULT_STORE
    if not isinstance(chosen_store, str) or not chosen_store.strip():
        raise UserError(f"store must be a folder path (text), got {chosen_store!r}")
    sections = {name: data.get(name) or {} for name in STAGES}
    for name, section in sections.items():  # every section, used by this command or not
        check_section(name, section, path)
    return Config(chosen_store, stages, sections, path)


def check_section(stage: str, section: dict, path: str | None) -> dict:
    """The section's values checked against the stage's Params hints (ints widened where floats are asked)."""
    hints = param_hints(load_stage(stage).Params)
    checked = {}
    for key, value in section.items():
        if key not in hints:
            raise UserError(_unknown_key(f"{stage}.{key}", path))
        checked[key] = check_value(f"{stage}.{key}", value, hints[key])
    return checked


def _checked_stages(stages: Any) -> list[str]:
    if not isinstance(stages, list) or any(s not in STAGES for s in stages) or not stages:
        raise UserError(f"stages must be a list drawn from {', '.join(STAGES)}, got {stages!r}")
    if len(set(stages)) != len(stages) or stages != sorted(stages, key=STAGES.index):
        raise UserError(f"stages {stages} must name each stage once, in pipeline order "
                        f"({', '.join(STAGES)})")
    return stages


# -- YAML ---------------------------------------------------------------------------------------

def read_yaml_file(path: str) -> Any:
    """A config file's data, or one line saying what is wrong with the file."""
    file = Path(path)
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist (configs/ has {_config_names()})") from None
    except IsADirectoryError:
        raise UserError(f"config {path} is a folder: pass a YAML file, e.g. --config configs/default.yaml") from None
    except PermissionError:
        raise UserError(f"config file {path} cannot be read (permission denied)") from None
    except OSError as error:
        raise UserError(f"config file {path} cannot be read: {error.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[:error.start].count(b"\n") + 1
        raise UserError(f"config file {path} is not UTF-8 text (byte {raw[error.start]:#04x} at line {line}): "
                        "save it as UTF-8") from None
    return parse_yaml(text, f"{path}")


def parse_yaml(text: str, where: str) -> Any:
    """YAML 1.2, safe: plain data only (no tags that build Python objects), duplicate keys refused."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        return YAML(typ="safe", pure=True).load(text)
    except YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).strip().splitlines()[0]
        raise UserError(f"{where} is not valid YAML{at}: {problem}") from None
    except RecursionError:
        raise UserError(f"{where} nests too deeply to be a config") from None


def _apply_override(data: dict, assignment: str) -> None:
    key, sep, raw = assignment.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise UserError(f"--set {assignment!r}: write it as stage.key=value, e.g. --set split.seed=3")
    value = parse_yaml(raw, f"--set {key}: the value {raw!r}") if raw.strip() else ""
    parts = key.split(".")
    target = data
    for depth, part in enumerate(parts[:-1]):
        if target.get(part) is None:
            target[part] = {}
        if not isinstance(target[part], dict):
            raise UserError(f"--set {key}: {'.'.join(parts[:depth + 1])} is not a section")
        target = target[part]
    target[parts[-1]] = value


# -- messages -----------------------------------------------------------------------------------

def valid_keys() -> list[str]:
    keys = list(TOP_LEVEL_KEYS) + list(STAGES)
    for stage in STAGES:
        keys += [f"{stage}.{f.name}" for f in dataclasses.fields(load_stage(stage).Params)]
    return keys


def _unknown_key(key: Any, path: str | None) -> str:
    where = f" in {path}" if path else ""
    key = str(key)
    close = difflib.get_close_matches(key, valid_keys(), n=1, cutoff=0.5)
    if not close and "." in key:  # a right key in the wrong section, say
        close = [k for k in valid_keys() if k.endswith("." + key.rsplit(".", 1)[1])][:1]
    hint = f": did you mean {close[0]}?" if close else f": valid keys are {', '.join(valid_keys()[:12])}, …"
    return f"unknown config key {key}{where}{hint}"


def _kind(value: Any) -> str:
    return {type(None): "nothing", list: "a list", str: "text", int: "a number", float: "a number",
            bool: "true/false"}.get(type(value), type(value).__name__)


def _config_names() -> str:
    folder = Path(__file__).resolve().parent.parent / "configs"
    return ", ".join(sorted(p.name for p in folder.glob("*.yaml"))) or "no configs"
