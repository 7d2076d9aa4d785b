"""No import cycle in the package, counting imports inside functions and type-checking blocks."""

from __future__ import annotations

import ast
from pathlib import Path

import conscience

ROOT = Path(conscience.__file__).parent


def module_names() -> dict[str, Path]:
    names = {}
    for path in ROOT.rglob("*.py"):
        parts = ("conscience",) + path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of this package that ``name`` imports anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in known:
                    found.add(sub)
                elif target in known:
                    found.add(target)
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    names = module_names()
    return {name: imports_of(name, path, set(names)) for name, path in names.items()}


def cycle_through(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """A path start -> ... -> start, if there is one."""
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for nxt in graph.get(node, ()):
            if nxt == start:
                return path + [start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, path + [nxt]))
    return None


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    assert "conscience.verdict.calibration" in graph["conscience.verdict.factory"]  # imported on first use only
    assert "conscience.discernment" in graph["conscience.verdict.latent_fit"]


def test_no_import_cycle_through_the_verdict_package():
    graph = import_graph()
    verdict_modules = sorted(n for n in graph if n == "conscience.verdict" or n.startswith("conscience.verdict."))
    assert len(verdict_modules) >= 10
    cycles = [c for c in (cycle_through(graph, m) for m in verdict_modules) if c]
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_import_cycle_anywhere_in_the_package():
    graph = import_graph()
    assert len(graph) >= 60
    cycles = [c for c in (cycle_through(graph, m) for m in sorted(graph)) if c]
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_models_and_the_tiny_model_do_not_import_each_other():
    graph = import_graph()
    assert "conscience.tiny_model" in graph["conscience.models"]
    assert "conscience.models" not in graph["conscience.tiny_model"]


def package_of(module: str) -> str:
    """The unit layers are drawn in: a subpackage (``conscience.verdict``) or a top-level module
    (``conscience.config``)."""
    return ".".join(module.split(".")[:2])


def test_no_cycle_between_packages():
    graph = import_graph()
    packages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        packages.setdefault(package_of(module), set()).update(
            package_of(t) for t in targets if package_of(t) != package_of(module))
    assert {"conscience.config", "conscience.verdict", "conscience.training", "conscience.evaluation"} <= set(packages)
    cycles = [c for c in (cycle_through(packages, p) for p in sorted(packages)) if c]
    assert not cycles, "package-level import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
