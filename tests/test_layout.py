"""The package's shape as the README and docs/design.md promise it: subpackages that depend one
way, each stating its role; implementation in private modules that another package reaches only
through the package's `__init__`; no module over ~500 lines; no import cycle (for types either);
and every file the code or docs point to exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "autoall"
MODULES = [PACKAGE / "__init__.py", *sorted(set(PACKAGE.rglob("*.py")) - {PACKAGE / "__init__.py"})]
MAX_LINES = 500
# Each package may import only those after it (the root's modules: the layer, errors, _secrets,
# _timing, _provenance, import no package).
ORDER = ("cli", "report", "study", "tracking", "config", "training")
PACKAGES = [p.parent for p in PACKAGE.rglob("__init__.py") if p.parent != PACKAGE]


def _name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The autoall modules `path` imports (`from a.b import c` counts c when c is a module),
    at run time or for types only."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("autoall"):
            found.add(node.module)  # type: ignore[arg-type]
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if (ROOT / (sub.replace(".", "/") + ".py")).exists():
                    found.add(sub)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("autoall.")}
    return found - {_name(path)}


def _package(module: str) -> str:
    """The package a module belongs to: "" for the root's, else its first-level package."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ORDER) else ""


def _owner(module: str) -> str:
    """The package whose private module this is (the path before its first `_part`)."""
    parts = module.split(".")
    first = next((i for i, p in enumerate(parts) if p.startswith("_")), len(parts))
    return ".".join(parts[:first])


def test_the_packages_are_the_ones_the_design_names() -> None:
    found = {p.relative_to(PACKAGE).parts[0] for p in PACKAGES}
    assert found == set(ORDER)


def test_packages_depend_one_way() -> None:
    wrong = []
    for path in MODULES[1:]:  # the root's __init__ re-exports the public API, lazily
        mine = _package(_name(path))
        for module in _imports(path):
            theirs = _package(module)
            if not theirs or theirs == mine:
                continue
            if not mine or ORDER.index(theirs) <= ORDER.index(mine):
                wrong.append(f"{_name(path)} imports {module}")
    assert not wrong, (
        "imports against the package order " + " > ".join(ORDER) + ": " + "; ".join(wrong)
    )


def test_no_module_imports_another_package_s_private_module() -> None:
    """`autoall.training._loop` is training's own; others import `autoall.training`. A package's
    subpackages may use its private modules, and everyone the root's (`autoall._secrets`)."""
    wrong = []
    for path in MODULES:
        me = _name(path)
        mine = me if path.name == "__init__.py" else _owner(me) if "._" in me else me
        for module in _imports(path):
            owner = _owner(module)
            if "._" not in module or mine == owner or mine.startswith(owner + "."):
                continue
            wrong.append(f"{me} imports {module}")
    assert not wrong, "; ".join(sorted(wrong))


def test_every_package_states_its_role_and_exports_what_others_use() -> None:
    for package in PACKAGES:
        init = package / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc.split()) >= 15, f"{init}: say what this package is for"
        assert "__all__" in init.read_text(), f"{init}: list the public names in __all__"


def test_no_module_is_over_500_lines() -> None:
    sizes = {_name(p): len(p.read_text().splitlines()) for p in MODULES}
    assert not {n: s for n, s in sizes.items() if s > MAX_LINES}


def test_no_modules_import_each_other_in_a_circle() -> None:
    names = {_name(p) for p in MODULES}
    graph = {_name(p): {m for m in _imports(p) if m in names} for p in MODULES}
    # a package's __init__ only re-exports: count an import of it as one of what it imports
    cycles = []
    for start in graph:
        seen, todo = set(), [m for m in graph[start] if not start.startswith(m + ".")]
        while todo:
            module = todo.pop()
            if module == start:
                cycles.append(start)
                break
            if module not in seen:
                seen.add(module)
                todo.extend(m for m in graph.get(module, ()) if not module.startswith(m + "."))
    assert not cycles, f"modules on an import cycle: {', '.join(sorted(cycles))}"


def test_the_readme_maps_every_package() -> None:
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"^## How it works\n(.*?)^## ", readme, re.S | re.M)
    assert match, "README.md has no '## How it works' section"
    missing = [p for p in ORDER if f"`{p}/`" not in match.group(1)]
    assert not missing, f"README.md, 'How it works', does not name: {', '.join(missing)}"


_CITED = re.compile(
    r"\b((?:autoall|tests|bench|docs|studies|deploy)/[\w/.-]*\w\.(?:py|md|yaml|sh))"
)


def test_every_file_the_code_and_docs_point_to_exists() -> None:
    sources = [*MODULES, *(ROOT / "docs").rglob("*.md"), ROOT / "README.md"]
    sources += [*(ROOT / "bench").glob("*.py")]
    missing = {
        f"{src.relative_to(ROOT)}: {cited}"
        for src in sources
        for cited in _CITED.findall(src.read_text())
        if "*" not in cited and not (ROOT / cited).exists()
    }
    assert not missing, "\n".join(sorted(missing))


def test_the_project_cites_no_document_outside_it() -> None:
    sources = [*MODULES, *(ROOT / "docs").rglob("*.md"), ROOT / "README.md"]
    citing = [
        str(s.relative_to(ROOT))
        for s in sources
        if re.search(r"DESIGN\b|\.\./shared", s.read_text())
    ]
    assert not citing, f"cite docs/design.md instead: {', '.join(citing)}"


_OPTUNA_PRIVATE = re.compile(
    r"\boptuna(?:\.\w+)*\._\w+(?!.*get_?[lL]ogger)|\._trial_id\b|\._study_id\b|\._get_trials\b"
    r"|(?<![.\w])study\._storage\b|\._backend\b"
    r'|"_(?:cma_)?rng"|"_random_sampler"|"_independent_sampler"|LazyRandomState'
)


def test_optuna_s_private_api_is_used_in_one_module() -> None:
    """autoall/study/_storage.py lists each use of Optuna's private API with its reason; an
    Optuna upgrade is checked there, not across the package. (Logger names do not count.)"""
    home = PACKAGE / "study" / "_storage.py"
    users = [
        f"{p.relative_to(ROOT)}:{n}: {line.strip()}"
        for p in MODULES
        if p != home
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if _OPTUNA_PRIVATE.search(line) and "getLogger" not in line and "get_logger" not in line
    ]
    assert not users, "\n".join(users)
