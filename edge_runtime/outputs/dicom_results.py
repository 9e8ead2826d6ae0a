"""``--dicom-results``: for each DICOM scan, a SEG (the outline), a SR (the measurements) and, when
asked, a Secondary Capture (the overlay as a picture), for PACS.

For the scan ``IN/a/b/scan.dcm``: ``OUT/dicom/a/b/scan.seg.dcm`` (:mod:`edge_runtime.outputs.seg`),
``scan.sr.dcm`` (:mod:`edge_runtime.outputs.sr`) and ``scan.sc.dcm`` (:mod:`edge_runtime.outputs.sc`),
made from the masks at the job's lowest threshold, from whatever the source header has
(:mod:`edge_runtime.outputs.dicom_source`), sharing their identification
(:mod:`edge_runtime.outputs.ai_identity`). Scans that are not DICOM get none (there is nothing to
reference). A multi-frame scan without a coordinate system (a cine loop) gets no SEG: highdicom cannot
write its SEG (issue #284), and a SEG of the wrong geometry is worse than none; its masks are in OUT as
for any scan, and the SR outlines each frame's nodules on the source frames.

**A result that cannot be made never fails its scan.** A source without an attribute a result needs
(:data:`~edge_runtime.outputs.dicom_source.NEEDS`), or one highdicom refuses, gets that result
refused: one warning naming the scan, the result and the reason, and an error record
``OUT/dicom/a/b/scan.seg.failed.txt`` in the result's place (the ledger lists it among the scan's
outputs, so the scan is done, and it is made again when the scan or the settings change). The mask and
the other results are written as usual; a SR whose SEG was refused is made without the SEG's reference.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_runtime import timestamps
from edge_runtime.errors import SetupError
from edge_runtime.files.durable import write_atomic
from edge_runtime.files.scans import Scan
from edge_runtime.outputs.base import DICOM_MADE, INSTEAD, OutputSetup, ScanResult
from edge_runtime.outputs.layout import DICOM_DIR, dicom_result_path, relative

log = logging.getLogger(__name__)

INSTALL_HINT = 'DICOM results need the dicom extra: pip install "edge-seg[dicom]"'
#: The name of a result's error record, in place of ``.<kind>.dcm``.
FAILED_SUFFIX = ".failed.txt"
#: The exceptions that are highdicom's (or pydicom's) word on a source it cannot use, not a bug of ours.
REFUSALS = (ValueError, TypeError, AttributeError, KeyError, IndexError)
NAMES = {"seg": "SEG", "sr": "SR", "sc": "Secondary Capture"}


@dataclass(frozen=True)
class DicomResult:
    """One DICOM result written for a scan: what the outbox queues and sends."""

    path: str  #: POSIX path relative to OUT (``dicom/a/b/scan.seg.dcm``)
    kind: str  #: ``seg``, ``sr`` or ``sc``
    sop_class_uid: str
    sop_instance_uid: str


def _encode(ds: Any) -> bytes:
    from pydicom.filebase import DicomBytesIO

    buf = DicomBytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def failed_path(result: Path) -> Path:
    """The error record that stands for result ``.../scan.seg.dcm``: ``.../scan.seg.failed.txt``."""
    return result.with_name(result.name.removesuffix(".dcm") + FAILED_SUFFIX)


def result_kind(path: Path) -> str:
    """``seg``, ``sr`` or ``sc`` from a result's name (``scan.seg.dcm``)."""
    return path.name.removesuffix(".dcm").rsplit(".", 1)[-1]


class ResultRefused(Exception):
    """One result of a scan cannot be made; the message says why, for its error record."""


