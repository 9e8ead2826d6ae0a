"""Test helpers: a tiny ONNX model built without TensorFlow, synthetic scans, the DDTI location, and waiting
for a real process or thread to get somewhere."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
#: The DDTI development split; EDGE_SEG_DDTI overrides the location.
DDTI = Path(os.environ.get("EDGE_SEG_DDTI", REPO.parent / "shared" / "data" / "ddti"))


def wait_for(cond: Callable[[], object], what: str, timeout: float = 60.0) -> None:
    """Poll ``cond`` until it holds; a liveness guard (AssertionError naming ``what`` after ``timeout`` s),
    never a speed check: nothing passes or fails on how fast it got there."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def status(out: Path) -> dict:
    """A daemon's ``OUT/.edge-seg/status.json`` as it is now ({} while it is missing or half-written)."""
    try:
        return json.loads((out / ".edge-seg" / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def tiny_metadata(size: int = 64, channels: int = 3, threshold: float = 0.5, **overrides) -> dict:
    """The tiny model's metadata, built as the export builds a real model's; ``overrides`` replace top-level keys."""
    from edge_runtime.core.metadata import model_metadata

    meta = model_metadata(
        name="tiny-dark-finder",
        version="0.0.1",
        architecture="test",
        height=size,
        width=size,
        channels=channels,
        threshold=threshold,
        export={"opset": 17},
    )
    for key, value in overrides.items():
        meta[key] = value
    return meta


def make_tiny_model(
    path: Path,
    size: int = 64,
    channels: int = 3,
    metadata: dict | str | None = None,
    batch: int | str = "N",
    graph_size: int | None = None,
    presence_threshold: float | None = None,
    refine_size: int | None = None,
) -> Path:
    """A real ONNX model that calls dark pixels nodule: P = sigmoid(40 * (0.12 - mean over channels)).

    Smoothed by a 5x5 average pool, so speckle does not matter but a dark blob does. With
    ``presence_threshold`` it has a second output, ``presence`` (N, 1) = the map's maximum, and metadata
    that gives it that threshold: a model with an image-level head, as ``edge-seg-train --views`` makes.
    With ``refine_size`` it has a second stage (``edge-seg-export --refine``): the input ``refine_image``
    (N, s, s, channels) and the output ``refine_probability`` = 1 - the crop's mean over channels.
    """
    import onnx
    from onnx import TensorProto, helper

    from edge_runtime.core.metadata import METADATA_KEY, attach_metadata

    gs = graph_size or size
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, gs, gs, channels])
    y = helper.make_tensor_value_info("probability", TensorProto.FLOAT, [batch, gs, gs, 1])
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["gray"], axes=[3], keepdims=1),  # N,H,W,1
        helper.make_node("Transpose", ["gray"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node(
            "AveragePool", ["nchw"], ["smooth"], kernel_shape=[5, 5], pads=[2, 2, 2, 2], count_include_pad=0
        ),
        helper.make_node("Transpose", ["smooth"], ["nhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("Sub", ["half", "nhwc"], ["centred"]),
        helper.make_node("Mul", ["centred", "gain"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["probability"]),
    ]
    outputs = [y]
    if presence_threshold is not None:
        nodes.append(helper.make_node("ReduceMax", ["probability"], ["presence"], axes=[1, 2], keepdims=0))
        outputs.append(helper.make_tensor_value_info("presence", TensorProto.FLOAT, [batch, 1]))
    inits = [
        helper.make_tensor("half", TensorProto.FLOAT, [], [0.12]),
        helper.make_tensor("gain", TensorProto.FLOAT, [], [40.0]),
    ]
    inputs = [x]
    if refine_size is not None:
        r = refine_size
        inputs.append(helper.make_tensor_value_info("refine_image", TensorProto.FLOAT, [batch, r, r, channels]))
        outputs.append(helper.make_tensor_value_info("refine_probability", TensorProto.FLOAT, [batch, r, r, 1]))
        nodes += [
            helper.make_node("ReduceMean", ["refine_image"], ["refine_gray"], axes=[3], keepdims=1),
            helper.make_node("Sub", ["one", "refine_gray"], ["refine_probability"]),
        ]
        inits.append(helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]))
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if metadata is None:
        metadata = tiny_metadata(size, channels)
        if presence_threshold is not None:
            metadata["presence"] = {"name": "presence", "activation": "sigmoid", "threshold": presence_threshold}
        if refine_size is not None:
            from edge_runtime.core.metadata import REFINE_SCHEMA_VERSION
            from edge_runtime.core.refine import refine_metadata

            metadata["schema"] = REFINE_SCHEMA_VERSION
            metadata["refine"] = refine_metadata(refine_size, refine_size, channels, 0.5)
    if isinstance(metadata, dict):
        attach_metadata(model, metadata)
    elif metadata != "":  # a raw string: for tests of metadata the runtime must refuse
        entry = model.metadata_props.add()
        entry.key = METADATA_KEY
        entry.value = metadata
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def synthetic(seed: int = 0, height: int = 200, width: int = 260) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic scan (uint8 gray) and its truth mask: a dark nodule the tiny model finds, placed by ``seed``.

    (Not the demo generator: that one imitates real scans, black frame included, for the bundled model.)
    """
    rng = np.random.default_rng(seed)
    centre = (int(width * rng.uniform(0.4, 0.6)), int(height * rng.uniform(0.4, 0.6)))
    axes = (max(3, int(width * rng.uniform(0.15, 0.25))), max(3, int(height * rng.uniform(0.15, 0.25))))
    return nodule_scan(height, width, centre, axes, seed)


def write_png(path: Path, image: np.ndarray) -> Path:
    from edge_runtime.files.durable import write_atomic
    from edge_runtime.files.scans import encode_png

    write_atomic(path, encode_png(image))
    return path


def nodule_scan(
    height: int = 240,
    width: int = 320,
    centre: tuple[int, int] = (170, 130),
    axes: tuple[int, int] = (60, 40),
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """A plain scan the tiny model segments well: bright speckled tissue, one dark ellipse at ``centre`` (x, y).

    Returns the uint8 image and the true mask (bool). ``axes`` are the (x, y) semi-axes in pixels.
    """
    import cv2

    rng = np.random.default_rng(seed)
    image = np.clip(rng.normal(170, 18, (height, width)), 0, 255).astype(np.uint8)
    truth = np.zeros((height, width), np.uint8)
    cv2.ellipse(truth, centre, axes, 0, 0, 360, 1, cv2.FILLED)
    image[truth > 0] = np.clip(rng.normal(25, 6, int(truth.sum())), 0, 255).astype(np.uint8)
    return image, truth.astype(bool)


def write_dicom(
    path: Path,
    frames: np.ndarray | list[np.ndarray],
    photometric: str | None = None,
    bits_stored: int | None = None,
    jpeg: bool = False,
    pixel_spacing: tuple[float, float] | None = None,
    us_region_cm: tuple[float, float] | None = None,
    pixel_data: bytes | None = None,
    **elements,
) -> Path:
    """Write a synthetic DICOM file with pydicom (no downloads).

    ``frames`` is one image (H x W gray or H x W x 3 RGB) or a list of them (multi-frame). The pixels
    are stored so that a correct reader gives ``frames`` back: MONOCHROME1 is stored inverted and
    YBR_FULL converted from RGB. ``jpeg`` stores JPEG Baseline (cv2-encoded frames, encapsulated;
    colour as YBR_FULL_422). ``us_region_cm`` = (PhysicalDeltaX, PhysicalDeltaY) in cm gives an
    ultrasound region; ``pixel_spacing`` = (row, column) mm gives PixelSpacing. ``pixel_data`` replaces
    the pixel bytes; ``elements`` set (or, with None, delete) any other element.
    """
    import cv2
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.pixels import convert_color_space
    from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, UltrasoundImageStorage, generate_uid

    stack = np.stack(frames) if isinstance(frames, list) else frames[np.newaxis]
    n, rows, cols = stack.shape[:3]
    colour = stack.ndim == 4
    photometric = photometric or ("RGB" if colour else "MONOCHROME2")
    bits = bits_stored or (8 if stack.dtype == np.uint8 else 16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit if jpeg else ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UltrasoundImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = UltrasoundImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = "YBR_FULL_422" if jpeg and colour else photometric
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
    if colour:
        ds.PlanarConfiguration = 0
    if n > 1:
        ds.NumberOfFrames = n
    if jpeg:
        encoded = [
            cv2.imencode(".jpg", cv2.cvtColor(f, cv2.COLOR_RGB2BGR) if colour else f)[1].tobytes() for f in stack
        ]
        ds.PixelData = encapsulate(encoded)
        ds["PixelData"].VR = "OB"
    else:
        stored = stack
        if photometric == "MONOCHROME1":
            stored = ((1 << bits) - 1 - stack.astype(np.int64)).astype(stack.dtype)
        elif photometric == "YBR_FULL":
            stored = convert_color_space(stack, "RGB", "YBR_FULL")
        ds.PixelData = stored.tobytes()
    if pixel_data is not None:
        ds.PixelData = pixel_data
    if pixel_spacing is not None:
        ds.PixelSpacing = list(pixel_spacing)
    if us_region_cm is not None:
        region = Dataset()
        region.RegionSpatialFormat, region.RegionDataType = 1, 1
        region.RegionLocationMinX0, region.RegionLocationMinY0 = 0, 0
        region.RegionLocationMaxX1, region.RegionLocationMaxY1 = cols - 1, rows - 1
        region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = 3  # cm
        region.PhysicalDeltaX, region.PhysicalDeltaY = us_region_cm
        ds.SequenceOfUltrasoundRegions = [region]
    for key, value in elements.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def us_ids(study: str | None = None, series: str | None = None, **more) -> dict:
    """The patient, study and series elements a real ultrasound instance carries (for ``write_dicom``)."""
    from pydicom.uid import generate_uid

    ids = {
        "PatientID": "EDGE-TEST-1",
        "PatientName": "Test^Patient",
        "PatientBirthDate": "",
        "PatientSex": "O",
        "StudyInstanceUID": study or generate_uid(),
        "SeriesInstanceUID": series or generate_uid(),
        "StudyDate": "20260101",
        "StudyTime": "120000",
        "StudyID": "1",
        "AccessionNumber": "A1",
        "ReferringPhysicianName": "",
        "SeriesNumber": 1,
        "InstanceNumber": 1,
        "Manufacturer": "test",
    }
    return {**ids, **more}


def scanner_us_ids(study: str | None = None, series: str | None = None, **more) -> dict:
    """A full header as an ultrasound scanner writes it: :func:`us_ids` plus equipment, institution,
    operators, descriptions, image type and a Latin-1 patient name (for ``write_dicom``)."""
    full = {
        "SpecificCharacterSet": "ISO_IR 100",
        "PatientName": "Müller^Anna",
        "PatientBirthDate": "19700402",
        "PatientSex": "F",
        "StudyDescription": "US Thyroid",
        "SeriesDescription": "Thyroid transverse",
        "BodyPartExamined": "THYROID",
        "Manufacturer": "ACME Medical",
        "ManufacturerModelName": "Sono 9000",
        "DeviceSerialNumber": "SN12345",
        "SoftwareVersions": "4.2.1",
        "InstitutionName": "General Hospital",
        "StationName": "US_ROOM1",
        "OperatorsName": "Tech^Tina",
        "PerformingPhysicianName": "Doc^Dan",
        "ImageType": ["ORIGINAL", "PRIMARY", "SMALL PARTS"],
        "ContentDate": "20260101",
        "ContentTime": "120500",
        "AcquisitionDateTime": "20260101120500",
        "SeriesNumber": 3,
        "InstanceNumber": 7,
        "PatientOrientation": "",
        "Laterality": "",
    }
    return us_ids(study, series, **{**full, **more})
