"""The package's shape: no import circle anywhere in kd_utils (imports inside functions included),
and no benchmarks inside the importable package."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "kd_utils"


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(PKG).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(["kd_utils", *parts])] = p
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """kd_utils modules that ``name`` imports, at any depth of its code."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from pkg import mod` imports the submodule; `from pkg import name` runs pkg's __init__
            candidates = [f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target for a in node.names]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        found.update(c for c in candidates if c in modules and c != name)
    return found


def test_no_import_circle_in_kd_utils():
    modules = _modules()
    # the package's __init__ re-exports everything; a module importing the package root is itself a circle
    graph = {m: _imports(m, p, modules) for m, p in modules.items()}
    importing_root = sorted(m for m, deps in graph.items() if "kd_utils" in deps)
    assert not importing_root, f"modules import the package root (a circle through kd_utils/__init__): {importing_root}"
    graph.pop("kd_utils")
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_no_module_imports_its_own_package():
    """Inside a subpackage (kd_utils.data, kd_utils.models, ...) modules import their siblings directly:
    the package's __init__ re-exports them, so importing it from one of them is a circle through it."""
    modules = _modules()
    packages = [m for m, p in modules.items() if p.name == "__init__.py" and m != "kd_utils"]
    assert "kd_utils.data" in packages
    bad = sorted(f"{m} imports {pkg}" for m, p in modules.items() for pkg in packages
                 if m.startswith(pkg + ".") and pkg in _imports(m, p, modules))
    assert not bad, f"modules import their own package's __init__: {bad}"


def test_benchmarks_live_outside_the_package():
    assert not (PKG / "bench").exists()
    assert (PKG.parent / "benchmarks" / "__main__.py").is_file()
