"""DICOM scans: pixels and pixel spacing from a DICOM file's bytes, with pydicom (the ``dicom`` extra).

Handled: single- and multi-frame images; MONOCHROME2, MONOCHROME1 (inverted so that bright means
echogenic, as in MONOCHROME2), RGB, YBR_FULL / YBR_FULL_422 (pydicom converts them to RGB, also for
JPEG-compressed data), PALETTE COLOR (the colour lookup table is applied); 8-bit samples stay 8-bit,
more than 8 bits stored gives 16-bit. Compressed transfer syntaxes are decoded by pydicom's plugins:
JPEG Baseline by pylibjpeg + pylibjpeg-libjpeg (installed by the extra), RLE by pydicom itself.

Pixel spacing, in millimetres as (row, column): from the first ultrasound region
(SequenceOfUltrasoundRegions) whose physical units are cm in both directions, else from PixelSpacing,
else from ImagerPixelSpacing, else unknown (None). Every such calibrated region is kept with its
bounds (:attr:`DicomImage.regions`): which one applies to a nodule is
:mod:`edge_runtime.core.calibration`'s business.
Every problem is a :class:`~edge_runtime.errors.ScanError` naming the file.
"""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_runtime.core.calibration import Region
from edge_runtime.errors import ScanError
from edge_runtime.files import headers

if TYPE_CHECKING:
    from pydicom import Dataset

log = logging.getLogger(__name__)

INSTALL_HINT = 'DICOM needs the dicom extra: pip install "edge-seg[dicom]"'
#: PhysicalUnitsX/YDirection code for centimetres (DICOM PS3.3 C.8.5.5.1.15).
_UNITS_CM = 3
#: Photometric interpretations pydicom's decoders return as RGB (when not asked for raw data).
_YBR = frozenset({"YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"})


@dataclass
class DicomImage:
    """What the runtime takes from a DICOM file."""

    frames: list[np.ndarray]  #: H x W (gray) or H x W x 3 (RGB), uint8 or uint16, one per frame
    spacing_mm: tuple[float, float] | None  #: (row, column) pixel spacing in mm, or None when unknown
    spacing_source: str | None  #: "ultrasound_region", "pixel_spacing", "imager_pixel_spacing" or None
    info: dict[str, Any] = field(default_factory=dict)  #: transfer syntax, photometric interpretation, bits
    #: the pydicom dataset without its pixel data: the identifiers DICOM results reference (SEG, SR)
    header: Dataset | None = None
    #: the calibrated ultrasound regions (cm in both directions), in file order
    regions: tuple[Region, ...] = ()


def _pydicom(path: str | Path):
    try:
        import pydicom
        from pydicom.pixels import get_decoder
    except ImportError:
        raise ScanError(path, INSTALL_HINT) from None
    return pydicom, get_decoder


def read_dicom(data: bytes, path: str | Path = "<bytes>") -> DicomImage:
    """Decode a DICOM file's bytes: frames, pixel spacing and its source. Raises :class:`ScanError`."""
    pydicom, get_decoder = _pydicom(path)
    ds = _parse(pydicom, data, path)
    tsyntax = check_image(ds, path)
    frames = _decode(pydicom, get_decoder, ds, tsyntax, path)
    spacing, source = pixel_spacing(ds)
    info = {
        "transfer_syntax": str(tsyntax),
        "transfer_syntax_name": getattr(tsyntax, "name", str(tsyntax)),
        "photometric_interpretation": str(ds.get("PhotometricInterpretation", "")),
        "bits_stored": int(ds.get("BitsStored", 0) or 0),
        "modality": str(ds.get("Modality", "")),
    }
    del ds.PixelData  # the pixels are in ``frames``; the header alone is kept, for the results that reference it
    return DicomImage(frames, spacing, source, info, ds, ultrasound_regions(ds))


