"""What the DICOM results take from their source's header, as real scanners, exporters and
de-identification tools write it.

highdicom reads the Patient and General Study modules' Type 2 attributes (PatientID, PatientName,
PatientBirthDate, ...) from the source as Python attributes, so a source without one of them -- which
the standard allows: Type 2 means "present, possibly empty", and many de-identified files drop them
altogether -- made every result of that scan fail. :func:`usable_source` gives the builders a copy with
each missing or malformed Type 2 attribute present and empty, as the result would carry it anyway.

What a result cannot be made without (its Type 1 references to the source, and for an image result
the source's size) is checked by :func:`missing`: a source without it gets that result refused with
one line naming the attribute and the file (:mod:`edge_runtime.outputs.dicom_results`).
"""

from __future__ import annotations

from typing import Any

#: Type 2 attributes of the Patient and General Study modules that highdicom copies into every result.
TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
#: Of those, the dates and times, whose malformed values (``2026-01-01``) highdicom refuses: emptied.
_DATES = {"PatientBirthDate": "DA", "StudyDate": "DA", "StudyTime": "TM"}
#: The Type 1 attributes every result references its source by (SOP instance, series, study).
IDENTITY = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
#: What each result needs of its source: the references, for an image result its size, and for the SR
#: the source's Modality (highdicom checks that the image an outline sits on is one a SR may reference).
NEEDS: dict[str, tuple[str, ...]] = {
    "seg": (*IDENTITY, "Rows", "Columns"),
    "sr": (*IDENTITY, "Modality"),
    "sc": (*IDENTITY, "Rows", "Columns"),
}


def missing(header: Any, kind: str) -> list[str]:
    """The attributes result ``kind`` needs that the source lacks or has empty (Type 1: no value is no use)."""
    return [k for k in NEEDS[kind] if header.get(k) in (None, "")]


def usable_source(header: Any) -> Any:
    """A copy of the source header with every :data:`TYPE2` attribute present (empty when missing or malformed)."""
    from pydicom.dataset import Dataset

    source = Dataset()
    source.update(header)  # a shallow copy: the elements are shared, never modified
    if getattr(header, "file_meta", None) is not None:
        source.file_meta = header.file_meta
    for keyword in TYPE2:
        if keyword not in source or (keyword in _DATES and not _valid(source[keyword].value, _DATES[keyword])):
            setattr(source, keyword, "")
    return source


def _valid(value: Any, vr: str) -> bool:
    """Whether a DA or TM value parses (an empty value is valid)."""
    from pydicom.valuerep import DA, TM

    if value in (None, ""):
        return True
    try:
        (DA if vr == "DA" else TM)(str(value))
    except ValueError:
        return False
    return True
