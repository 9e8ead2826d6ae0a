"""The output kinds a job can make, and the writers for them (masks always, first)."""

from __future__ import annotations

from edge_runtime.outputs.base import OutputSetup, OutputWriter
from edge_runtime.outputs.dicom_results import DicomResultsWriter, SecondaryCaptureWriter
from edge_runtime.outputs.masks import MaskWriter
from edge_runtime.outputs.overlays import OverlayWriter
from edge_runtime.outputs.reports import ReportWriter
from edge_runtime.outputs.review import ReviewWriter

#: The outputs made besides the masks, by kind, in the order they are written (overlays and DICOM
#: results before the report, which names the overlays and times both; the review page's thumbnails last).
EXTRAS: dict[str, type[OverlayWriter] | type[ReportWriter] | type[DicomResultsWriter] | type[ReviewWriter]] = {
    "overlays": OverlayWriter,
    "dicom": DicomResultsWriter,
    "dicom-sc": SecondaryCaptureWriter,
    "reports": ReportWriter,
    "review": ReviewWriter,
}


def extras_signature(kinds: tuple[str, ...]) -> str:
    """The part of the job signature that says which outputs besides the masks are made (and their versions)."""
    return ",".join(EXTRAS[k].signature for k in kinds)


def make_writers(setup: OutputSetup) -> list[OutputWriter]:
    """The masks' writer, then one for each further kind in ``setup.kinds``."""
    unknown = [k for k in setup.kinds if k != MaskWriter.kind and k not in EXTRAS]
    if unknown:
        raise ValueError(f"unknown output kind(s): {', '.join(unknown)}")
    writers: list[OutputWriter] = [MaskWriter(setup)]
    writers += [EXTRAS[k](setup) for k in EXTRAS if k in setup.kinds]
    return writers
