"""``--dicom-results``: for each DICOM scan, a SEG (the outline) and a SR (the measurements), for PACS.

For the scan ``IN/a/b/scan.dcm``: ``OUT/dicom/a/b/scan.seg.dcm`` (:mod:`edge_runtime.outputs.seg`)
and ``OUT/dicom/a/b/scan.sr.dcm`` (:mod:`edge_runtime.outputs.sr`), made from the masks at the
job's lowest threshold. Scans that are not DICOM get neither (there is nothing to reference). A
multi-frame scan without a coordinate system (a cine loop) gets the SR alone: highdicom cannot write
its SEG (issue #284), and a SEG of the wrong geometry is worse than none; its masks are in OUT as
for any scan, and the SR outlines each frame's nodules on the source frames.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from edge_runtime.errors import ScanError, SetupError
from edge_runtime.files.durable import write_atomic
from edge_runtime.files.scans import Scan
from edge_runtime.outputs.base import OutputSetup, ScanResult
from edge_runtime.outputs.layout import DICOM_DIR, dicom_result_path

#: What a SEG and a SR copy from their source and reference it by.
REQUIRED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
INSTALL_HINT = 'DICOM results need the dicom extra: pip install "edge-seg[dicom]"'


def _encode(ds: Any) -> bytes:
    from pydicom.filebase import DicomBytesIO

    buf = DicomBytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


class DicomResultsWriter:
    """SEG and SR per DICOM scan, as an :class:`~edge_runtime.outputs.base.OutputWriter`."""

    kind = "dicom"
    stage = "dicom"
    signature = "dicom-seg-sr/1"
    folder = DICOM_DIR

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
        """``[seg, sr]`` for a DICOM scan (``[sr]`` for a cine loop without a coordinate system), else none."""
        from edge_runtime.outputs.seg import seg_supported

        header = scan.extra.get("dicom_header")
        if header is None:
            return []
        kinds = ("seg", "sr") if seg_supported(header) else ("sr",)
        return [dicom_result_path(self.setup.out_dir, rel, kind) for kind in kinds]

    def write(self, result: ScanResult) -> dict[str, Any]:
        if not result.paths:
            return {}
        from edge_runtime.outputs.seg import build_seg
        from edge_runtime.outputs.sr import build_sr

        scan, model = result.scan, self.setup.model
        header = scan.extra["dicom_header"]
        missing = [k for k in REQUIRED if not header.get(k)]
        if missing:
            raise ScanError(result.rel, f"cannot make DICOM results: the scan has no {', '.join(missing)}")
        masks = [s.masks[self.threshold] for s in result.segmentations]
        try:
            seg = build_seg(header, masks, model, self.threshold) if len(result.paths) == 2 else None
            sr = build_sr(header, masks, self.setup.calibration(scan), model, seg)
        except (ValueError, TypeError, AttributeError, KeyError) as exc:  # highdicom's word on a source it cannot use
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ScanError(result.rel, f"cannot make DICOM results: {text}") from None
        for path, ds in zip(result.paths, [d for d in (seg, sr) if d is not None], strict=True):
            write_atomic(path, _encode(ds), fsync=self.setup.fsync)
        return {}
