"""The lint step's import checks over towerrec's own modules (`make test` runs it):

* no cycle among module-level imports (a function-level import is a deliberate late one);
* no production module imports the tests' helpers (`tests.*`, `towerrec.testing`), not
  even inside a function;
* no folder of the package holds more than MAX_FOLDER_SHARE of its lines (a flat list of
  every step is what the package layout is there to avoid).

Prints each folder's share of the code. Exits 1 with what is wrong.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Dict, List, Set

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "towerrec"
MAX_FOLDER_SHARE = 0.35


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(tree: ast.Module, name: str, is_package: bool) -> Set[str]:
    """Modules a module imports at its top level (not inside functions or classes)."""
    found: Set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[:len(package) - node.level + 1]
                base = ".".join(package + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def graph() -> Dict[str, Set[str]]:
    paths = sorted((ROOT / PACKAGE).rglob("*.py"))
    modules = {module_name(p): p for p in paths}
    edges: Dict[str, Set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        targets = imported(tree, name, path.name == "__init__.py")
        edges[name] = {t for t in targets if t in modules and t != name}
    return edges


def cycles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in edges.get(node, ()):
            if other not in edges:
                continue
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


TEST_HELPERS = ("tests", "towerrec.testing")


def test_helpers_imported(tree: ast.Module) -> Set[str]:
    """The test helper modules a module imports anywhere (a late import too)."""
    names: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return {n for n in names if any(n == h or n.startswith(h + ".") for h in TEST_HELPERS)}


def main() -> int:
    edges = graph()
    problems = [f"import cycle: {' <-> '.join(c)}" for c in cycles(edges)]
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        name = module_name(path)
        if name in TEST_HELPERS:
            continue
        helpers = test_helpers_imported(ast.parse(path.read_text(), str(path)))
        problems += [f"{name} imports the test helpers' {h}" for h in sorted(helpers)]
    lines = {p: len(p.read_text().splitlines()) for p in (ROOT / PACKAGE).rglob("*.py")}
    total = sum(lines.values())
    shares = {}
    for path, count in lines.items():
        folder = str(path.parent.relative_to(ROOT))
        shares[folder] = shares.get(folder, 0) + count
    print("code by folder: " + ", ".join(f"{f} {n / total:.0%}" for f, n in
                                         sorted(shares.items(), key=lambda x: -x[1])))
    problems += [f"{folder} holds {n / total:.0%} of the code (at most "
                 f"{MAX_FOLDER_SHARE:.0%}): split it by concept"
                 for folder, n in sorted(shares.items()) if n / total > MAX_FOLDER_SHARE]
    for problem in problems:
        print(problem, file=sys.stderr)
    verdict = ("no cycle, no test helper in production code, no folder over "
               f"{MAX_FOLDER_SHARE:.0%}") if not problems else "FAILED"
    print(f"imports: {len(edges)} modules, {verdict}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
