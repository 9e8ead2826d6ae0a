"""Names a hostile sender chooses (issue 27, items 10, 14, 16): formulas, control characters, very long names."""

from __future__ import annotations

import csv

import pytest

from edge_runtime.cli import main
from tests.helpers import synthetic, write_png


def run(*args) -> int:
    return main([str(a) for a in args])


@pytest.mark.parametrize("first", ["=", "+", "-", "@"])
def test_names_that_start_a_formula_are_quoted_in_the_run_summary(tmp_path, tiny_model, first):
    src, out = tmp_path / "in", tmp_path / "out"
    name = f"{first}HYPERLINK(1+1).png"
    write_png(src / name, synthetic(1, 80, 90)[0])
    assert run(src, "--out", out, "--model", tiny_model, "--report") == 0
    rows = list(csv.DictReader((out / "run-summary.csv").open()))
    assert [r["path"] for r in rows] == ["'" + name]
    assert rows[0]["status"] == "ok" and rows[0]["frames"] == "1"
