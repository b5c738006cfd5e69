"""The package's layout rules: no import circle among ``reft`` modules, no module over ``MAX_LINES`` lines.

Imports are read with ``ast`` from every ``reft/**/*.py`` (nothing is imported). An edge ``a -> b`` is a
runtime import of ``reft`` module ``b`` in ``a``; imports under ``if TYPE_CHECKING:`` are annotations
only and are not followed. Run ``python scripts/check_layout.py`` (exit 1 on a violation, with the
circle or the long module named); ``tests/test_layout.py`` runs the same functions.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "reft"
MAX_LINES = 420  # "about 400": one idea per module, readable in one sitting


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package, by dotted name."""
    return {module_name(p, package.parent): p for p in sorted(package.rglob("*.py"))}


def _runtime_nodes(tree: ast.AST):
    """Every node, skipping the bodies of ``if TYPE_CHECKING:`` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def imports(path: Path, known: set[str], name: str) -> set[str]:
    """The ``reft`` modules that ``path`` (module ``name``) imports at run time."""
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            for a in node.names:
                full = f"{base}.{a.name}"
                if full in known:
                    out.add(full)
                elif base in known:
                    out.add(base)
    out.discard(name)
    return out


def graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    mods = modules(package)
    return {name: imports(path, set(mods), name) for name, path in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Import circles (one per strongly connected component with more than one module, or a self-loop)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in g.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def long_modules(package: Path = PACKAGE, limit: int = MAX_LINES) -> dict[str, int]:
    return {n: c for n, p in modules(package).items() if (c := len(p.read_text().splitlines())) > limit}


def main() -> int:
    g = graph()
    for name in sorted(g):
        print(f"{name:32} -> {', '.join(sorted(g[name])) or '-'}")
    bad = cycles(g)
    long = long_modules()
    for c in bad:
        print(f"import circle: {' <-> '.join(c)}")
    for n, c in long.items():
        print(f"too long: {n} has {c} lines (limit {MAX_LINES})")
    print(f"{len(g)} modules, {len(bad)} import circles, {len(long)} modules over {MAX_LINES} lines")
    return 1 if bad or long else 0


if __name__ == "__main__":
    sys.exit(main())
