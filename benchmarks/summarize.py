"""Write each curated results summary's tables as JSON: ``summary.md`` -> ``summary.json`` beside it.

A summary (``benchmarks/results/MACHINE/summary.md``) is the record the docs quote: a ``#`` title,
then per table a ``##`` heading, ``Hardware:`` and ``Command:`` lines and a Markdown table. The JSON
holds the same numbers for programs: per table its heading, hardware, command and rows (column ->
cell; a cell that is one number, after dropping bold and a trailing ``×`` or ``%``, becomes that
number). ``tests/test_docs.py`` checks that every summary.json is what this script makes of its .md.

Usage: python benchmarks/summarize.py [SUMMARY.md ...]   (default: every benchmarks/results/*/summary.md)
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
NUMBER = re.compile(r"^-?\d+(\.\d+)?$")


def _cell(text: str) -> str | float:
    plain = text.replace("**", "").strip()
    bare = plain.rstrip("×%").strip()
    return float(bare) if NUMBER.match(bare) else plain


def _row(line: str) -> list[str]:
    return [part.strip() for part in line.strip().strip("|").split("|")]


def summarize(markdown: str) -> dict:
    """The JSON form of one summary.md."""
    lines = markdown.splitlines()
    summary = {"title": lines[0].lstrip("# ").strip(), "tables": []}
    table = None
    for line in lines[1:]:
        if line.startswith("## "):
            table = {"heading": line[3:].strip(), "hardware": None, "command": None, "rows": []}
            summary["tables"].append(table)
        elif table is None:
            continue
        elif line.startswith(("Hardware: ", "Command: ")):
            key, _, value = line.partition(": ")
            table[key.lower()] = value.strip()
        elif line.startswith("|") and "columns" not in table:
            table["columns"] = _row(line)
        elif line.startswith("|") and not set(line) <= set("|-: "):
            table["rows"].append(dict(zip(table["columns"], map(_cell, _row(line)))))
    return summary


def render(path: Path) -> str:
    return json.dumps(summarize(path.read_text()), indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    for path in [Path(a) for a in argv] or sorted(RESULTS.glob("*/summary.md")):
        out = path.with_suffix(".json")
        out.write_text(render(path))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
