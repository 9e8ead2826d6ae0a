"""Which files the runtime reads, by name and by first bytes; no decoding here, so naming rules stay light."""

from __future__ import annotations

#: Image suffixes read with OpenCV (lower case).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
#: DICOM suffixes, read with pydicom when the ``dicom`` extra is installed.
DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})

_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


def sniff_format(data: bytes) -> str | None:
    """The image format named by the file's first bytes, or None if it is not one we know."""
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "DICOM"
    return None
