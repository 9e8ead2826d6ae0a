"""DICOM Secondary Capture (SC) of one scan's overlay, for the PACS viewers that show no SEG (highdicom).

The picture is the overlay (:func:`edge_runtime.outputs.overlays.render_overlay`: each threshold's
outline, its legend and the calipers of the lowest threshold's nodules, as ``--overlay`` draws them) with
a band along the bottom that says, burned into the pixels, "NOT FOR
DIAGNOSIS" and which model made it. It is an 8-bit RGB Secondary Capture Image in the source's
patient and study, in a series of its own, Image Type ``DERIVED\\SECONDARY``, Burned In Annotation
``YES``; its Source Image Sequence references the source instance (and the frame, for a cine loop) and
its Derivation Description names the model and its sha256. A cine loop gets one SC, of the frame with
the largest nodule area (the first frame when none has one): Secondary Capture is one picture, and the
SR holds every frame's nodules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from edge_runtime._version import __version__
from edge_runtime.core.calibration import Calibration
from edge_runtime.outputs.ai_identity import MANUFACTURER, ResultIdentity, series_description
from edge_runtime.outputs.overlays import render_overlay

NOTE = "NOT FOR DIAGNOSIS"
#: DICOM's code for "Source image for image processing operation" (DCM 121322), the purpose of the reference.
SOURCE_PURPOSE = ("121322", "DCM", "Source image for image processing operation")
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def key_frame(masks: Sequence[np.ndarray]) -> int:
    """The index of the frame with the largest nodule area (0 when no frame has one)."""
    return int(np.argmax([int(np.count_nonzero(m)) for m in masks]))


def burn_note(canvas: np.ndarray, text: str) -> None:
    """A black band along the bottom of ``canvas`` (RGB) with ``text`` in white, as large as fits."""
    h, w = canvas.shape[:2]
    scale = min(1.0, max(0.3, min(h, w) / 700))
    while scale > 0.3 and cv2.getTextSize(text, _FONT, scale, 1)[0][0] > w - 8:
        scale *= 0.9
    thick = 1 if scale < 0.7 else 2
    (_, th), base = cv2.getTextSize(text, _FONT, scale, thick)
    band = th + base + 8
    cv2.rectangle(canvas, (0, h - band), (w - 1, h - 1), (0, 0, 0), cv2.FILLED)
    cv2.putText(canvas, text, (4, h - base - 4), _FONT, scale, (255, 255, 255), thick, cv2.LINE_AA)


def picture(
    frame: np.ndarray,
    masks: Mapping[float, np.ndarray],
    thresholds: Sequence[float],
    ident: ResultIdentity,
    calibration: Calibration | None = None,
) -> np.ndarray:
    """The SC's pixels: the overlay of ``frame`` (with the calipers, given a ``calibration``) and the note burned
    in (8-bit RGB, the frame's size)."""
    canvas = render_overlay(frame, masks, thresholds, calibration=calibration)
    burn_note(canvas, f"{NOTE} - {MANUFACTURER} {ident.model.name} {ident.model.version}")
    return np.ascontiguousarray(canvas)


def build_sc(
    source: Any,
    frames: Sequence[np.ndarray],
    masks: Sequence[Mapping[float, np.ndarray]],
    thresholds: Sequence[float],
    ident: ResultIdentity,
    calibration: Calibration | None = None,
) -> Any:
    """The SC dataset for ``source`` (a pydicom header) from its frames and each frame's masks by threshold;
    the calipers are drawn as on ``--overlay`` (labelled in mm where ``calibration`` gives a spacing)."""
    import highdicom as hd
    from pydicom.dataset import Dataset
    from pydicom.uid import ExplicitVRLittleEndian

    index = key_frame([m[min(thresholds)] for m in masks])
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=picture(frames[index], masks[index], thresholds, ident, calibration),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=hd.UID(),
        series_number=ident.series["sc"],
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        patient_orientation=("A", "F"),  # highdicom asks for one; replaced by the source's own below
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=series_description(ident.model, "sc"),
        software_versions=__version__,
    )
    # General Image: Patient Orientation is Type 2C; an ultrasound image has none to give, so it is the
    # source's own (usually empty), never a made-up one.
    sc.PatientOrientation = source.get("PatientOrientation", "")
    sc.Laterality = source.get("Laterality", "")  # General Series, Type 2C (a paired organ's side): as the source
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.BurnedInAnnotation = "YES"
    sc.DerivationDescription = ident.derivation()[:1024]
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if int(source.get("NumberOfFrames", 1) or 1) > 1:
        ref.ReferencedFrameNumber = index + 1
    purpose = Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning = SOURCE_PURPOSE
    ref.PurposeOfReferenceCodeSequence = [purpose]
    sc.SourceImageSequence = [ref]
    return sc
