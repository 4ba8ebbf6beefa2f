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


def explained(lines: list[str], index: int) -> bool:
    """A comment on the import's line, or on the line above it or above the imports it follows."""
    if "#" in lines[index]:
        return True
    index -= 1
    while lines[index].strip().startswith(("import ", "from ")):
        if "#" in lines[index]:
            return True
        index -= 1
    return "#" in lines[index]


def test_every_import_inside_a_function_says_why_it_is_not_at_the_top():
    """Imports sit at the top of their module, where the import graph shows them, unless a comment
    on or above the line names the reason: the measured cost of a heavy library the module does not
    otherwise need, an optional dependency, an import cycle."""
    unexplained = []
    for path in PACKAGE.rglob("*.py"):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for sub in ast.walk(node):
                    if isinstance(sub, ast.Import | ast.ImportFrom) and not explained(lines, sub.lineno - 1):
                        unexplained.append(
                            f"{path.relative_to(PACKAGE)}:{sub.lineno}: {lines[sub.lineno - 1].strip()}"
                        )
    assert not unexplained
