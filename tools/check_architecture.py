"""Fail CI when the house decays: import cycles, oversized files, modules without a docstring,
or a module that imports another stage's private (underscore) names.

Run as ``python tools/check_architecture.py``; exit 0 when clean, 1 with one line per problem.
Every import counts, also those inside functions: a lazy import hides a cycle, it does not remove it.
Only imports under ``if TYPE_CHECKING:`` are left out, since they never run.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "datasets", "models", "pipeline", "workflows", "configs", "pretrained")
OTHER_SOURCES = ("benchmarks", "tools", "tests")
MAX_LINES = 500


@dataclass(frozen=True)
class Module:
    name: str
    path: Path


def package_modules() -> list[Module]:
    """Every module of the distribution under its installed name (meteovision.<folder>.<...>)."""
    found = []
    for folder in PACKAGES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found.append(Module("meteovision." + ".".join(parts), path))
    return found


def _is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if _is_type_checking_block(node):
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def imported_names(module: Module, known: set[str]) -> tuple[set[str], list[tuple[str, str]]]:
    """The meteovision modules a module imports, and the (module, private name) pairs it takes."""
    tree = ast.parse(module.path.read_text(), filename=str(module.path))
    targets: set[str] = set()
    private: list[tuple[str, str]] = []
    for node in _imports(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names if alias.name in known)
            continue
        if node.module is None or not node.module.startswith("meteovision"):
            continue
        for alias in node.names:
            sub = f"{node.module}.{alias.name}"
            if sub in known:
                targets.add(sub)
            elif node.module in known:
                targets.add(node.module)
                if alias.name.startswith("_"):
                    private.append((node.module, alias.name))
    return targets, private


def stage_of(name: str) -> str:
    """meteovision.pipeline.inference.predict -> meteovision.pipeline.inference; other packages by folder."""
    parts = name.split(".")
    if parts[1] == "pipeline" and len(parts) > 3:
        return ".".join(parts[:3])
    return ".".join(parts[:2])


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each one import circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    cycles: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                cycles.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def problems() -> list[str]:
    modules = package_modules()
    known = {m.name for m in modules}
    graph: dict[str, set[str]] = {}
    found: list[str] = []
    for module in modules:
        targets, private = imported_names(module, known)
        # a package importing its own submodules is no circle; importing a parent package's __init__ is
        graph[module.name] = {t for t in targets if t != module.name}
        for source, name in private:
            if stage_of(source) != stage_of(module.name):
                found.append(f"{module.path.relative_to(ROOT)}: imports private {name} from {source}")
        if not ast.get_docstring(ast.parse(module.path.read_text())):
            found.append(f"{module.path.relative_to(ROOT)}: no module docstring saying its one job")
    for cycle in find_cycles(graph):
        found.append("import cycle: " + " <-> ".join(cycle))
    sources = [m.path for m in modules] + [p for d in OTHER_SOURCES for p in sorted((ROOT / d).rglob("*.py"))]
    for path in sources:
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES:
            found.append(f"{path.relative_to(ROOT)}: {lines} lines, over the {MAX_LINES}-line limit")
    return found


def main() -> int:
    found = problems()
    for line in found:
        print(line)
    print(f"architecture check: {len(found)} problem(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
