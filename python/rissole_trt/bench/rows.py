"""A benchmark's report written row by row, so a run stopped by its time limit keeps what it measured.

The GPU check (``scripts/gpu_check.sh``) gives every stage a time limit; a script that wrote its
results only at the end would lose all of them to a limit hit in its last row. :class:`RowWriter`
rewrites the JSON (the report's fields and its rows so far) and, optionally, a markdown rendering
after every row, each atomically (:mod:`rissole_trt.atomic`): a reader never sees half a file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from ..atomic import write_text
from .report import write_json

__all__ = ["RowWriter"]


class RowWriter:
    """``report`` (a dict whose ``"rows"`` list grows) saved to ``json_path`` after every change, and
    ``render(report)`` to ``markdown_path`` when both are given. ``json_path=None`` writes nothing."""

    def __init__(self, json_path: str | os.PathLike | None, report: dict, *,
                 markdown_path: str | os.PathLike | None = None,
                 render: Callable[[dict], str] | None = None) -> None:
        self.json_path = None if json_path is None else Path(json_path)
        self.markdown_path = None if markdown_path is None else Path(markdown_path)
        self.render = render
        self.report = {**report, "rows": list(report.get("rows", ())), "complete": False}
        self._write()

    def add(self, row: dict) -> dict:
        """Append ``row`` and save; returns it."""
        self.report["rows"].append(row)
        self._write()
        return row

    def update(self, **fields) -> None:
        """Set report fields (not rows) and save."""
        self.report.update(fields)
        self._write()

    def finish(self, **fields) -> dict:
        """The last fields; marks the report complete (a stopped run's file says ``"complete": false``)."""
        self.update(**fields, complete=True)
        return self.report

    def _write(self) -> None:
        if self.json_path is not None:
            write_json(self.report, self.json_path)
        if self.markdown_path is not None and self.render is not None:
            write_text(self.markdown_path, self.render(self.report))
