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
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import simplejpeg

from edge_runtime import MAX_PIXELS
from edge_runtime.errors import ScanError, reading_scan
from edge_runtime.files import exif, headers, integrity
from edge_runtime.files.formats import (
    DICOM_SUFFIXES,
    MULTI_IMAGE_FORMATS,
    READ_FORMATS,
    image_end,
    is_animated_png,
    sniff_format,
)

if TYPE_CHECKING:
    from pydicom import Dataset

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
    #: and ``ultrasound_regions`` (calibrated :class:`~edge_runtime.core.calibration.Region` s)
    extra: dict = field(default_factory=dict)
    #: a DICOM scan's header: its pydicom dataset without the pixel data (what its DICOM results are
    #: made from); None for other scans
    dicom_header: Dataset | None = None


def decode_image(data: bytes, name: str | Path = "<bytes>") -> np.ndarray:
    """Decode one image's bytes to pixels: H x W (gray) or H x W x 3 (RGB), 8 or 16 bit.

    A file holding several images (TIFF pages, GIF or WEBP frames) gives its first here; :func:`decode_frames`
    gives them all. Raises :class:`ScanError` naming ``name`` and the reason.
    """
    return decode_frames(data, name)[0]


def decode_frames(data: bytes, name: str | Path = "<bytes>") -> list[np.ndarray]:
    """Decode PNG/JPEG/BMP/TIFF/WEBP/GIF/JPEG 2000 bytes to its images, in order (one for most files).

    Each is H x W (gray) or H x W x 3 (RGB), 8 or 16 bit: RGBA is returned as RGB (alpha dropped), BGR
    from OpenCV is turned into RGB. Pages of a TIFF and frames of an animated GIF, WEBP or PNG are the
    scan's frames, like a multi-frame DICOM's. A PNG or JPEG followed by extra bytes is read (a
    warning says how many were ignored); one that ends before its image does is refused as truncated.
    Raises :class:`ScanError` naming ``name`` and the reason.
    """
    if not data:
        raise ScanError(name, "empty file (0 bytes)")
    fmt = sniff_format(data)
    if fmt is None:
        raise ScanError(name, f"not an image: the content is not {READ_FORMATS}")
    if fmt == "DICOM":
        raise ScanError(name, "DICOM file: read it with read_scan() (needs the [dicom] extra)")
    end = image_end(data, fmt)
    if end is None:
        what = "its IEND chunk" if fmt == "PNG" else "its end-of-image marker"
        raise ScanError(name, f"truncated {fmt}: the file ends before {what}")
    if end < len(data):
        log.warning("%s: %d byte(s) after the end of the %s image are ignored", name, len(data) - end, fmt)
        data = data[:end]
    # Every page's and frame's declared size, and their total, against the limits before any is decoded.
    declared = headers.declared_frames(data, fmt, name)
    headers.check_declared(name, fmt, declared)
    integrity.check_coded_data(data, fmt, name)  # damage the decoder would decode past, or print unnamed
    buf = np.frombuffer(data, dtype=np.uint8)
    multi = fmt in MULTI_IMAGE_FORMATS or (fmt == "PNG" and is_animated_png(data))
    try:
        if multi:
            decoded = _decode_pages(buf, fmt, declared, name)
        elif fmt == "JPEG":
            jpeg = _decode_jpeg(data, buf, name)
            decoded = [] if jpeg is None else [jpeg]
        else:
            one = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
            decoded = [] if one is None else [one]
    except cv2.error as exc:
        if "MAX_IMAGE_PIXELS" in str(exc):
            raise ScanError(name, f"image too large: over the limit of {MAX_PIXELS:,} pixels") from None
        raise ScanError(name, f"corrupt {fmt} data ({str(exc).strip().splitlines()[-1]})") from None
    if not decoded or any(p is None or p.size == 0 for p in decoded):
        raise ScanError(name, f"corrupt or truncated {fmt} data: it could not be decoded")
    turn = exif.orientation(data, fmt)
    # One frame at a time, each decoder frame replaced by its RGB one (in place when it is BGR): the frames
    # never exist twice over, so a file of many frames peaks at its frames and one more, not twice them.
    frames = decoded
    for i, raw in enumerate(decoded):
        frames[i] = exif.orient(_to_rgb(raw, name), turn)
    del raw
    for pixels in frames:
        if pixels.shape[0] * pixels.shape[1] > MAX_PIXELS:
            raise ScanError(
                name,
                f"image too large: {pixels.shape[1]} x {pixels.shape[0]} pixels is over the limit of {MAX_PIXELS:,}",
            )
    if len(frames) > 1:
        sizes = sorted({(p.shape[1], p.shape[0]) for p in frames})
        if len(sizes) > 1:
            shown = ", ".join(f"{w} x {h}" for w, h in sizes[:3])
            raise ScanError(name, f"its {len(frames)} {fmt} pages are not all the same size ({shown}); split them")
        kinds = {(p.ndim, p.dtype.str) for p in frames}
        if len(kinds) > 1:
            raise ScanError(name, f"its {len(frames)} {fmt} pages mix gray and colour or bit depths; split them")
    return frames


