"""The package stack is one-way: an import may only go down the declared layers (docs/architecture.md).

The graph comes from the source's AST, so a function-local import counts as much as a module-level one:
hiding an upward import inside a function is how the cycles this test guards against used to creep in.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "bitdistill"

# Lowest first. A package may import its own layer's modules and any layer below, never one above.
LAYERS: list[set[str]] = [
    # Torch-free foundations. The `bitdistill` facade (__init__) imports only errors and _lazy; its public
    # names load their modules on first use, which is no import edge.
    {"__init__", "errors", "_lazy", "_fs", "_threads", "_spread", "_peak_rss", "env", "config"},
    {"quant"},
    {"model"},
    {"data"},
    {"distill"},
    {"train"},
    {"runtime"},
    {"export"},
    {"bench"},
    {"eval"},
    {"pipeline"},
    {"report"},
    {"serve"},
    {"cli"},
]

# Upward edges still present, each with the reason it is not fixed yet. The end state is an empty list.
ALLOWED_UPWARD: set[tuple[str, str]] = set()


def layer_of(package: str) -> int:
    for i, names in enumerate(LAYERS):
        if package in names:
            return i
    raise AssertionError(f"bitdistill.{package} is in no layer of tests/test_architecture.py: declare it")


def module_name(path: Path, root: Path = SRC) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str, root: Path = SRC) -> bool:
    rel = root.parent / Path(*name.split("."))
    return rel.with_suffix(".py").is_file() or (rel / "__init__.py").is_file()


def imports_of(path: Path, root: Path = SRC) -> set[str]:
    """Every bitdistill module `path` imports, at any depth of its code (relative imports resolved)."""
    this = module_name(path, root)
    package = this.split(".") if path.name == "__init__.py" else this.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package[: len(package) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            for alias in node.names:  # `from .. import model` imports the module bitdistill.model
                sub = f"{base}.{alias.name}"
                found.add(sub if is_module(sub, root) else base)
    # A module that is not in the tree is another checkout's (the bench worker's fallbacks for old layouts).
    return {m for m in found if (m == "bitdistill" or m.startswith("bitdistill.")) and is_module(m, root)}


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def package_edges() -> dict[tuple[str, str], list[str]]:
    """(importing package, imported package) -> the module-level imports that make the edge."""
    edges: dict[tuple[str, str], list[str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        src = module_name(path)
        for dst in imports_of(path):
            a, b = package_of(src), package_of(dst)
            if a != b:
                edges.setdefault((a, b), []).append(f"{src} -> {dst}")
    return edges


def test_graph_sees_function_local_and_relative_imports(tmp_path):
    """The parser itself, on a made-up package: hidden, relative and submodule imports all resolve."""
    root = tmp_path / "bitdistill"
    for name in ("a/__init__.py", "a/b.py", "c/__init__.py", "c/d.py", "e.py"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("")
    (root / "a" / "b.py").write_text(
        "import os\nfrom .. import e\nfrom ..c import d\n"
        "def f():\n    from ..c import thing\n    import bitdistill.e\n"
    )
    assert imports_of(root / "a" / "b.py", root) == {"bitdistill.e", "bitdistill.c.d", "bitdistill.c"}
    (root / "a" / "__init__.py").write_text("from .b import f\nfrom ..c.d import g\n")
    assert imports_of(root / "a" / "__init__.py", root) == {"bitdistill.a.b", "bitdistill.c.d"}


def test_every_package_is_declared():
    for path in SRC.iterdir():
        name = path.stem if path.suffix == ".py" else path.name
        if path.is_dir() and not (path / "__init__.py").is_file():
            continue
        if path.suffix == ".py" or path.is_dir():
            layer_of(name)


def test_no_import_runs_up_the_stack():
    upward = {
        edge: via
        for edge, via in package_edges().items()
        if layer_of(edge[1]) > layer_of(edge[0]) and edge not in ALLOWED_UPWARD
    }
    assert not upward, "imports that run up the stack:\n" + "\n".join(
        f"{a} -> {b}: {', '.join(via)}" for (a, b), via in sorted(upward.items())
    )


def test_no_cycle_between_packages():
    edges = {edge for edge in package_edges() if edge not in ALLOWED_UPWARD}
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and (seen.add(nxt) or reaches(nxt, goal, seen))):
                return True
        return False

    cyclic = sorted(a for a in graph if reaches(a, a, set()))
    assert not cyclic, f"packages on an import cycle: {cyclic}"


def test_allow_list_has_no_stale_entries():
    """An allowed edge that no longer exists must leave the list, so the list only shrinks."""
    stale = ALLOWED_UPWARD - set(package_edges())
    assert not stale, f"remove from ALLOWED_UPWARD: {sorted(stale)}"


@pytest.mark.parametrize("module", ["bitdistill.config", "bitdistill.env", "bitdistill.errors"])
def test_config_imports_no_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"], f"importing {module} loads torch/transformers: {out}"


MAX_FUNCTION_LINES = 80
# Longer functions still present, with the reason; like ALLOWED_UPWARD, this list only shrinks.
LONG_FUNCTIONS: set[tuple[str, str]] = set()


def long_functions() -> set[tuple[str, str]]:
    found = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                    found.add((path.relative_to(SRC).as_posix(), node.name))
    return found


def test_no_function_is_longer_than_80_lines():
    found = long_functions()
    assert not found - LONG_FUNCTIONS, f"functions over {MAX_FUNCTION_LINES} lines: {sorted(found - LONG_FUNCTIONS)}"
    assert not LONG_FUNCTIONS - found, f"remove from LONG_FUNCTIONS: {sorted(LONG_FUNCTIONS - found)}"