def check_image(ds: Any, path: str | Path = "<bytes>") -> Any:
    """Everything about a parsed dataset's pixels that can be checked without decoding them; its transfer syntax.

    Pixel data present and integer; Rows, Columns and frames within the limits and the decode budget; native
    pixel data exactly as long as the header says (longer would give frames the header hides, shorter is
    truncated); each encapsulated frame's own header (SOF, SIZ) agreeing with Rows and Columns. Raises
    :class:`ScanError` naming ``path``; the storage SCP refuses a received instance with the same reasons.
    """
    tsyntax = ds.file_meta.get("TransferSyntaxUID") if "file_meta" in dir(ds) else None
    if tsyntax is None:
        raise ScanError(path, "corrupt DICOM: its file meta information names no transfer syntax")
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ScanError(path, "DICOM file has no pixel data (not an image: a report, structured data or DICOMDIR?)")
    if "PixelData" not in ds:
        raise ScanError(path, "DICOM float pixel data is not supported (expected integer pixels)")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        n = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        allocated = int(ds.get("BitsAllocated", 8) or 8)
        pixel_data = ds.PixelData
    except Exception as exc:  # pydicom raises many types for a malformed or cut element
        raise ScanError(
            path, f"corrupt DICOM: image size or pixel data missing or malformed ({_first_line(exc)})"
        ) from None
    if pixel_data is None:
        raise ScanError(path, "corrupt DICOM: its pixel data element is empty")
    frame = headers.Declared(cols, rows, max(1, min(samples, 4)) * (2 if allocated > 8 else 1))
    headers.check_declared(path, "DICOM", [frame] * max(n, 1))
    if getattr(tsyntax, "is_encapsulated", False):
        _check_encapsulated(pixel_data, rows, cols, n, path)
    else:
        _check_native_length(ds, rows, cols, n, samples, allocated, path)
    return tsyntax


def _parse(pydicom, data: bytes, path: str | Path):
    has_preamble = len(data) >= 132 and data[128:132] == b"DICM"
    try:
        # Without the "DICM" preamble (old files named .dcm) it is read as a bare dataset and must then name an image.
        ds = pydicom.dcmread(io.BytesIO(data), force=not has_preamble)
    except Exception as exc:  # pydicom raises many types for bad input
        raise ScanError(path, f"corrupt or truncated DICOM: {_first_line(exc)}") from None
    if not has_preamble and "Rows" not in ds and "PixelData" not in ds:
        raise ScanError(path, "not a DICOM file: no 'DICM' preamble and no image elements")
    if not has_preamble and "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian  # what pydicom assumed when parsing
    return ds


def _check_native_length(ds, rows: int, cols: int, n: int, samples: int, allocated: int, path: str | Path) -> None:
    """Refuse native pixel data longer than the header's frames (it would be decoded as extra frames)."""
    per_frame = rows * cols * samples
    if str(ds.get("PhotometricInterpretation", "")).strip() == "YBR_FULL_422":
        per_frame = rows * cols * 2
    expected = (per_frame * n * allocated + 7) // 8
    actual = len(ds.PixelData)
    header = f"the header ({n} frame(s) of {cols} x {rows}, {samples} sample(s) of {allocated} bits)"
    if actual < expected:
        cut = f"{actual:,} bytes where {header} says {expected:,}"
        raise ScanError(path, f"corrupt or truncated DICOM pixel data: {cut}")
    if actual > expected + (expected & 1):  # one pad byte makes an odd length even
        raise ScanError(path, f"DICOM pixel data is {actual:,} bytes but {header} says {expected:,}: refused")


def _check_encapsulated(pixel_data: bytes, rows: int, cols: int, n: int, path: str | Path) -> None:
    """Each encapsulated image's own header (JPEG / JPEG-LS SOF, JPEG 2000 SIZ) against Rows, Columns and n.

    Every fragment that starts an image is read, before anything is decoded: a frame that declares another
    size, or more images than the header's frames, is refused.
    """
    from pydicom.encaps import generate_fragments

    images = 0
    try:
        fragments = list(generate_fragments(pixel_data))
    except Exception as exc:
        raise ScanError(path, f"corrupt encapsulated DICOM pixel data: {_first_line(exc)}") from None
    for fragment in fragments:
        declared = headers.jpeg_family_frame(fragment, path)
        if not declared:
            continue  # a continuation fragment, or a codec whose frames carry no size (RLE)
        images += 1
        size = declared[0]
        if (size.width, size.height) != (cols, rows):
            raise ScanError(
                path,
                f"DICOM frame {images} declares {size.width} x {size.height} pixels in its own header, "
                f"the DICOM header {cols} x {rows}: refused before decoding",
            )
    if images > n:
        raise ScanError(path, f"DICOM pixel data holds {images} encapsulated frames, the header says {n}: refused")


