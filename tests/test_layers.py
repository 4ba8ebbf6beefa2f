"""The import graph shows the layers: training never imports the toy world or evaluation (scorers are
handed in by the commands), and one function makes images from a pipeline (trilora/sampling.py)."""

import ast
from pathlib import Path

import trilora

PACKAGE = Path(trilora.__file__).parent


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside functions."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
    return modules


def test_training_imports_neither_the_toy_world_nor_evaluation():
    upward = {
        f"{path.relative_to(PACKAGE)}: {module}"
        for path in (PACKAGE / "training").glob("*.py")
        for module in imported_modules(path)
        if module.startswith(("trilora.toy", "trilora.evaluation", "trilora.scorers"))
    }
    assert not upward


def pipeline_calls(path: Path) -> int:
    """Calls of a variable named `pipe` or `self.pipe` (a diffusers pipeline called to make images)."""
    calls = 0
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            func = node.func
            name = (
                func.id
                if isinstance(func, ast.Name)
                else func.attr
                if isinstance(func, ast.Attribute)
                else ""
            )
            calls += name == "pipe"
    return calls


def test_one_function_makes_images_from_a_pipeline():
    callers = {str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py") if pipeline_calls(path)}
    assert callers == {"sampling.py"}
