"""Which files the runtime reads, by name and by first bytes; no decoding here, so naming rules stay light.

Also where a PNG or JPEG image ends inside its file (:func:`image_end`), found by walking the format's
own structure: a file that goes on after its image (some exporters append a few bytes) is still
read, and one that stops before its image ends is truncated.
"""

from __future__ import annotations

#: Image suffixes read with OpenCV (lower case).
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".jp2", ".j2k", ".j2c", ".jpx"}
)
#: DICOM suffixes, read with pydicom when the ``dicom`` extra is installed.
DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
#: The formats, by :func:`sniff_format`'s names, whose files can hold several images (pages, frames).
MULTI_IMAGE_FORMATS = frozenset({"TIFF", "GIF", "WEBP"})
#: What the runtime reads, for messages.
READ_FORMATS = "PNG, JPEG, BMP, TIFF, WEBP, GIF, JPEG 2000 or DICOM"

_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
)


def sniff_format(data: bytes) -> str | None:
    """The image format named by the file's first bytes, or None if it is not one we know."""
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "DICOM"
    return None


def image_end(data: bytes, fmt: str) -> int | None:
    """The offset just after the last byte of the PNG or JPEG image in ``data``; None if it is cut short.

    Other formats are not checked here (their decoders tell): returns ``len(data)``.
    """
    if fmt == "PNG":
        return _png_end(data)
    if fmt == "JPEG":
        return _jpeg_end(data)
    return len(data)


def is_animated_png(data: bytes) -> bool:
    """True for an APNG: an ``acTL`` chunk before the first ``IDAT``."""
    pos = 8
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        if kind == b"acTL":
            return True
        if kind in (b"IDAT", b"IEND"):
            return False
        pos += 12 + length
    return False


def _png_end(data: bytes) -> int | None:
    """Chunk by chunk (length, type, data, CRC) from the signature to ``IEND``."""
    pos = 8
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        end = pos + 12 + length
        if data[pos + 4 : pos + 8] == b"IEND":
            return end if end <= len(data) else None
        pos = end
    return None


# Markers without a length field: TEM, RST0-7 (and SOI, EOI, handled apart).
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


def _jpeg_end(data: bytes) -> int | None:
    """Segment by segment from SOI; through each scan's entropy-coded data to the ``EOI`` marker.

    Embedded thumbnails (EXIF, inside APP1) are skipped with their segment, so their own EOI is not
    taken for the image's.
    """
    n = len(data)
    pos = 2
    while pos + 1 < n:
        if data[pos] != 0xFF:
            return None  # not a marker where one must be: corrupt, let the decoder say so
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:
            return pos + 2
        if marker in _STANDALONE:
            pos += 2
            continue
        if pos + 4 > n:
            return None
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker != 0xDA:  # not SOS
            continue
        # Entropy-coded data: 0xFF is followed by 0x00 (a stuffed byte) or RSTn inside it.
        while True:
            pos = data.find(b"\xff", pos)
            if pos < 0 or pos + 1 >= n:
                return None
            nxt = data[pos + 1]
            if nxt == 0x00 or 0xD0 <= nxt <= 0xD7 or nxt == 0xFF:
                pos += 1 if nxt == 0xFF else 2
                continue
            break
    return None