def _decode(pydicom, get_decoder, ds, tsyntax, path: str | Path) -> list[np.ndarray]:
    """The frames, decoded one at a time (never the whole array and its frames side by side)."""
    name = getattr(tsyntax, "name", str(tsyntax))
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        raise ScanError(path, f"DICOM transfer syntax {name} ({tsyntax}) is not supported") from None
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "a decoding plugin"
        raise ScanError(path, f"cannot decode {name} pixel data: needs {missing} ({INSTALL_HINT})")
    frames: list[np.ndarray] = []
    try:
        for arr, meta in decoder.iter_array(ds, raw=False):
            frames += _to_frames(pydicom, ds, arr, {**meta, "number_of_frames": 1}, path)
    except ScanError:
        raise
    except Exception as exc:
        raise ScanError(path, f"corrupt or truncated DICOM pixel data ({name}): {_first_line(exc)}") from None
    return frames


def _to_frames(pydicom, ds, arr: np.ndarray, meta: dict, path: str | Path) -> list[np.ndarray]:
    """The decoded array as a list of frames the runtime reads: gray or RGB, uint8 or uint16."""
    photometric = str(meta.get("photometric_interpretation", ds.get("PhotometricInterpretation", ""))).strip()
    samples = int(meta.get("samples_per_pixel", 1))
    nframes = int(meta.get("number_of_frames", 1) or 1)
    bits = int(meta.get("bits_stored", 8) or 8)
    if nframes == 1:
        arr = arr[np.newaxis]
    if int(meta.get("pixel_representation", 0)) == 1:  # signed: shift into the unsigned range
        arr = (arr.astype(np.int32) + (1 << (bits - 1))).clip(0, (1 << bits) - 1)
    if photometric == "PALETTE COLOR":
        try:
            arr = pydicom.pixels.apply_color_lut(arr, ds)
        except Exception as exc:
            raise ScanError(path, f"corrupt DICOM palette (colour lookup table): {_first_line(exc)}") from None
        samples = 3
        bits = 8 if arr.dtype == np.uint8 else 16
    elif photometric == "MONOCHROME1":  # 0 is white: invert, so bright is echogenic as everywhere else
        arr = ((1 << bits) - 1) - arr.astype(np.int32)
    elif samples == 3 and photometric not in ({"RGB"} | _YBR):
        raise ScanError(path, f"DICOM photometric interpretation {photometric!r} is not supported")
    elif samples not in (1, 3):
        raise ScanError(path, f"DICOM with {samples} samples per pixel is not supported")
    dtype = np.uint8 if bits <= 8 else np.uint16
    if arr.dtype != dtype:
        arr = arr.clip(0, np.iinfo(dtype).max).astype(dtype)
    return [np.ascontiguousarray(f) for f in arr]


def ultrasound_regions(ds) -> tuple[Region, ...]:
    """The regions of SequenceOfUltrasoundRegions calibrated in cm in both directions, with their bounds.

    A region without its bounds (RegionLocationMinX0 ... MaxY1, type 1 in the standard) is taken as the
    whole frame; one with other units (a Doppler trace: cm/s against seconds) is not a place to measure.
    """
    found = []
    for region in ds.get("SequenceOfUltrasoundRegions", None) or []:
        try:
            units = (int(region.PhysicalUnitsXDirection), int(region.PhysicalUnitsYDirection))
            dx, dy = abs(float(region.PhysicalDeltaX)) * 10.0, abs(float(region.PhysicalDeltaY)) * 10.0
        except (AttributeError, TypeError, ValueError):
            continue
        if units != (_UNITS_CM, _UNITS_CM) or not (_valid(dx) and _valid(dy)):
            continue
        bounds = []
        for key, default in (("MinX0", 0), ("MinY0", 0), ("MaxX1", 1 << 31), ("MaxY1", 1 << 31)):
            try:
                bounds.append(int(region.get(f"RegionLocation{key}", default)))
            except (TypeError, ValueError):
                bounds.append(default)
        found.append(Region(bounds[0], bounds[1], bounds[2], bounds[3], (dy, dx)))
    return tuple(found)


def pixel_spacing(ds) -> tuple[tuple[float, float] | None, str | None]:
    """(row, column) spacing in mm and where it came from: an ultrasound region in cm, PixelSpacing,
    ImagerPixelSpacing, or none."""
    regions = ultrasound_regions(ds)
    if regions:
        return regions[0].spacing, "ultrasound_region"
    for key, source in (("PixelSpacing", "pixel_spacing"), ("ImagerPixelSpacing", "imager_pixel_spacing")):
        try:
            row, col = (float(v) for v in ds.get(key) or ())
        except (TypeError, ValueError):
            continue
        if _valid(row) and _valid(col):
            return (row, col), source
    return None, None


def _valid(mm: float) -> bool:
    return math.isfinite(mm) and 0.0 < mm < 100.0


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
