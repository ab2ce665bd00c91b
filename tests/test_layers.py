"""Imports point one way (docs/architecture.md): (pipeline.py, keras_lineage) → workflow → stages →
(models, report) → (tables, images) → lineage. A package importing one above it, even lazily inside a
function, fails here."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("keras_lineage", "workflow", "stages", "models", "report", "tables", "images", "lineage", "demo")
# What each package may import from this project (besides itself).
ALLOWED = {
    "keras_lineage": {"workflow", "stages", "models", "report", "tables", "images", "lineage", "demo"},  # the API
    "workflow": {"stages", "lineage"},
    "stages": {"models", "report", "tables", "images", "lineage"},
    "models": {"tables", "images", "lineage"},
    "report": {"tables", "lineage"},
    "tables": {"lineage"},
    "images": {"lineage"},
    "lineage": set(),
    "demo": {"lineage"},
}


def _imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found & set(PACKAGES)


def test_imports_point_one_way():
    wrong = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for imported in _imported_packages(path) - ALLOWED[package] - {package}:
                wrong.append(f"{path.relative_to(ROOT)} imports {imported}")
    assert not wrong, wrong


def test_nothing_imports_the_python_api():
    """keras_lineage is the top layer, beside the CLI: the CLI and every package work without it."""
    paths = [ROOT / "pipeline.py"] + [p for package in PACKAGES if package != "keras_lineage"
                                      for p in sorted((ROOT / package).rglob("*.py"))]
    assert len(paths) > 50
    wrong = [str(p.relative_to(ROOT)) for p in paths if "keras_lineage" in _imported_packages(p)]
    assert not wrong, wrong


def test_the_runner_imports_no_tensorflow_or_other_packages():
    for path in sorted((ROOT / "lineage").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not names & {"tensorflow", "keras", "models", "report", "tables", "stages"}, path
