"""Where a scan's outputs go (contract 4 of docs/DESIGN.md).

Outputs for the scan ``IN/a/b/scan.jpg``:

* one threshold:       ``OUT/a/b/scan.png``
* several thresholds:  ``OUT/<threshold>/a/b/scan.png`` (e.g. ``OUT/0.9/a/b/scan.png``)
* a multi-frame DICOM: ``scan_f0001.png``, ``scan_f0002.png``, ... in the same places
* an unreadable scan:  ``OUT/a/b/scan.jpg.error.txt`` (the reason, for a person to read)
* with ``--overlay``:  ``OUT/overlays/a/b/scan.png`` (all thresholds in one picture; ``scan_f0001.png``, ...)
* with ``--report``:   ``OUT/reports/a/b/scan.json`` (findings; docs/OUTPUTS.md describes every field),
  the review page ``OUT/index.html`` (``index-2.html``, ... for more pages) and, beside the overlays,
  ``OUT/overlays/a/b/scan.thumb.jpg`` (thumbnail) and ``scan.plain.jpg`` (the scan without outline)
* with ``--dicom-results``, for DICOM scans: ``OUT/dicom/a/b/scan.seg.dcm``, ``scan.sr.dcm`` (and
  ``scan.sc.dcm``), or in a result's place the error record ``scan.seg.failed.txt`` when the scan's
  header cannot give it
* the run's own state: ``OUT/.edge-seg/`` (ledger, lock, status file)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from edge_runtime.core.thresholds import threshold_label
from edge_runtime.files.durable import fitting_name
from edge_runtime.files.formats import DICOM_SUFFIXES, IMAGE_SUFFIXES

#: The folder under OUT that holds the ledger, the status file and run records.
STATE_DIR = ".edge-seg"
#: The folders under OUT for overlays (``--overlay``) and findings (``--report``).
OVERLAY_DIR = "overlays"
REPORT_DIR = "reports"
#: The folder under OUT for DICOM results (``--dicom-results``: SEG and SR).
DICOM_DIR = "dicom"
#: The review page (``--report``): its first page under OUT; more pages are ``index-2.html``, ...
PAGE_NAME = "index.html"


def output_path(
    out_dir: Path,
    rel: str,
    threshold: float,
    thresholds: Sequence[float],
    frame: int | None = None,
    suffix: str = ".png",
) -> Path:
    """Where the mask of scan ``rel`` at ``threshold`` goes."""
    base = out_dir if len(thresholds) == 1 else out_dir / threshold_label(threshold)
    return _beside(base, rel, frame, suffix)


def _beside(base: Path, rel: str, frame: int | None, suffix: str) -> Path:
    """``base/<relative folder>/<stem>[_fNNNN]<suffix>``; a name over 255 bytes is shortened (``fitting_name``)."""
    relp = PurePosixPath(rel)
    stem = scan_stem(relp.name)
    if frame is not None:
        stem = f"{stem}_f{frame:04d}"
    return base.joinpath(*relp.parent.parts, fitting_name(stem, len(suffix.encode())) + suffix)


def scan_stem(name: str) -> str:
    """The name without its scan suffix: ``x.png`` -> ``x``; a DICOM UID name ``1.2.3.4`` stays whole."""
    root, suffix = os.path.splitext(name)
    return root if suffix.lower() in IMAGE_SUFFIXES or suffix.lower() in DICOM_SUFFIXES else name


def overlay_path(out_dir: Path, rel: str, frame: int | None = None) -> Path:
    """Where the overlay of scan ``rel`` goes: ``OUT/overlays/<relative folder>/<stem>[_fNNNN].png``."""
    return _beside(out_dir / OVERLAY_DIR, rel, frame, ".png")


def thumbnail_path(out_dir: Path, rel: str) -> Path:
    """The review page's thumbnail of scan ``rel``: ``OUT/overlays/<relative folder>/<stem>.thumb.jpg``.

    Overlays always end in ``.png``, so no scan's overlay can take this name.
    """
    return _beside(out_dir / OVERLAY_DIR, rel, None, ".thumb.jpg")


def plain_path(out_dir: Path, rel: str) -> Path:
    """The review page's full-size view of scan ``rel`` without outline: ``OUT/overlays/.../<stem>.plain.jpg``."""
    return _beside(out_dir / OVERLAY_DIR, rel, None, ".plain.jpg")


def report_path(out_dir: Path, rel: str) -> Path:
    """Where the findings of scan ``rel`` go: ``OUT/reports/<relative folder>/<stem>.json``."""
    return _beside(out_dir / REPORT_DIR, rel, None, ".json")


def dicom_result_path(out_dir: Path, rel: str, kind: str) -> Path:
    """Where the DICOM ``kind`` (``seg``, ``sr``, ``sc``) of scan ``rel`` goes: ``OUT/dicom/.../<stem>.<kind>.dcm``."""
    return _beside(out_dir / DICOM_DIR, rel, None, f".{kind}.dcm")


#: The suffix of an error record's name.
ERROR_SUFFIX = ".error.txt"


def relative(out_dir: Path, path: Path) -> str:
    """``path`` as the POSIX path relative to OUT that the ledger, the reports and the logs use."""
    return path.relative_to(out_dir).as_posix()


def error_path(out_dir: Path, rel: str) -> Path:
    """Where the error record of scan ``rel`` goes: beside its mask, named after the whole input name.

    A name too long for that (over 245 bytes) gives ``<its start>~<hash>.error.txt``
    (:func:`~edge_runtime.files.durable.fitting_name`); the record's ``scan:`` line names the scan.
    """
    name = fitting_name(PurePosixPath(rel).name, len(ERROR_SUFFIX)) + ERROR_SUFFIX
    return out_dir.joinpath(*PurePosixPath(rel).parts[:-1], name)
