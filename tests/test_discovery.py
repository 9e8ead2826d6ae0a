"""edge_runtime.job.discovery (contract 4): which files under IN are scans, and whether IN and OUT can be used."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from edge_runtime.errors import SetupError
from edge_runtime.job.discovery import (
    check_folders,
    is_candidate,
    is_candidate_name,
    iter_scans,
    may_be_unsuffixed_dicom,
)

DICOM_HEAD = b"\0" * 128 + b"DICM" + b"\0" * 16


@pytest.mark.parametrize(
    ("name", "scan"),
    [
        ("a.png", True),
        ("a.PNG", True),
        ("a.jpeg", True),
        ("a.tif", True),
        ("a.dcm", True),
        ("a.txt", False),
        (".a.png", False),  # hidden (rsync's .a.png.XXXXXX too)
        ("~a.png", False),
        ("a.png~", False),
        ("a.png.tmp", False),
        ("a.png.part", False),
        ("a.crdownload", False),
        ("", False),
    ],
)
def test_a_scan_name_has_a_known_suffix_and_is_not_hidden_or_temporary(name, scan):
    assert is_candidate_name(name) is scan


def test_dicom_suffixes_count_only_when_dicom_is_read():
    assert is_candidate_name("a.dcm", dicom=True) and not is_candidate_name("a.dcm", dicom=False)


def test_nothing_under_a_hidden_folder_is_a_scan():
    assert is_candidate("a/b.png") and not is_candidate(".cache/b.png") and not is_candidate("a/.b/c.png")


@pytest.mark.parametrize(
    ("name", "maybe"),
    [("IM000001", True), ("1.2.840.113619.2.1", True), ("DICOMDIR", False), ("notes.txt", False), (".x", False)],
)
def test_names_scanners_give_dicom_files(name, maybe):
    assert may_be_unsuffixed_dicom(name) is maybe


def test_iter_scans_lists_every_scan_sorted_and_finds_unsuffixed_dicom_by_content(tmp_path):
    for rel in ["b.png", "a/c.jpg", "a/.hidden.png", ".git/x.png", "a/x.png.tmp", "notes.txt"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / "IM000001").write_bytes(DICOM_HEAD)
    (tmp_path / "IM000002").write_bytes(b"not dicom at all")
    (tmp_path / "DICOMDIR").write_bytes(DICOM_HEAD)
    assert list(iter_scans(tmp_path)) == ["IM000001", "b.png", "a/c.jpg"]
    assert list(iter_scans(tmp_path, dicom=False)) == ["b.png", "a/c.jpg"]


@pytest.mark.skipif(os.name != "posix", reason="symbolic links")
def test_a_link_leading_outside_in_is_skipped_and_named_once(tmp_path, caplog):
    root, elsewhere = tmp_path / "in", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    (elsewhere / "secret.png").write_bytes(b"x")
    (root / "inside.png").write_bytes(b"x")
    (root / "out.png").symlink_to(elsewhere / "secret.png")
    (root / "alias.png").symlink_to(root / "inside.png")  # stays inside: a scan
    warned: set[str] = set()
    with caplog.at_level(logging.WARNING):
        assert list(iter_scans(root, warned=warned)) == ["alias.png", "inside.png"]
        assert list(iter_scans(root, warned=warned)) == ["alias.png", "inside.png"]
    assert [r.getMessage() for r in caplog.records].count(
        "SKIP out.png: symbolic link leads outside the input folder"
    ) == 1


def test_check_folders_returns_both_resolved_and_makes_out(tmp_path):
    (tmp_path / "in").mkdir()
    in_dir, out_dir = check_folders(tmp_path / "in" / ".." / "in", tmp_path / "new" / "out")
    assert in_dir == (tmp_path / "in").resolve() and out_dir == (tmp_path / "new" / "out").resolve()
    assert out_dir.is_dir() and list(out_dir.iterdir()) == []  # the write probe is gone


@pytest.mark.parametrize(
    ("make_in", "in_rel", "out_rel", "message"),
    [
        (False, "in", "out", "does not exist"),
        (True, "in/file.png", "out", "is not a folder"),
        (True, "in", "in/out", "is inside input folder"),
        (True, "in", "in", "is inside input folder"),
        (True, "in", ".", "is inside output folder"),
    ],
)
def test_unusable_folders_are_refused_with_a_reason(tmp_path, make_in, in_rel, out_rel, message):
    if make_in:
        (tmp_path / "in").mkdir()
        (tmp_path / "in" / "file.png").write_bytes(b"x")
    with pytest.raises(SetupError, match=message):
        check_folders(tmp_path / in_rel, tmp_path / out_rel)


def test_out_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "out").write_bytes(b"x")
    with pytest.raises(SetupError, match="not writable"):
        check_folders(tmp_path / "in", tmp_path / "out")


def test_scan_paths_are_posix_relative_paths(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "s.png").write_bytes(b"x")
    (rel,) = iter_scans(tmp_path)
    assert rel == "a/b/s.png" and Path(tmp_path, rel).is_file()