class DicomResultsWriter:
    """SEG and SR per DICOM scan, as an :class:`~edge_runtime.outputs.base.OutputWriter`."""

    kind = "dicom"
    stage = "dicom"
    # Kept at 1 although the results now carry more identification: a new version would redo every DICOM
    # scan of an OUT and send its results to PACS again, as new objects. The scans an older version failed
    # ("cannot make DICOM results") are tried again once by each new process (job.plan.WRITE_FAILURES).
    signature = "dicom-seg-sr/1"
    folder = DICOM_DIR
    results: tuple[str, ...] = ("seg", "sr")

    def __init__(self, setup: OutputSetup) -> None:
        try:
            import highdicom  # noqa: F401
            import pydicom  # noqa: F401
        except ImportError as exc:
            raise SetupError(f"{INSTALL_HINT} ({exc.name} is missing)") from None
        logging.getLogger("highdicom").setLevel(logging.WARNING)  # it logs every module it copies at INFO
        self.setup = setup
        self.threshold = setup.thresholds[0]

    def paths(self, rel: str, scan: Scan) -> list[Path]:
        """A DICOM scan's results (no SEG for a cine loop without a coordinate system); none for other scans."""
        header = scan.dicom_header
        if header is None:
            return []
        kinds = [k for k in self.results if k != "seg" or _seg_supported(header)]
        return [dicom_result_path(self.setup.out_dir, rel, kind) for kind in kinds]

    def write(self, result: ScanResult) -> dict[str, Any]:
        header = result.scan.dicom_header
        if not result.paths or header is None:  # (no results are named for a scan that is not DICOM)
            return {}
        from edge_runtime.outputs.ai_identity import ResultIdentity
        from edge_runtime.outputs.dicom_source import usable_source

        source = usable_source(header)
        ident = ResultIdentity.of(source, self.setup.model)
        made: dict[str, Any] = {}
        written: list[DicomResult] = []
        refused: dict[str, str] = {}
        for path in result.paths:
            kind = result_kind(path)
            try:
                made[kind] = self._build(kind, source, result, ident, made.get("seg"))
            except ResultRefused as exc:
                refused[kind] = str(exc)
                self._refuse(result.rel, path, kind, str(exc))
                continue
            write_atomic(path, _encode(made[kind]), fsync=self.setup.fsync)
            failed_path(path).unlink(missing_ok=True)
            ds = made[kind]
            rel = relative(self.setup.out_dir, path)
            written.append(DicomResult(rel, kind, str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
        if not refused:
            return {DICOM_MADE: written}
        instead = {str(p): str(failed_path(p)) for p in result.paths if result_kind(p) in refused}
        return {DICOM_MADE: written, INSTEAD: instead, "dicom_refused": refused}

    def _build(self, kind: str, source: Any, result: ScanResult, ident: Any, seg: Any) -> Any:
        """Result ``kind``'s dataset, or ResultRefused saying why it cannot be made from this source."""
        from edge_runtime.outputs.dicom_source import missing

        lacking = missing(source, kind)
        if lacking:
            raise ResultRefused(f"the source has no {', '.join(lacking)} (Type 1)")
        masks = [s.masks[self.threshold] for s in result.segmentations]
        try:
            if kind == "seg":
                from edge_runtime.outputs.seg import build_seg

                return build_seg(source, masks, ident, self.threshold)
            if kind == "sr":
                from edge_runtime.outputs.sr import build_sr

                return build_sr(source, masks, self.setup.calibration(result.scan), ident, seg)
            from edge_runtime.outputs.sc import build_sc

            by_frame = [s.masks for s in result.segmentations]
            calibration = self.setup.calibration(result.scan)
            return build_sc(source, result.scan.frames, by_frame, self.setup.thresholds, ident, calibration)
        except REFUSALS as exc:
            if isinstance(exc, KeyError) and exc.args and str(exc.args[0]) == str(source.SOPClassUID):
                raise ResultRefused(f"highdicom does not know its SOP Class UID {source.SOPClassUID}") from None
            said = str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc).strip()
            raise ResultRefused(said.splitlines()[0] if said else type(exc).__name__) from None
        except Exception as exc:  # a bug (ours or highdicom's): said with its traceback, and the mask still kept
            log.exception("unexpected error making the DICOM %s of %s", NAMES[kind], result.rel)
            raise ResultRefused(f"unexpected error: {type(exc).__name__}: {exc}") from None

    def _refuse(self, rel: str, path: Path, kind: str, reason: str) -> None:
        """The warning and the error record of a result that cannot be made (and no stale result left)."""
        record = failed_path(path)
        log.warning(
            "%s: no DICOM %s: %s (the mask is written; %s)",
            rel,
            NAMES[kind],
            reason,
            record.relative_to(self.setup.out_dir).as_posix(),
        )
        now = timestamps.local()
        text = f"scan: {rel}\nresult: {NAMES[kind]}\nreason: {reason}\ntime: {now}\n"
        write_atomic(record, text, fsync=self.setup.fsync)
        path.unlink(missing_ok=True)


class SecondaryCaptureWriter(DicomResultsWriter):
    """``--dicom-results ...,sc``: the Secondary Capture of the overlay, per DICOM scan."""

    kind = "dicom-sc"
    stage = "dicom-sc"
    signature = "dicom-sc/1"
    results = ("sc",)


def _seg_supported(header: Any) -> bool:
    """:func:`edge_runtime.outputs.seg.seg_supported`; a header too odd to tell is tried (and refused, if so)."""
    from edge_runtime.outputs.seg import seg_supported

    try:
        return seg_supported(header)
    except REFUSALS:
        return True
