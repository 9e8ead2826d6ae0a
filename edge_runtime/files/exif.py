"""EXIF orientation: turn decoded pixels the way viewers show the image, so that its mask matches what is seen.

A camera or a phone stores a JPEG as the sensor read it and says, in its EXIF ``Orientation`` tag (0x0112),
how to turn it for display; PNG (``eXIf``) and WEBP (``EXIF``) carry an EXIF block too. The decoders used
for them here return the stored pixels, so :func:`orientation` reads the tag from the bytes and
:func:`orient` applies it (TIFF has the tag in each page's directory, and OpenCV's TIFF reader turns the
pages itself, so TIFF is not turned again here): a JPEG stored 315 x 360
with Orientation 6 is segmented, and its mask written, 360 x 315, as every viewer shows it.
"""

from __future__ import annotations

import struct

import numpy as np

_TAG = 0x0112


def orientation(data: bytes, fmt: str) -> int:
    """The EXIF orientation (1-8) ``data`` declares for its (first) image; 1 when it says none or nonsense."""
    try:
        if fmt == "JPEG":
            value = _tiff_orientation(*_jpeg_exif(data))
        elif fmt == "PNG":
            value = _tiff_orientation(*_png_exif(data))
        elif fmt == "WEBP":
            value = _tiff_orientation(*_webp_exif(data))
        else:
            value = 1
    except (struct.error, IndexError, KeyError, ValueError):
        return 1
    return value if 1 <= value <= 8 else 1


def orient(pixels: np.ndarray, code: int) -> np.ndarray:
    """``pixels`` (H x W or H x W x C) turned as EXIF orientation ``code`` asks (1: as stored)."""
    if code == 2:
        turned = pixels[:, ::-1]
    elif code == 3:
        turned = pixels[::-1, ::-1]
    elif code == 4:
        turned = pixels[::-1]
    elif code == 5:
        turned = pixels.swapaxes(0, 1)
    elif code == 6:  # stored turned 90 degrees anticlockwise: turn it clockwise
        turned = pixels.swapaxes(0, 1)[:, ::-1]
    elif code == 7:
        turned = pixels.swapaxes(0, 1)[::-1, ::-1]
    elif code == 8:
        turned = pixels.swapaxes(0, 1)[::-1]
    else:
        return pixels
    return np.ascontiguousarray(turned)


def _tiff_orientation(data: bytes, start: int) -> int:
    """Orientation from the first IFD of the TIFF structure at ``data[start:]`` (-1: none there)."""
    if start < 0:
        return 1
    order = {b"II": "<", b"MM": ">"}[data[start : start + 2]]
    first = struct.unpack(order + "I", data[start + 4 : start + 8])[0]
    at = start + first
    count = struct.unpack(order + "H", data[at : at + 2])[0]
    for i in range(min(count, 1024)):
        entry = data[at + 2 + 12 * i : at + 14 + 12 * i]
        tag, typ = struct.unpack(order + "HH", entry[:4])
        if tag == _TAG and typ == 3:
            return int(struct.unpack(order + "H", entry[8:10])[0])
    return 1


def _jpeg_exif(data: bytes) -> tuple[bytes, int]:
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker in (0xDA, 0xD9):  # the image data begins: no EXIF before it
            break
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == 0xE1 and data[pos + 4 : pos + 10] == b"Exif\x00\x00":
            return data, pos + 10
        pos += 2 + length
    return data, -1


def _png_exif(data: bytes) -> tuple[bytes, int]:
    pos = 8
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        if kind == b"eXIf":
            return data, pos + 8
        if kind in (b"IDAT", b"IEND"):
            break
        pos += 12 + length
    return data, -1


def _webp_exif(data: bytes) -> tuple[bytes, int]:
    pos = 12
    while pos + 8 <= len(data):
        kind, length = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        if kind == b"EXIF":
            skip = 6 if data[pos + 8 : pos + 14] == b"Exif\x00\x00" else 0
            return data, pos + 8 + skip
        pos += 8 + length + (length & 1)
    return data, -1
