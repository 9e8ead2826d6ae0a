"""What every output writer is given and promises (masks, overlays, findings reports, DICOM SEG/SR/SC).

A writer is built once per job from an :class:`OutputSetup` (where OUT is, the thresholds, the model,
which outputs the job makes), then called once per scan with a :class:`ScanResult`: the scan, its
segmentations, the files it must write, and the timings so far. It never sees the processor, the
ledger or the other writers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edge_runtime.core.calibration import Calibration, Spacing
from edge_runtime.core.model import ModelInfo
from edge_runtime.core.segmenter import Segmentation
from edge_runtime.files.scans import Scan

#: A key of the facts :meth:`OutputWriter.write` returns: ``{named file: file written instead}`` (absolute
#: paths) for files a writer named in :meth:`OutputWriter.paths` but could not make and stood an error
#: record in for (a DICOM result its source cannot give); the scan's outputs list the record instead.
INSTEAD = "outputs_instead"
#: A key of the facts :meth:`OutputWriter.write` returns: the DICOM results it wrote, as
#: :class:`~edge_runtime.outputs.dicom_results.DicomResult` values; the processor hands them over in
#: :attr:`edge_runtime.job.outcome.Outcome.dicom` (for the outbox), not in the run record's facts.
DICOM_MADE = "dicom_made"


@dataclass(frozen=True)
class OutputSetup:
    """What the writers of one job share."""

    out_dir: Path
    thresholds: tuple[float, ...]
    model: ModelInfo
    #: the output kinds this job makes, in order (``("masks", "overlays", "reports")``)
    kinds: tuple[str, ...]
    #: flush each file to disk before it is renamed into place
    fsync: bool = True
    #: ``--pixel-spacing``: (row, column) mm for scans whose file states none
    pixel_spacing_mm: Spacing | None = None

    def calibration(self, scan: Scan) -> Calibration:
        """The spacing facts of ``scan`` (its ultrasound regions, its own spacing) with this job's fallback."""
        regions = scan.extra.get("ultrasound_regions", ())
        own = None if regions else scan.pixel_spacing_mm
        return Calibration(regions, own, scan.extra.get("pixel_spacing_source") if own else None, self.pixel_spacing_mm)


@dataclass(frozen=True)
class ScanResult:
    """One scan on its way out: what a writer needs to write its files for it."""

    rel: str  #: the scan's POSIX path relative to IN, which names its outputs
    scan: Scan
    segmentations: list[Segmentation]  #: one per frame
    paths: list[Path]  #: the files this writer named for this scan (:meth:`OutputWriter.paths`)
    timings: dict[str, float]  #: milliseconds per stage so far


class OutputWriter(Protocol):
    """An output made for each scan.

    :meth:`paths` names the files before anything is written, so that the ledger's ``begin`` record
    lists them and a crash before they are all complete is not mistaken for a finished scan.
    """

    #: the output kind, plural (``"overlays"``): the status file and provenance list it
    kind: str
    #: the stage in :attr:`edge_runtime.job.outcome.Outcome.timings`
    stage: str
    #: name and format version, part of the job signature (so adding, dropping or changing it redoes
    #: scans); empty for the masks, which every job makes
    signature: str
    #: its folder under OUT, or "" when it writes beside the masks; with one threshold, scans under
    #: ``IN/<folder>/`` would collide and are refused
    folder: str

    def paths(self, rel: str, scan: Scan) -> list[Path]:
        """The files :meth:`write` will write for this scan."""
        ...

    def write(self, result: ScanResult) -> dict[str, Any]:
        """Write ``result.paths`` atomically; return facts for the run record (may be empty)."""
        ...
