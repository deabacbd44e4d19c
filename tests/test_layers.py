"""The layering rule, checked on every import in the source tree: each package imports only from those below it.

resources (weights, audio, paths, server check) -> steps (the stages) -> data_prep, registry (peers) ->
clearml_pipeline (runtimes and orchestration). Imports inside functions count too: a lazy import that points
up is still a cycle waiting to happen.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = {"resources": 0, "steps": 1, "data_prep": 2, "registry": 2, "clearml_pipeline": 3}
MAX_MODULE_LINES = 400


def _modules() -> list[Path]:
    return sorted(p for package in LAYERS for p in (REPO / package).rglob("*.py"))


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & LAYERS.keys()


def test_every_import_points_down() -> None:
    wrong = []
    for path in _modules():
        package = path.relative_to(REPO).parts[0]
        for imported in _imported_packages(path):
            if imported != package and LAYERS[imported] >= LAYERS[package]:
                wrong.append(f"{path.relative_to(REPO)} imports {imported}")
    assert not wrong, "imports that do not point down a layer:\n" + "\n".join(wrong)


def test_the_rule_catches_an_upward_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from clearml_pipeline.runner import LocalRunner\nimport steps.base\n")
    assert _imported_packages(module) == {"clearml_pipeline", "steps"}


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_modules_stay_short(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.relative_to(REPO)} has {lines} lines (over {MAX_MODULE_LINES})"
