"""The package's layout as the README promises it: every module named in "How it works", none
over ~500 lines, and no two modules importing each other in a circle (for types either)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "autoall"
MODULES = sorted(p for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
MAX_LINES = 500


def _how_it_works() -> str:
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"^## How it works\n(.*?)^## ", readme, re.S | re.M)
    assert match, "README.md has no '## How it works' section"
    return match.group(1)


def _imports(path: Path) -> set[str]:
    """The autoall modules `path` imports, at run time or for types only."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "autoall":
            found |= {a.name for a in node.names if (PACKAGE / f"{a.name}.py").exists()}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("autoall."):
            found.add(node.module.split(".")[1])  # type: ignore[union-attr]
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("autoall.")}
    return found - {path.stem}


def test_the_readme_names_the_home_of_every_module() -> None:
    section = _how_it_works()
    missing = [p.name for p in MODULES if f"`{p.name}`" not in section]
    assert not missing, f"README.md, 'How it works', does not name: {', '.join(missing)}"


def test_no_module_is_over_500_lines() -> None:
    sizes = {p.name: len(p.read_text().splitlines()) for p in MODULES}
    assert not {n: s for n, s in sizes.items() if s > MAX_LINES}


def test_no_modules_import_each_other_in_a_circle() -> None:
    graph = {p.stem: _imports(p) for p in MODULES}
    cycles = []
    for start in graph:
        seen, todo = set(), list(graph[start])
        while todo:
            module = todo.pop()
            if module == start:
                cycles.append(start)
                break
            if module not in seen:
                seen.add(module)
                todo.extend(graph.get(module, ()))
    assert not cycles, f"modules on an import cycle: {', '.join(sorted(cycles))}"
