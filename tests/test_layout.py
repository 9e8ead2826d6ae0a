"""edge_runtime.outputs.layout (contract 4): where each output of a scan goes under OUT."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_runtime.core.thresholds import threshold_label
from edge_runtime.outputs.layout import (
    error_path,
    output_path,
    overlay_path,
    relative,
    report_path,
    scan_stem,
)

OUT = Path("/o")


def test_one_threshold_writes_beside_the_relative_path_with_a_png_suffix():
    assert output_path(OUT, "a/b/scan.jpg", 0.5, (0.5,)) == OUT / "a" / "b" / "scan.png"
    assert output_path(OUT, "scan.PNG", 0.5, (0.5,)) == OUT / "scan.png"


def test_several_thresholds_get_a_folder_each_named_by_its_label():
    thresholds = (0.5, 0.85, 0.9)
    assert output_path(OUT, "a/scan.png", 0.85, thresholds) == OUT / "0.85" / "a" / "scan.png"
    assert output_path(OUT, "a/scan.png", 0.9, thresholds) == OUT / "0.9" / "a" / "scan.png"
    assert [threshold_label(t) for t in (0.9, 0.85, 0.5, 0.125)] == ["0.9", "0.85", "0.5", "0.125"]


def test_frames_of_a_multi_frame_scan_are_numbered_from_one_with_four_digits():
    assert output_path(OUT, "cine.dcm", 0.5, (0.5,), frame=2) == OUT / "cine_f0002.png"
    assert overlay_path(OUT, "x/cine.dcm", 12) == OUT / "overlays" / "x" / "cine_f0012.png"


@pytest.mark.parametrize(
    ("name", "stem"),
    [
        ("x.png", "x"),
        ("x.tiff", "x"),
        ("x.DCM", "x"),
        ("x.dicom", "x"),
        ("1.2.840.113619.2.1", "1.2.840.113619.2.1"),  # a DICOM UID name: its "suffix" is part of the name
        ("IM000001", "IM000001"),
        ("x.tar.png", "x.tar"),
    ],
)
def test_scan_stem_drops_only_a_scan_suffix(name, stem):
    assert scan_stem(name) == stem


def test_overlays_and_reports_have_folders_of_their_own():
    assert overlay_path(OUT, "a/b/scan.jpg") == OUT / "overlays" / "a" / "b" / "scan.png"
    assert report_path(OUT, "a/b/scan.jpg") == OUT / "reports" / "a" / "b" / "scan.json"


def test_an_error_record_is_named_after_the_whole_input_name():
    assert error_path(OUT, "a/scan.jpg") == OUT / "a" / "scan.jpg.error.txt"
    assert error_path(OUT, "a/scan.png") != error_path(OUT, "a/scan.jpg")  # same stem, distinct records


def test_scans_that_would_write_the_same_mask_share_a_key():
    from edge_runtime.outputs.naming import group_of

    assert group_of("a/x.png") == group_of("a/x.jpg") == group_of("a/x.dcm") == group_of("a/x.Png")
    assert group_of("a/x.png") == group_of("a/x_f0002.png")  # a frame of x.dcm's name
    assert group_of("a/x.png") != group_of("b/x.png")
    assert group_of("a/x.png") != group_of("a/x.png.png")
    assert group_of("a/X.png") != group_of("a/x.png") and group_of("a/X.png", True) == group_of("a/x.png", True)


def test_relative_paths_are_posix_and_relative_to_out():
    assert relative(OUT, OUT / "0.9" / "a" / "x.png") == "0.9/a/x.png"
