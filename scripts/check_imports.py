#!/usr/bin/env python3
"""Check the package's imports: no cycle among its modules, and no module importing another's private name.

Every import of a `pvtbuild` module counts, at the top of a module or inside a function (an import
inside a function can hide a cycle, which is how `train/` once had one), except those under
`if TYPE_CHECKING:`, which never run. `from pvtbuild.a import b` depends on `pvtbuild.a.b` when that
is a module, else on `pvtbuild.a` (a name it defines or re-exports).

    python scripts/check_imports.py          # exit 1 and one line per problem, else a one-line summary
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "pvtbuild"
SRC = Path(__file__).resolve().parents[1] / "src"


@dataclass(frozen=True)
class Import:
    """One import of a package module: who imports, what, the names taken from it, where."""

    importer: str
    module: str
    names: tuple[str, ...]
    line: int


def module_names(src: Path = SRC) -> dict[str, Path]:
    """Every module of the package by its dotted name (a package by its own name, for its `__init__`)."""
    out = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _type_checking_lines(tree: ast.Module) -> set[int]:
    """Line numbers inside `if TYPE_CHECKING:` blocks."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """The package imports that module `name` (file `path`) makes."""
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_lines(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [Import(name, a.name, (), node.lineno) for a in node.names if a.name.split(".")[0] == PACKAGE]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importer's package
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if base.split(".")[0] != PACKAGE:
                continue
            names = tuple(a.name for a in node.names)
            submodules = [n for n in names if f"{base}.{n}" in modules]
            out += [Import(name, f"{base}.{n}", (), node.lineno) for n in submodules]
            rest = tuple(n for n in names if n not in submodules)
            if rest:
                out.append(Import(name, base, rest, node.lineno))
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (or a module importing itself): Tarjan."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def problems(src: Path = SRC) -> list[str]:
    """One line per cycle and per private name imported from another module."""
    modules = module_names(src)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    lines = []
    for name, path in modules.items():
        for imp in imports_of(name, path, modules):
            if imp.module != name:
                graph[name].add(imp.module)
            for n in imp.names:
                if n.startswith("_") and imp.module != name:
                    lines.append(f"{path.relative_to(src.parent)}:{imp.line}: imports private `{n}` from {imp.module}")
    for component in cycles(graph):
        lines.append("import cycle: " + " -> ".join(component))
    return lines


def main() -> None:
    found = problems()
    if found:
        print("\n".join(found))
        sys.exit(1)
    print(f"imports: {len(module_names())} modules, no cycle, no private name imported across modules")


if __name__ == "__main__":
    main()