#: Decoded bytes asked of OpenCV at once for a file of many pages or frames: it holds what it decodes twice
#: until it returns. libtiff reaches a page without decoding those before it; a GIF, WEBP or APNG frame is
#: composed on the ones before, so each batch of those decodes its earlier frames again (about twice the
#: time for a cine of 100-150 MB, frames held, against one call) to peak at the frames and one batch more.
_BATCH_BYTES = 64 * 1024 * 1024


def _decode_pages(buf: np.ndarray, fmt: str, declared: list[headers.Declared], name: str | Path) -> list[np.ndarray]:
    """The pages or frames, never more than the ``declared`` ones whose sizes were checked.

    They are decoded a batch of :data:`_BATCH_BYTES` at a time (TIFF pages with ``cv2.imdecodemulti``,
    GIF, WEBP and APNG frames with ``cv2.imdecodeanimation``, whose ranges OpenCV 5.1 gets right where
    ``imdecodemulti``'s are wrong for them), so decoding peaks at the file's frames and one batch more, not
    twice the frames. One more image than declared is asked for, to tell a file whose decoder finds
    pages its headers did not show (refused).
    """
    n, images = len(declared), list[np.ndarray]()
    start = 0
    while start < n:
        end, size = start + 1, declared[start].pixels * declared[start].pixel_bytes
        while end < n and size + declared[end].pixels * declared[end].pixel_bytes <= _BATCH_BYTES:
            size += declared[end].pixels * declared[end].pixel_bytes
            end += 1
        count = end - start + (1 if end == n else 0)
        if fmt == "TIFF":
            ok, part = cv2.imdecodemulti(buf, cv2.IMREAD_UNCHANGED, None, (start, start + count))
        else:
            ok, animation = cv2.imdecodeanimation(buf, start, count)
            part = list(animation.frames)
        if not ok or len(part) < end - start:
            return []
        if len(part) > end - start:
            raise ScanError(name, f"corrupt: its headers declare {n} image(s) but it holds more")
        images.extend(part)
        del part
        start = end
    return images


def _decode_jpeg(data: bytes, buf: np.ndarray, name: str | Path) -> np.ndarray | None:
    """A JPEG's pixels (gray, or BGR as OpenCV gives them), any decoder warning being the scan's failure.

    libjpeg-turbo (through simplejpeg) in strict mode stops at what libjpeg only warns of ("Corrupt JPEG
    data: premature end of data segment", bytes zeroed or cut): a picture decoded past such damage is
    grey blocks or a smeared nodule, and must not be segmented and called "ok". A JPEG simplejpeg cannot
    decode even leniently (CMYK, 12-bit) is left to OpenCV.
    """
    try:
        gray = simplejpeg.decode_jpeg_header(data)[2] == "Gray"
        pixels = simplejpeg.decode_jpeg(data, colorspace="GRAY" if gray else "BGR", strict=True)
    except ValueError as exc:
        try:
            simplejpeg.decode_jpeg(data, colorspace="GRAY", strict=False)
        except ValueError:
            one = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)  # a kind simplejpeg does not read
            return one
        raise ScanError(name, f"corrupt JPEG data: {str(exc).strip()} (libjpeg)") from None
    return pixels[:, :, 0] if gray else pixels


def _to_rgb(pixels: np.ndarray, name: str | Path) -> np.ndarray:
    if pixels.ndim == 3:
        if pixels.shape[2] == 4:
            return cv2.cvtColor(pixels, cv2.COLOR_BGRA2RGB)
        if pixels.shape[2] == 3:  # in place: the decoder's frame is not used again
            return (
                cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB, dst=pixels)
                if pixels.flags.writeable
                else (cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB))
            )
        if pixels.shape[2] == 1:
            return pixels[:, :, 0]
        raise ScanError(name, f"unsupported channel count {pixels.shape[2]}")
    return pixels


def read_bytes(path: Path) -> tuple[bytes, os.stat_result]:
    """Read a whole file, refusing ones over :data:`MAX_FILE_BYTES`; errors name the file."""
    try:
        # Non-blocking open, so that a FIFO named like a scan is refused rather than waited on forever.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        with open(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ScanError(path, f"not a regular file ({_file_kind(st.st_mode)}), not a scan")
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


def _file_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a directory" if stat.S_ISDIR(mode) else "not a file"


def read_scan(path: str | Path) -> Scan:
    """Read, hash and decode one scan file (PNG, JPEG, BMP, TIFF, WEBP, GIF, JPEG 2000; DICOM with the extra).

    A library's own log line or warning while it reads names the file (:func:`~edge_runtime.errors.reading_scan`).
    """
    with reading_scan(path):
        return _read_scan(Path(path))


def _read_scan(path: Path) -> Scan:
    data, st = read_bytes(path)
    digest = hashlib.sha256(data).hexdigest()
    fmt = sniff_format(data) if data else None
    if fmt == "DICOM" or (path.suffix.lower() in DICOM_SUFFIXES and data):
        from edge_runtime.files.dicom import read_dicom  # pydicom is an optional dependency, imported on first use

        image = read_dicom(data, path)
        extra = {
            "pixel_spacing_source": image.spacing_source,
            "dicom": image.info,
            "ultrasound_regions": image.regions,
        }
        size, mtime = st.st_size, st.st_mtime_ns
        return Scan(path, image.frames, digest, size, mtime, image.spacing_mm, "DICOM", extra, image.header)
    frames = decode_frames(data, path)
    return Scan(path, frames, digest, st.st_size, st.st_mtime_ns, None, fmt or "")


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
