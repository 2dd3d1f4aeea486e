"""No function or method of the package (python/rissole_trt and kernels/) is over 80 lines: a long
one is split into named stages. Parsed with ast, so nothing is imported."""
from __future__ import annotations

import ast
from pathlib import Path

from test_layers import PACKAGES

MAX_LINES = 80


def long_functions(source: str, limit: int = MAX_LINES) -> list[tuple[str, int, int]]:
    """``(name, first line, lines)`` of every function or method in ``source`` longer than ``limit``
    lines (from its ``def`` to its last line; decorators not counted)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            if lines > limit:
                out.append((node.name, node.lineno, lines))
    return out


def _files() -> dict[str, Path]:
    """Every module file of the package by its path from the package's parent folder."""
    return {f"{package.replace('.', '/')}/{file.relative_to(root).as_posix()}": file
            for package, root in PACKAGES.items() for file in sorted(root.rglob("*.py"))}


def test_no_function_over_80_lines():
    found = [f"{name}:{line} {function} has {lines} lines"
             for name, file in _files().items()
             for function, line, lines in long_functions(file.read_text())]
    assert found == []


def test_a_long_method_is_found():
    body = "".join(f"        x = {i}\n" for i in range(MAX_LINES))
    source = f"class A:\n    @staticmethod\n    def long():\n{body}\n    def short():\n        pass\n"
    assert long_functions(source) == [("long", 3, MAX_LINES + 1)]
