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


def test_a_name_with_a_newline_cannot_forge_another_scans_error_record(tmp_path, tiny_model, capfd):
    from edge_runtime.outputs.page import ReviewPage

    src, out = tmp_path / "in", tmp_path / "out"
    write_png(src / "victim.png", synthetic(2, 80, 90)[0])
    forged = "zzz\nscan: victim.png"
    (src / forged).write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    (src / "esc\x1b[2J.png").write_bytes(b"")
    assert run(src, "--out", out, "--model", tiny_model, "--report") == 1
    cards = {c.rel: c for c in ReviewPage(out).collect()}
    assert set(cards) == {"victim.png", forged, "esc\x1b[2J.png"}
    assert "failed" not in cards["victim.png"].flags
    assert "failed" in cards[forged].flags and "failed" in cards["esc\x1b[2J.png"].flags
    record = (out / (forged + ".error.txt")).read_text()
    assert record.startswith("scan: zzz\\nscan: victim.png\nreason: ")
    err = capfd.readouterr().err
    # every log line stays one line: the name's newline and escape sequence are shown escaped
    assert "FAIL zzz\\nscan: victim.png: " in err and "FAIL esc\\x1b[2J.png: empty file" in err
    assert "\x1b" not in err and not any(line.startswith("scan: victim.png") for line in err.splitlines())


def test_library_lines_and_warnings_are_one_line_each_naming_the_scan_without_a_traceback(tmp_path, capfd):
    import logging
    import warnings

    from edge_runtime.console import setup_logging
    from edge_runtime.errors import reading_scan

    setup_logging(quiet=True)
    try:
        with reading_scan("a/scan.dcm"):
            try:
                raise ValueError("bad\nframe")
            except ValueError:
                logging.getLogger("pydicom").exception("cannot decode")
            for _ in range(3):  # the same line once, not three times
                logging.getLogger("pynetdicom.dul").error("The received PDU is shorter than expected")
        warnings.warn("stray\nwarning", UserWarning, stacklevel=1)
    finally:
        root = logging.getLogger()
        for handler in [h for h in root.handlers if getattr(h, "edge_seg", False)]:
            root.removeHandler(handler)
    err = capfd.readouterr().err
    lines = err.splitlines()
    assert "error: a/scan.dcm: cannot decode" in lines
    assert lines.count("error: a/scan.dcm: The received PDU is shorter than expected") == 1
    assert "warning: UserWarning: stray\\nwarning" in lines
    assert "Traceback" not in err and len(lines) == 3


def test_names_too_long_for_a_temporary_name_are_written_and_their_error_record_too(tmp_path, tiny_model, capfd):
    from edge_runtime.outputs.page import ReviewPage

    src, out = tmp_path / "in", tmp_path / "out"
    good, bad = "g" * 246 + ".png", "b" * 246 + ".png"  # 250 bytes: the mask fits, "<name>.error.txt" does not
    write_png(src / good, synthetic(3, 80, 90)[0])
    (src / bad).write_bytes(b"\x89PNG\r\n\x1a\n cut")
    assert run(src, "--out", out, "--model", tiny_model, "--report") == 1
    err = capfd.readouterr().err
    assert "File name too long" not in err
    assert (out / ("g" * 246 + ".png")).is_file()
    records = list(out.glob("*.error.txt"))
    assert len(records) == 1 and len(records[0].name.encode()) <= 255
    assert records[0].read_text().startswith(f"scan: {bad}\nreason: ")
    cards = {c.rel: c for c in ReviewPage(out).collect()}
    assert set(cards) == {good, bad} and "failed" in cards[bad].flags and "failed" not in cards[good].flags
    assert not list(out.rglob(".*.tmp"))
