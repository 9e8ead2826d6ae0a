"""DICOM Structured Report (TID 1500, Comprehensive 3D SR) of one scan's nodules (highdicom).

One measurement group (TID 1410) per nodule -- a connected component (8-connected) of the mask,
largest first, per frame -- with its area (``SCT 42798000`` "Area") in mm² when the pixel spacing is
known and in pixels otherwise, and its outline as a closed polyline on the source image (its frame,
for a cine loop). When a SEG was written, one more group references its segment ("thyroid nodule")
with the area of the whole segment and the segment's own Tracking ID and UID, and the SEG is part of
the report's evidence. Observer: the device edge-seg; every group names the model as its algorithm
(name, version, and the model file's sha256 as its parameter: :mod:`edge_runtime.outputs.ai_identity`).

Each nodule's calipers (:mod:`edge_runtime.core.calipers`) go into a measurements group of its own
(TID 1501, same tracking identifier): the long axis (``SCT 103339001``) and the short axis
(``SCT 103340004``) in mm, each with its two end points as a POLYLINE on the source image. highdicom
refuses measurement coordinates inside a planar-ROI group, hence the second group. A nodule without a
spacing (none in the file, or outside every calibrated ultrasound region) gets no mm measurement --
pixels are not a DICOM length -- and a comment saying why.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from edge_runtime.core.calibration import Calibration, Spacing
from edge_runtime.core.calipers import Calipers, components, measure
from edge_runtime.outputs.ai_identity import MANUFACTURER, SEGMENT_TRACKING_ID, ResultIdentity, series_description

#: UCUM has no pixel unit; ``{pixels}`` is an annotation (a unit of 1), as dcmqi writes it.
PIXEL_UNIT = ("{pixels}", "UCUM", "pixels")
#: SCOORD puts the top-left pixel's top-left corner at (0, 0), so its centre at (0.5, 0.5) (PS3.3 C.18.6.1.1);
#: masks and calipers have pixel centres at integers
SCOORD_SHIFT = 0.5


def nodules(mask: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """The connected components of a 0/255 mask, largest first: (area in pixels, closed outline (N, 2) x/y)."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats((mask > 0).astype(np.uint8), connectivity=8)
    found = []
    for i in sorted(range(1, n), key=lambda k: (-int(stats[k][4]), int(stats[k][1]), int(stats[k][0]))):
        contours, _ = cv2.findContours((labels == i).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        outline = max(contours, key=len)[:, 0, :].astype(np.float64)
        if len(outline) < 3:  # a one- or two-pixel nodule: outline its pixel square instead
            x, y = outline[0]
            outline = np.array([[x - 0.5, y - 0.5], [x + 0.5, y - 0.5], [x + 0.5, y + 0.5], [x - 0.5, y + 0.5]])
        found.append((int(stats[i][4]), np.vstack([outline, outline[:1]]) + SCOORD_SHIFT))
    return found


def _area(pixels: int, spacing_mm: tuple[float, float] | None) -> Any:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    if spacing_mm is None:
        return hd.sr.Measurement(name=codes.SCT.Area, value=float(pixels), unit=hd.sr.CodedConcept(*PIXEL_UNIT))
    value = round(pixels * spacing_mm[0] * spacing_mm[1], 3)
    return hd.sr.Measurement(name=codes.SCT.Area, value=value, unit=codes.UCUM.SquareMillimeter)


def _calipers_group(
    c: Calipers, spacing_known: bool, reason: str | None, image: Any, tracking: Any, algorithm: Any
) -> Any:
    """TID 1501: the long and short axis in mm with their end points; or a comment saying why there are none."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    thyroid = hd.sr.FindingSite(anatomic_location=codes.SCT.Thyroid)
    if not spacing_known:
        why = reason or "the scan states no pixel spacing"
        text = hd.sr.TextContentItem(
            name=codes.DCM.Comment,
            value=f"long and short axis not measured in mm: {why}"[:1024],
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
        return text
    measurements = []
    for name, value, ends in (
        (codes.SCT.LongAxis, c.long_axis_mm, c.long_axis_endpoints),
        (codes.SCT.ShortAxis, c.short_axis_mm, c.short_axis_endpoints),
    ):
        coordinates = hd.sr.CoordinatesForMeasurement(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=np.array(ends) + SCOORD_SHIFT,
            source_image=image,
        )
        measurements.append(
            hd.sr.Measurement(
                name=name,
                value=round(float(value or 0.0), 2),
                unit=codes.UCUM.Millimeter,
                referenced_coordinates=[coordinates],
            )
        )
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        finding_type=codes.SCT.ThyroidNodule,
        finding_sites=[thyroid],
        measurements=measurements,
        algorithm_id=algorithm,
    )


def build_sr(
    source: Any,
    masks: list[np.ndarray],
    spacing_mm: Calibration | Spacing | None,
    ident: ResultIdentity,
    seg: Any | None,
) -> Any:
    """The SR dataset for ``source`` (a pydicom header) from its frames' 0/255 masks, referencing ``seg``.

    ``spacing_mm``: the scan's :class:`~edge_runtime.core.calibration.Calibration` (each nodule its own
    spacing), or one (row, column) spacing for all.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    calibration = spacing_mm if isinstance(spacing_mm, Calibration) else Calibration(spacing=spacing_mm)
    spacing_mm = calibration.scan_spacing.spacing
    multi = len(masks) > 1
    model = ident.model
    algorithm = ident.sr_algorithm()
    groups = []
    for f, mask in enumerate(masks, 1):
        image = hd.sr.SourceImageForRegion.from_source_image(source, referenced_frame_numbers=[f] if multi else None)
        for k, ((pixels, outline), points) in enumerate(zip(nodules(mask), components(mask), strict=True), 1):
            region = hd.sr.ImageRegion(
                graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=outline, source_image=image
            )
            name = f"frame {f} nodule {k}" if multi else f"nodule {k}"
            where = calibration.for_points(points)
            tracking = hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=name)
            group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking,
                referenced_region=region,
                finding_type=codes.SCT.ThyroidNodule,
                finding_sites=[hd.sr.FindingSite(anatomic_location=codes.SCT.Thyroid)],
                measurements=[_area(pixels, where.spacing)],
                algorithm_id=algorithm,
            )
            calipers = _calipers_group(
                measure(points, where.spacing), where.spacing is not None, where.reason, image, tracking, algorithm
            )
            if isinstance(calipers, hd.sr.TextContentItem):  # no spacing: the reason, inside the nodule's group
                group[0].ContentSequence.append(calipers)
                groups.append(group)
            else:
                groups += [group, calipers]
    if seg is not None:
        segment = hd.sr.ReferencedSegmentationFrame(
            sop_class_uid=seg.SOPClassUID,
            sop_instance_uid=seg.SOPInstanceUID,
            frame_number=1,
            segment_number=1,
            source_image=hd.sr.SourceImageForSegmentation.from_source_image(source),
        )
        total = sum(int(np.count_nonzero(m)) for m in masks)
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=ident.segment_tracking_uid, identifier=SEGMENT_TRACKING_ID
                ),
                referenced_segment=segment,
                finding_type=codes.SCT.ThyroidNodule,
                measurements=[_area(total, spacing_mm)],
                algorithm_id=algorithm,
            )
        )
    device = hd.sr.DeviceObserverIdentifyingAttributes(uid=hd.UID(), name=MANUFACTURER, model_name=model.name)
    context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=hd.sr.CodedConcept("1287000", "SCT", "Ultrasonography of thyroid"),
        imaging_measurements=groups or None,
        title=codes.DCM.ImagingMeasurementReport,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[source] if seg is None else [source, seg],
        content=report,
        series_instance_uid=hd.UID(),
        series_number=ident.series["sr"],
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        series_description=series_description(model, "sr"),
    )
    _whole_segment_references(sr.ContentSequence)
    return sr


def _whole_segment_references(items: Any) -> None:
    """A reference to a SEG names the segment or the frame, not both (PS3.3 C.17.3.2.1; dciodvfy checks it).

    highdicom writes both for a segmentation frame; the frame number is dropped, so the reference is
    to the segment (all its frames: one per source frame).
    """
    for item in items:
        for ref in item.get("ReferencedSOPSequence", []):
            if "ReferencedSegmentNumber" in ref and "ReferencedFrameNumber" in ref:
                del ref.ReferencedFrameNumber
        _whole_segment_references(item.get("ContentSequence", []))
