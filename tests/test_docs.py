"""The documentation's links resolve, the curated result summaries match their JSON, and no large
file is tracked outside the shipped assets and fixtures."""
from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md",
         ROOT / "scripts" / "experiments" / "README.md", *sorted((ROOT / "benchmarks" / "results").glob("*/summary.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)
FENCE = re.compile(r"^\s*```.*?^\s*```", re.S | re.M)


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {_anchor(line.lstrip("#")) for line in text.splitlines() if re.match(r"^#{1,6} ", line)}


def _links(page: Path) -> list[str]:
    return LINK.findall(FENCE.sub("", page.read_text()))


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_every_relative_link_resolves_to_a_file_and_its_anchor(page):
    broken = []
    for target in _links(page):
        if re.match(r"^[a-z]+:", target):  # https:, mailto: — not checked offline
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_pages_link_to_each_other():
    readme = set(_links(ROOT / "README.md"))
    for name in ("architecture", "engines", "performance", "quality", "distributed", "verification"):
        assert f"docs/{name}.md" in readme, name
    assert "docs/assets/default-grid.png" in readme


def test_the_anchor_rule_follows_github():
    assert _anchor("The paper's comparisons at matched size and budget") == \
        "the-papers-comparisons-at-matched-size-and-budget"
    assert _anchor("Metrics (`rissole-trt eval`)") == "metrics-rissole-trt-eval"


def _summarize():
    spec = importlib.util.spec_from_file_location("summarize", ROOT / "benchmarks" / "summarize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SUMMARIES = sorted((ROOT / "benchmarks" / "results").glob("*/summary.md"))


@pytest.mark.parametrize("summary", SUMMARIES, ids=[p.parent.name for p in SUMMARIES])
def test_each_results_summary_json_is_made_from_its_markdown(summary):
    summarize = _summarize()
    assert summary.with_suffix(".json").read_text() == summarize.render(summary), \
        "run python benchmarks/summarize.py"
    tables = summarize.summarize(summary.read_text())["tables"]
    assert tables and all(t["hardware"] and t["command"] and t["rows"] for t in tables)


def test_summarize_reads_numbers_and_keeps_text():
    table = "# M\n\n## T\n\nHardware: h\nCommand: c\n\n| a | b | c |\n|---|---:|---:|\n| x | **2.02×** | 57% |\n"
    summary = _summarize().summarize(table)
    assert summary["tables"][0]["rows"] == [{"a": "x", "b": 2.02, "c": 57.0}]


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
def test_no_large_file_is_tracked_outside_the_assets_and_fixtures():
    result = subprocess.run(["bash", str(ROOT / "scripts" / "check_repo_size.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
