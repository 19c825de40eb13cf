"""The documentation's result tables are what their results.json produce, and no page types a results table by hand."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("render_docs", ROOT / "benchmarks" / "render_docs.py")
render_docs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(render_docs)
EXPECTED = render_docs.expected_pages()


@pytest.mark.parametrize("path", sorted(EXPECTED), ids=lambda p: str(p.relative_to(ROOT)))
def test_generated_page_equals_what_its_json_produces(path):
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing: run python benchmarks/render_docs.py"
    assert path.read_text() == EXPECTED[path], f"{path.relative_to(ROOT)} is stale: run python benchmarks/render_docs.py"


def test_every_results_file_has_a_page_and_no_page_is_orphaned():
    files = {d.name for d in (ROOT / "benchmarks" / "results").iterdir() if (d / "results.json").is_file()}
    pages = {p.stem for p in (ROOT / "docs" / "results").glob("*.md")} - {"index"}
    assert files == pages


def test_no_results_table_is_typed_by_hand():
    """A table row with a mean ± std outside the generated pages is a results table typed by hand: include the
    generated tables (--8<-- "docs/results/X.md:tables") or read a figure with render_docs.figure instead."""
    hand = [p for p in (ROOT / "docs").rglob("*.md") if p not in EXPECTED]
    typed = [f"{p.relative_to(ROOT)}: {line[:80]}" for p in hand for line in p.read_text().splitlines()
             if line.startswith("|") and "±" in line]
    assert not typed, "\n".join(typed)


def test_means_and_sample_stds_of_per_seed_lists():
    assert render_docs.fmt([0.8784, 0.8835, 0.8471]) == "0.870 ± 0.020"
    assert render_docs.fmt([12.0, 14.0]) == "13.0 ± 1.4"
    assert render_docs.fmt([0.5, 0.1], pair=True) == "0.500 ± 0.100"
    table = render_docs._pipe_table({"a|x|no_ft": [0.1, 0.3], "a|x|recal": [0.5], "b|x|no_ft": [0.2, 0.2]},
                                    ["scope", "sparsity"], False)
    assert table[0] == "| scope | sparsity | no fine-tuning | BN-recalibrated |"
    assert table[2:4] == ["| a | x | 0.200 ± 0.141 | 0.500 |", "| b | x | 0.200 ± 0.000 | – |"]


def test_method_pages_include_tables_that_exist():
    for page in (ROOT / "docs" / "methods").glob("*.md"):
        for target, section in re.findall(r'--8<-- "([^":]+)(?::(\w+))?"', page.read_text()):
            text = (ROOT / target).read_text()
            assert not section or f"[start:{section}]" in text, f"{page.name} includes a missing section of {target}"
