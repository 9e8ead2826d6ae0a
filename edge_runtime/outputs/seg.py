"""DICOM Segmentation (SEG) of one scan: a binary SEG with one segment, "thyroid nodule" (highdicom).

The SEG references its source instance, series and study (highdicom copies the patient and study and
writes the Referenced Series Sequence), names the model as the segment's algorithm (name, version,
family "Artificial Intelligence", the model file's sha256 as its parameter), gives the segment the
Tracking ID and UID that the SR's group for it repeats (:mod:`edge_runtime.outputs.ai_identity`), and
holds one frame per source frame, empty frames included, so a viewer shows "no nodule" rather than
nothing.

highdicom refuses a multi-frame source whose frames are not placed in a coordinate system (its message:
"Only a single frame is supported when the source image has no Frame of Reference UID"; ultrasound
cine loops, highdicom issue #284): :func:`seg_supported` asks highdicom's own test beforehand, and
such a scan gets a SR without a SEG (docs/OUTPUTS.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge_runtime._version import __version__
from edge_runtime.outputs.ai_identity import MANUFACTURER, SEGMENT_TRACKING_ID, ResultIdentity, series_description


def seg_supported(source: Any) -> bool:
    """Whether highdicom can write a SEG for this source: a single-frame image, or frames placed in a
    coordinate system (a Frame of Reference UID *and* image positions; an ultrasound loop has at most the
    UID). An instance of a multi-frame class (Ultrasound Multi-frame) is a loop even with one frame:
    highdicom reads such a source's geometry from functional groups it does not have."""
    from highdicom.spatial import get_image_coordinate_system
    from highdicom.utils import is_multiframe_image

    single = int(source.get("NumberOfFrames", 1) or 1) == 1 and not is_multiframe_image(source)
    return single or get_image_coordinate_system(source) is not None


def build_seg(source: Any, masks: list[np.ndarray], ident: ResultIdentity, threshold: float) -> Any:
    """The SEG dataset for ``source`` (a pydicom header) from its frames' 0/255 masks.

    The segment carries the scan's segment Tracking ID and UID, which the SR's group for it repeats.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="thyroid nodule",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Nodule,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=ident.seg_algorithm(),
        anatomic_regions=[codes.SCT.Thyroid],
        tracking_id=SEGMENT_TRACKING_ID,
        tracking_uid=ident.segment_tracking_uid,
    )
    model = ident.model
    pixels = np.stack([m > 0 for m in masks]).astype(np.uint8)
    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=hd.UID(),
        series_number=ident.series["seg"],
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=f"{model.name} {model.version}"[:64],
        software_versions=__version__,
        device_serial_number="0",
        series_description=series_description(model, "seg"),
        content_description=f"nodule where P > {threshold:g}"[:64],
        content_label="NODULE",
        omit_empty_frames=False,
    )
    # General Image: Patient Orientation is type 2C when the image has no orientation (ultrasound).
    seg.PatientOrientation = source.get("PatientOrientation", "")
    return seg
