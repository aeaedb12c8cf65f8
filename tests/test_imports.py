"""No import cycles between lmforge's modules.

The graph is read from the source (AST), not from `sys.modules`, so it sees every import: module level,
inside functions, and under `if TYPE_CHECKING:` (a cycle a type checker or a later refactor trips over is
still a cycle). An edge goes to the module an import names:
- `import lmforge.a.b` -> lmforge.a.b;
- `from lmforge.a import b` -> lmforge.a.b if that is a module, else lmforge.a (b is a name in it);
- relative imports are resolved against the importing module's package;
- a package stands for its `__init__.py`, so `from lmforge.tokenizers import X` is an edge to the
  package's `__init__`. Python also runs the `__init__` of every parent package before a submodule; those
  implicit edges are NOT counted, or every package whose `__init__` re-exports its submodules would be a
  cycle. A submodule that imports a sibling *through its package* (`from lmforge.tokenizers import X`
  inside lmforge/tokenizers/) is a real cycle with that `__init__` and is reported.
- `lmforge.cli` loads its command modules by name (`importlib.import_module`); those edges are added
  from its `COMMAND_MODULES`. No other module imports lmforge modules by computed name.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import lmforge
from lmforge.cli import COMMAND_MODULES

SRC = Path(lmforge.__file__).parent

# Cycles that exist today outside the tokenizers and are being removed elsewhere. Each entry is one
# elementary cycle, written from its alphabetically smallest module. When a cycle is broken the test
# fails until its entry here is deleted too, so this list only shrinks.
KNOWN_CYCLES: set[tuple[str, ...]] = set()


def module_names(src: Path = SRC) -> dict[str, Path]:
    """Dotted name -> file of every module under src (a package's name -> its __init__.py)."""
    names = {}
    for path in sorted(src.rglob("*.py")):
        parts = ("lmforge", *path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def imported_modules(name: str, path: Path, modules: set[str]) -> Iterator[str]:
    """The lmforge modules `name` (in `path`) imports, anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "lmforge" or alias.name.startswith("lmforge."):
                    yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # from . import x / from ..a import x
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target != "lmforge" and not target.startswith("lmforge."):
                continue
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                yield submodule if submodule in modules else target


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """module -> the lmforge modules it imports (self-imports dropped)."""
    files = module_names(src)
    modules = set(files)
    graph = {name: set(imported_modules(name, path, modules)) - {name} for name, path in files.items()}
    graph["lmforge.cli"] |= {f"lmforge.cli.{name}" for name in COMMAND_MODULES}
    unknown = {m for targets in graph.values() for m in targets} - modules
    assert not unknown, f"imports of lmforge modules that do not exist: {sorted(unknown)}"
    return graph


def elementary_cycles(graph: dict[str, set[str]]) -> set[tuple[str, ...]]:
    """Every cycle that visits no module twice, each written from its smallest module.

    Example: {"a": {"b"}, "b": {"a", "c"}, "c": {"b"}} -> {("a", "b"), ("b", "c")}.
    A depth-first search from each start module s that only enters modules greater than s finds each
    cycle exactly once, from its smallest module. Exponential in the worst case; our graph is sparse.
    """
    cycles = set()
    for start in sorted(graph):
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        on_path = {start}
        while stack:
            node, successors = stack[-1]
            for successor in successors:
                if successor == start:
                    cycles.add(tuple(path))
                elif successor > start and successor not in on_path:
                    stack.append((successor, iter(sorted(graph[successor]))))
                    path.append(successor)
                    on_path.add(successor)
                    break
            else:
                stack.pop()
                on_path.discard(path.pop())
    return cycles


def format_cycle(cycle: tuple[str, ...]) -> str:
    return " -> ".join([*cycle, cycle[0]])


def test_elementary_cycles_on_a_small_graph():
    """a <-> b, b <-> c, and the triangle x -> y -> z -> x; d -> a is no cycle."""
    graph = {"a": {"b"}, "b": {"a", "c"}, "c": {"b"}, "d": {"a"}, "x": {"y"}, "y": {"z"}, "z": {"x"}}
    assert elementary_cycles(graph) == {("a", "b"), ("b", "c"), ("x", "y", "z")}


def test_import_resolution(tmp_path):
    """Relative imports, `from package import submodule`, names in a package, and function-level and
    TYPE_CHECKING imports all become edges."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (tmp_path / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("from lmforge.pkg.a import A\n")
    (pkg / "a.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from lmforge.pkg import b\n"
        "def f():\n    from .c import C\n"
    )
    (pkg / "b.py").write_text("from .. import pkg\nfrom lmforge import errors\n")
    (pkg / "c.py").write_text("import lmforge.pkg.a\nfrom lmforge.pkg import SOMETHING\n")
    (tmp_path / "errors.py").write_text("")
    files = module_names(tmp_path)
    edges = {name: set(imported_modules(name, path, set(files))) for name, path in files.items()}
    assert edges == {
        "lmforge": set(),
        "lmforge.errors": set(),
        "lmforge.pkg": {"lmforge.pkg.a"},
        "lmforge.pkg.a": {"lmforge.pkg.b", "lmforge.pkg.c"},
        "lmforge.pkg.b": {"lmforge.pkg", "lmforge.errors"},
        "lmforge.pkg.c": {"lmforge.pkg.a", "lmforge.pkg"},
    }


def test_no_import_cycles():
    cycles = elementary_cycles(import_graph())
    new = sorted(cycles - KNOWN_CYCLES)
    fixed = sorted(KNOWN_CYCLES - cycles)
    assert not new, "import cycles:\n" + "\n".join(map(format_cycle, new))
    assert not fixed, "KNOWN_CYCLES that are gone; delete them:\n" + "\n".join(map(format_cycle, fixed))


def test_nothing_inside_the_package_imports_its_front_file():
    """`lmforge/__init__.py` re-exports the high-level API (lazily); a module that imported it would put
    the front file mid-house, below modules it itself imports."""
    importers = sorted(name for name, targets in import_graph().items() if "lmforge" in targets)
    assert importers == [], f"import from the defining module instead: {importers}"
