"""The package reads as the pipeline, one way down: every module imports, no import cycle, no upward import.

The import graph is built statically with ``ast`` from every ``import`` statement in every module (function-local
imports included: a lazy import is still a dependency), resolved to modules of this package.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import cloudrt

ROOT = Path(cloudrt.__file__).resolve().parent
# Layers, lowest first: a module may import its own package and anything in a lower layer, nothing above.
LAYERS: dict[str, int] = {
    "_version": 0, "_deps": 0, "errors": 0, "paths": 0, "fileutil": 0, "contract": 0, "devices": 0,
    "preprocess": 1,
    "scene": 2,
    "runtime": 3,
    "model": 4,
    "train": 5,
    "export": 6,
    "bench": 7, "distributed": 7,
    "cli": 8,
    "": 9,  # cloudrt/__init__.py: the facade
}
ENTRY_POINTS = ("__main__",)  # ``python -m cloudrt.x`` shims call the CLI from anywhere; not library code


def _modules() -> dict[str, Path]:
    mods = {"cloudrt": ROOT / "__init__.py"}
    for info in pkgutil.walk_packages([str(ROOT)], prefix="cloudrt."):
        rel = info.name.split(".")[1:]
        path = ROOT.joinpath(*rel)
        mods[info.name] = path / "__init__.py" if info.ispkg else path.with_suffix(".py")
    return mods


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The module of this package that ``name`` refers to (a submodule, else its package), or None."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(mod: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found = [_resolve(a.name) for a in node.names if a.name.split(".")[0] == "cloudrt"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "cloudrt":
                continue
            # ``from pkg import name``: the submodule pkg.name when there is one, else pkg itself
            found = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else _resolve(base) for a in node.names]
        else:
            continue
        out |= {f for f in found if f and f != mod}
    return out


GRAPH = {m: _imports(m, p) for m, p in MODULES.items() if m.rpartition(".")[2] not in ENTRY_POINTS}


def _layer(mod: str) -> tuple[str, int]:
    top = mod.split(".")[1] if "." in mod else ""
    if top not in LAYERS:
        raise AssertionError(f"{mod}: top-level module {top!r} has no layer in tests/test_layout.py; add it")
    return top, LAYERS[top]


@pytest.mark.parametrize("mod", sorted(MODULES))
def test_every_module_imports(mod: str) -> None:
    heavy = ("torch", "onnx", "onnxruntime", "tensorrt", "kornia", "onnxslim", "onnxconverter_common")
    try:
        importlib.import_module(mod)
    except ModuleNotFoundError as e:  # an optional extra that is not installed here
        if (e.name or "").split(".")[0] not in heavy:
            raise
        pytest.skip(f"{mod} needs {e.name}")


def test_no_import_cycle() -> None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(GRAPH.get(m, ())):
            if state.get(d) == 1:
                cycle = stack[stack.index(d):] + [d]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)


def test_imports_go_one_way_down() -> None:
    bad = []
    for mod, deps in GRAPH.items():
        top, level = _layer(mod)
        for d in deps:
            dtop, dlevel = _layer(d)
            if dtop != top and (dlevel > level or (dlevel == level and level != 0)):  # leaf utilities: a flat set
                bad.append(f"{mod} -> {d}")
    assert not bad, "imports against the layer order (docs/architecture.md): " + ", ".join(sorted(bad))


def test_the_graph_is_not_empty() -> None:
    """The checks above see real edges (guards against a resolver that finds nothing)."""
    assert "cloudrt.scene.io" in GRAPH["cloudrt.scene.sources"]
    assert "cloudrt.runtime.trt_meta" in GRAPH["cloudrt.export.tensorrt"]
    assert "cloudrt.contract" in GRAPH["cloudrt.preprocess.normalize"]
