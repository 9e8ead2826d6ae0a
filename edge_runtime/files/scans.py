"""Scans as bytes and pixels: reading, hashing and decoding a scan file, and encoding PNGs.

The file is read once into memory, hashed (sha256, for the ledger and the findings) and decoded from
those same bytes, so what was hashed is what was segmented. A file that cannot be used raises
:class:`~edge_runtime.errors.ScanError` with a reason a person can act on. Writing them durably is
:mod:`edge_runtime.files.durable`'s job.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edge_runtime import MAX_PIXELS
from edge_runtime.errors import ScanError
from edge_runtime.files.formats import DICOM_SUFFIXES, sniff_format

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 512 * 1024 * 1024

with contextlib.suppress(Exception):  # keep libpng/libjpeg warnings off the console; we report ourselves
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


@dataclass
class Scan:
    """One scan as read from disk: its frames (usually one) and what identifies its content."""

    path: Path
    frames: list[np.ndarray]
    sha256: str
    size: int
    mtime_ns: int
    #: (row, column) pixel spacing in millimetres, when the file says (DICOM); else None.
    pixel_spacing_mm: tuple[float, float] | None = None
    format: str = ""
    #: reader-specific facts; DICOM: ``pixel_spacing_source``, ``dicom`` (transfer syntax, photometric, bits)
    #: and ``dicom_header`` (the pydicom dataset without its pixel data)
    extra: dict = field(default_factory=dict)


def _png_size(data: bytes) -> tuple[int, int] | None:
    if len(data) >= 24 and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return None


def decode_image(data: bytes, name: str | Path = "<bytes>") -> np.ndarray:
    """Decode PNG/JPEG/BMP/TIFF bytes to pixels: H x W (gray) or H x W x 3 (RGB), 8 or 16 bit.

    RGBA is returned as RGB (alpha dropped); BGR from OpenCV is turned into RGB.
    Raises :class:`ScanError` naming ``name`` and the reason.
    """
    if not data:
        raise ScanError(name, "empty file (0 bytes)")
    fmt = sniff_format(data)
    if fmt is None:
        raise ScanError(name, "not an image: the content is not PNG, JPEG, BMP, TIFF or DICOM")
    if fmt == "DICOM":
        raise ScanError(name, "DICOM file: read it with read_scan() (needs the [dicom] extra)")
    if fmt == "PNG":
        dims = _png_size(data)
        if dims and dims[0] * dims[1] > MAX_PIXELS:
            raise ScanError(name, f"image too large: {dims[0]} x {dims[1]} pixels is over the limit of {MAX_PIXELS:,}")
    if fmt == "PNG" and b"IEND" not in data[-64:]:
        raise ScanError(name, "truncated PNG: the file ends before its IEND chunk")
    if fmt == "JPEG" and b"\xff\xd9" not in data[-64:]:
        raise ScanError(name, "truncated JPEG: the file ends before its end-of-image marker")
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        pixels = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        if "MAX_IMAGE_PIXELS" in str(exc):
            raise ScanError(name, f"image too large: over the limit of {MAX_PIXELS:,} pixels") from None
        raise ScanError(name, f"corrupt {fmt} data ({str(exc).strip().splitlines()[-1]})") from None
    if pixels is None or pixels.size == 0:
        raise ScanError(name, f"corrupt or truncated {fmt} data: it could not be decoded")
    if pixels.shape[0] * pixels.shape[1] > MAX_PIXELS:
        raise ScanError(
            name,
            f"image too large: {pixels.shape[1]} x {pixels.shape[0]} pixels is over the limit of {MAX_PIXELS:,}",
        )
    if pixels.ndim == 3:
        if pixels.shape[2] == 4:
            pixels = cv2.cvtColor(pixels, cv2.COLOR_BGRA2RGB)
        elif pixels.shape[2] == 3:
            pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
        elif pixels.shape[2] == 1:
            pixels = pixels[:, :, 0]
        else:
            raise ScanError(name, f"unsupported channel count {pixels.shape[2]}")
    return pixels


def read_bytes(path: Path) -> tuple[bytes, os.stat_result]:
    """Read a whole file, refusing ones over :data:`MAX_FILE_BYTES`; errors name the file."""
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            if st.st_size > MAX_FILE_BYTES:
                raise ScanError(path, f"file too large: {st.st_size:,} bytes is over the limit of {MAX_FILE_BYTES:,}")
            # Ask for the size fstat gave (+1, to see growth): read(n) allocates n bytes up front, and
            # asking for the limit cost a 512 MB mmap and mremap per scan (bench/README.md, tuning log).
            data = fh.read(st.st_size + 1)
            if len(data) > st.st_size:  # still growing: take the rest (the caller sees the change)
                data += fh.read(MAX_FILE_BYTES + 1 - len(data))
    except FileNotFoundError:
        raise ScanError(path, "the file disappeared before it could be read") from None
    except IsADirectoryError:
        raise ScanError(path, "is a directory, not a scan") from None
    except OSError as exc:
        raise ScanError(path, f"cannot read the file: {exc.strerror or exc}") from None
    return data, st


def read_scan(path: str | Path) -> Scan:
    """Read, hash and decode one scan file (PNG, JPEG, BMP, TIFF; DICOM with the ``dicom`` extra)."""
    path = Path(path)
    data, st = read_bytes(path)
    digest = hashlib.sha256(data).hexdigest()
    fmt = sniff_format(data) if data else None
    if fmt == "DICOM" or (path.suffix.lower() in DICOM_SUFFIXES and data):
        from edge_runtime.files.dicom import read_dicom  # pydicom is an optional dependency, imported on first use

        image = read_dicom(data, path)
        extra = {"pixel_spacing_source": image.spacing_source, "dicom": image.info, "dicom_header": image.header}
        return Scan(path, image.frames, digest, st.st_size, st.st_mtime_ns, image.spacing_mm, "DICOM", extra)
    pixels = decode_image(data, path)
    return Scan(path, [pixels], digest, st.st_size, st.st_mtime_ns, None, fmt or "")


# Compression level 1: masks are mostly zeros, so level 1 is nearly as small as 9 and several times faster.
_PNG_COLOUR = [cv2.IMWRITE_PNG_COMPRESSION, 1]
# Single-channel images (masks): no row filter and run-length zlib. A 0/255 mask is all runs, so this is
# ~4x faster to encode than libpng's adaptive filters and the file is smaller (bench/README.md).
_PNG_GRAY = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
if hasattr(cv2, "IMWRITE_PNG_FILTER"):  # OpenCV >= 4.11
    _PNG_GRAY += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]


def encode_png(image: np.ndarray, name: str | Path = "<mask>") -> bytes:
    """PNG-encode an 8- or 16-bit image (RGB images are given in RGB order)."""
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", image, _PNG_GRAY if image.ndim == 2 else _PNG_COLOUR)
    if not ok:
        raise OSError(f"{name}: PNG encoding failed")
    return buf.tobytes()
