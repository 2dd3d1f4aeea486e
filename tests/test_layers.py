"""The package's layer order: no module imports (at the top or inside a function) from a layer
above its own. Parsed with ast, so nothing is imported. The order is documented in
docs/architecture.md ("Layers")."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"rissole_trt": ROOT / "python" / "rissole_trt", "rissole_trt.kernels": ROOT / "kernels"}

#: Lowest first; a module may import from its own layer and those before it. A module not named
#: here takes its top-level package's layer (``rissole_trt.bench.run`` -> ``rissole_trt.bench``).
LAYERS = (
    ("rissole_trt.errors", "rissole_trt.atomic", "rissole_trt.outputs", "rissole_trt.disk", "rissole_trt.memory",
     "rissole_trt.formats", "rissole_trt.tolerances", "rissole_trt.defaults", "rissole_trt.platform",
     "rissole_trt.timing", "rissole_trt._C"),
    ("rissole_trt.ops", "rissole_trt.windows", "rissole_trt.images", "rissole_trt.kernels"),
    ("rissole_trt.config", "rissole_trt.presets", "rissole_trt.models", "rissole_trt.diffusion"),
    ("rissole_trt.retrieval", "rissole_trt.builder"),
    ("rissole_trt.runtime",),
    ("rissole_trt.engine",),
    ("rissole_trt.bench", "rissole_trt.train", "rissole_trt.evaluation", "rissole_trt.distributed"),
    ("rissole_trt.info", "rissole_trt.commands", "rissole_trt.cli", "rissole_trt"),
)
_RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def layer(module: str) -> int:
    """The layer of a dotted module name: its longest prefix in :data:`LAYERS`."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in _RANK:
            return _RANK[prefix]
    raise KeyError(module)


def modules() -> dict[str, Path]:
    """Every module of the package by its dotted name."""
    out = {}
    for package, root in PACKAGES.items():
        for file in root.rglob("*.py"):
            parts = list(file.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([package, *parts])] = file
    return out


def _running(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` that runs: all but the bodies of ``if TYPE_CHECKING:`` (annotations only)."""
    out, stack = [], [tree]
    while stack:
        node = stack.pop()
        out.append(node)
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))
    return out


def imports(name: str, file: Path, known: set[str]) -> set[str]:
    """The rissole_trt modules ``file`` imports where it runs, at the top or inside a function
    (relative imports resolved; ``from a import b`` counts as ``a.b`` where that is a module)."""
    package = name if file.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _running(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
    return {m for m in found if m == "rissole_trt" or m.startswith("rissole_trt.")}


def violations() -> list[str]:
    out, table = [], modules()
    known = set(table) | {"rissole_trt._C"}  # the compiled core
    for name, file in sorted(table.items()):
        for target in sorted(imports(name, file, known)):
            # the package itself: its __init__ is a lazy facade (the version, errors, info)
            if target != "rissole_trt" and layer(target) > layer(name):
                out.append(f"{name} (layer {layer(name)}) imports {target} (layer {layer(target)})")
    return out


def test_every_module_has_a_layer():
    """Named in :data:`LAYERS` itself or through its package: a new top-level module must be placed."""
    for name in modules():
        layer(name)
        top = ".".join(name.split(".")[:2])
        assert name == "rissole_trt" or top in _RANK, \
            f"{name} is in no layer: add it (or its package) to LAYERS"


def test_no_import_from_a_higher_layer():
    assert violations() == []


def test_a_lazy_import_from_a_higher_layer_is_found(tmp_path):
    module = tmp_path / "ops.py"
    module.write_text("from typing import TYPE_CHECKING\n"
                      "if TYPE_CHECKING:\n    from .engine import Engine\n"
                      "def f():\n    from .runtime import registry\n    from . import timing\n")
    found = imports("rissole_trt.ops", module, set(modules()))
    assert found == {"rissole_trt.runtime.registry", "rissole_trt.timing"}
    assert [layer(m) > layer("rissole_trt.ops") for m in sorted(found)] == [True, False]
