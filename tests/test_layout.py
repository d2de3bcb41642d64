"""The package tree mirrors the book: a shared core at the top and one package per document's methods.

- A document package (cohen, relax, fars, ancer) imports the core and never another document package.
- The core never imports a document package (imports point down).
- A top-level module that only one document uses belongs in that document's package: every module
  at the top must be used by the core itself, by at least two documents, or by nothing yet (the
  command line's entry points).
- Each document package says what it is and offers its public names (`help(rsbook.<package>)`).
- The machinery that builds the book lives in rsbook.book, whose docstring maps it; the library never imports
  it: only the machinery itself and the document packages' steps modules do (issue 21).
"""

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "rsbook"
DOCUMENTS = ("cohen", "relax", "fars", "ancer")
MACHINERY = "book"
CHAPTERS = {"cohen_logs": "cohen", "cohen_rerun": "cohen", "relax": "relax", "fars": "fars", "ancer": "ancer",
            "sequential": "core", "intro": "core"}


def _imported(source: str) -> set[str]:
    """Every rsbook module a source file imports (`import rsbook.x`, `from rsbook.x import y`, `from rsbook
    import x`), as dotted names."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names if alias.name.startswith("rsbook")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rsbook"):
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def _room(module: str) -> str:
    """'core' for rsbook.<module> at the top, else the document package's name."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in DOCUMENTS else "core"


def _library_imports() -> dict[str, set[str]]:
    imports = {}
    for path in LIBRARY.rglob("*.py"):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        imports[module] = _imported(path.read_text())
    return imports


def _chapter_imports() -> dict[str, set[str]]:
    imports = {}
    for path in sorted((ROOT / "book").rglob("*.md")):
        if "_build" in path.parts:
            continue
        code = "\n".join(re.findall(r"```\{code-cell\}[^\n]*\n(.*?)```", path.read_text(), flags=re.S))
        code = "\n".join(line for line in code.splitlines() if not line.startswith(":"))
        imports[path.stem] = _imported(code)
    return imports


def test_document_packages_never_import_each_other():
    offenders = [(module, target) for module, targets in _library_imports().items() for target in targets
                 if _room(module) in DOCUMENTS and _room(target) in DOCUMENTS and _room(target) != _room(module)]
    assert offenders == []


def test_the_core_never_imports_a_document_package():
    offenders = [(module, target) for module, targets in _library_imports().items() for target in targets
                 if _room(module) == "core" and _room(target) in DOCUMENTS]
    assert offenders == []


def _single_owner(library: dict, chapters: dict, tools: set, top) -> dict:
    """Top-level modules whose every user (library module, chapter, benchmark or tool) is one document."""
    users: dict[str, set[str]] = {}
    for module, targets in library.items():
        for target in targets:
            users.setdefault(target, set()).add(_room(module))
    for chapter, targets in chapters.items():
        for target in targets:
            users.setdefault(target, set()).add(CHAPTERS.get(chapter, "core"))
    for target in tools:
        users.setdefault(target, set()).add("core")
    rooms = {m: sorted(users.get(f"rsbook.{m}", set())) for m in top}
    return {m: r for m, r in rooms.items() if len(r) == 1 and r[0] in DOCUMENTS}


def test_no_module_at_the_top_belongs_to_one_document_only():
    tools = set().union(*(_imported(p.read_text()) for p in [*(ROOT / "benchmarks").glob("*.py"),
                                                             *(ROOT / "tools").glob("*.py")]))
    top = sorted(p.stem for p in LIBRARY.glob("*.py") if p.stem not in ("__init__", "__main__"))
    single = _single_owner(_library_imports(), _chapter_imports(), tools, top)
    assert single == {}, f"move these into their document's package: {single}"


def test_the_rule_reports_a_module_only_one_document_uses():
    library = {"rsbook.fars.pipeline": {"rsbook.lonely", "rsbook.shared"}, "rsbook.relax.lp": {"rsbook.shared"},
               "rsbook.lonely": set(), "rsbook.shared": set(), "rsbook.cli": {"rsbook.core_only"}}
    chapters = {"fars": {"rsbook.lonely"}, "cohen_logs": {"rsbook.analysis"}}
    found = _single_owner(library, chapters, set(), ["lonely", "shared", "core_only", "analysis", "unused"])
    assert found == {"lonely": ["fars"], "analysis": ["cohen"]}


@pytest.mark.parametrize("package", DOCUMENTS)
def test_each_document_package_is_its_chapters_map(package):
    module = importlib.import_module(f"rsbook.{package}")
    assert module.__doc__ and len(module.__doc__.splitlines()) >= 5
    assert module.__all__, f"rsbook.{package} must list its public names"
    for name in module.__all__:
        assert hasattr(module, name), f"rsbook.{package}.__all__ names {name}, which it does not define"
    for path in (LIBRARY / package).glob("*.py"):
        if path.stem != "__init__":
            assert path.stem in module.__doc__, f"rsbook.{package}'s docstring does not mention {path.stem}"


def test_the_library_never_imports_the_book_machinery():
    """Issue 21: no module outside rsbook.book and the document packages' steps modules imports rsbook.book."""
    offenders = [(module, target) for module, targets in _library_imports().items() for target in targets
                 if target.startswith(f"rsbook.{MACHINERY}") and not module.startswith(f"rsbook.{MACHINERY}")
                 and not (_room(module) in DOCUMENTS and module.endswith(".steps"))]
    assert offenders == []


def test_the_machinery_is_its_own_map():
    module = importlib.import_module(f"rsbook.{MACHINERY}")
    assert module.__doc__ and "never imports it" in module.__doc__
    for path in (LIBRARY / MACHINERY).glob("*.py"):
        if path.stem != "__init__":
            assert f"  {path.stem} " in module.__doc__, f"rsbook.{MACHINERY}'s docstring does not map {path.stem}"
