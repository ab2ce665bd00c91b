"""The stage contract: every stage module provides what lineage/contract.py's Stage describes, its
CODE names files that exist and covers the project code it runs, and every stage is reachable from
the CLI and the config. A module that breaks the contract is refused when it is loaded, in one line."""

from __future__ import annotations

import ast
import dataclasses
import sys
import types
from pathlib import Path

import pytest

from lineage.contract import NamesClasses, check_stage
from lineage.errors import UserError
from lineage.records import is_name
from stages import STAGES, load_stage

ROOT = Path(__file__).resolve().parents[1]
# The runner's own packages: a change there is not a change in what a stage computes (and would
# invalidate every cache at once), so no stage lists them in CODE.
RUNNER_PACKAGES = ("lineage",)


@pytest.mark.parametrize("name", STAGES)
def test_every_stage_satisfies_the_protocol(name):
    stage = load_stage(name)
    assert stage.NAME == name == stage.__name__.rsplit(".", 1)[1]
    assert is_name(stage.OUTPUT)
    assert dataclasses.is_dataclass(stage.Params)
    params = stage.Params() if name != "ingest" else stage.Params(source="data")
    refs = stage.input_refs(params)
    assert isinstance(refs, dict) and all(isinstance(ref, str) for ref in refs.values())


@pytest.mark.parametrize("name", STAGES)
def test_every_path_in_code_exists_and_names_the_stage_itself(name):
    stage = load_stage(name)
    for relative in stage.CODE:
        path = ROOT / relative
        assert path.exists(), f"{name}.CODE names {relative}, which does not exist"
        assert path.resolve().is_relative_to(ROOT)
    assert f"stages/{name}.py" in stage.CODE


@pytest.mark.parametrize("name", STAGES)
def test_code_covers_every_project_module_the_stage_imports(name):
    """A change to a helper the stage runs must change its cache key: every project module it imports,
    directly or through others, lazily inside a function or not, is under a path in its CODE."""
    stage = load_stage(name)
    covered = [ROOT / relative for relative in stage.CODE]
    uncovered = [str(path.relative_to(ROOT)) for path in _project_imports(ROOT / "stages" / f"{name}.py")
                 if not any(path == c or c in path.parents for c in covered)]
    assert not uncovered, f"{name}.CODE misses {uncovered}"


def _project_imports(start: Path) -> set[Path]:
    """Files of this project reachable by imports from `start`, leaving out the runner's packages."""
    seen, todo = set(), [start]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            if isinstance(node, ast.ImportFrom) and node.module:  # `from models import data` names a module too
                modules += [f"{node.module}.{a.name}" for a in node.names]
            for module in modules:
                if module.split(".")[0] in RUNNER_PACKAGES:
                    continue
                file = ROOT.joinpath(*module.split(".")).with_suffix(".py")
                if file.is_file():
                    todo.append(file)
    return seen


def test_every_stage_is_a_cli_command_and_a_config_section(tmp_path):
    import pipeline
    from workflow.config import load_config

    parser = pipeline.build_parser()
    for name in STAGES:
        args = parser.parse_args([name] + (["some/folder"] if name == "ingest" else []))
        assert args.command == name
    config = load_config(None, [f"{name}.seed=1" for name in ("split", "train")])
    assert config.stages == list(STAGES)
    assert set(config.sections) == set(STAGES)


def test_only_stages_live_in_stages():
    modules = sorted(p.stem for p in (ROOT / "stages").glob("*.py") if p.stem != "__init__")
    assert modules == sorted(STAGES)


def test_the_class_hook_is_recognised_where_a_stage_has_it():
    assert [name for name in STAGES if isinstance(load_stage(name), NamesClasses)] == ["infer", "evaluate"]


def _module(**members) -> types.ModuleType:
    module = types.ModuleType("stages.example")
    module.__dict__.update(members)
    return module


@dataclasses.dataclass
class _Params:
    pass


def _complete(**overrides) -> dict:
    members = dict(NAME="example", OUTPUT="example", CODE=("stages/example.py",), Params=_Params,
                   input_refs=lambda params: {}, fingerprint=lambda params: None,
                   run=lambda inputs, params, ctx: [])
    members.update(overrides)
    return {k: v for k, v in members.items() if v is not None}


def test_a_complete_module_passes_the_check():
    module = _module(**_complete())
    assert check_stage(module) is module


@pytest.mark.parametrize("overrides, named", [
    ({"run": None}, "run(inputs, params, ctx)"),
    ({"fingerprint": None}, "fingerprint(params)"),
    ({"run": lambda inputs, params: []}, "run(inputs, params, ctx) with those parameters"),
    ({"CODE": "stages/example.py"}, "CODE (tuple)"),
    ({"Params": dict}, "Params (a dataclass)"),
    ({"OUTPUT": None}, "OUTPUT (str)"),
    ({"check_classes": lambda params: None}, "check_classes(params, classes, where) with those parameters"),
])
def test_a_module_that_lacks_a_member_is_refused_in_one_line(overrides, named):
    with pytest.raises(UserError) as raised:
        check_stage(_module(**_complete(**overrides)))
    message = str(raised.value)
    assert "stages.example" in message and named in message and "lineage/contract.py" in message
    assert "\n" not in message


def test_the_cli_names_a_broken_stage_module_in_one_line(tmp_path, monkeypatch):
    """A stage file that lost its run() fails when loaded, before anything runs, with the contract named."""
    broken = _module(**_complete(NAME="split", OUTPUT="split", run=None))
    monkeypatch.setitem(sys.modules, "stages.split", broken)
    import pipeline

    assert pipeline.main(["split", "--store", str(tmp_path / "store")]) == 1
