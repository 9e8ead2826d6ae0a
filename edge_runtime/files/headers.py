"""The sizes an image file declares, read from its headers without decoding a pixel.

A small file can declare a huge image (a 1 KB JPEG saying 50000 x 50000, a TIFF of a hundred 6000 x 6000
pages behind a 1 x 1 first page), and a decoder allocates what the header says before it finds that the
data is not there. So every page's and frame's declared size is read here first, from the format's own
structure, and :func:`check_declared` refuses the file before anything is decoded. Nothing here imports
an image library: it walks bytes.

Each reader returns one :class:`Declared` per page or frame as the decoder will return it (animated GIF,
WEBP and PNG frames are composed on the canvas, so each is the canvas's size), or raises
:class:`~edge_runtime.errors.ScanError` when the structure itself is broken in a way that hides the
size. JPEG-LS frames (DICOM only) share JPEG's markers: their SOF55 is read like a SOF.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from edge_runtime import MAX_PIXELS
from edge_runtime.errors import ScanError

#: Pixels of all the images of one multi-image file together (as for multi-frame DICOM).
MAX_TOTAL_PIXELS = 4 * MAX_PIXELS
#: The most pages or frames a file is walked for; past this it is refused without counting on.
MAX_FRAMES = 100_000
#: Environment variable holding the decode-memory budget in MiB (``--decode-budget-mb`` sets it).
BUDGET_ENV = "EDGE_SEG_DECODE_BUDGET_MB"
#: Default decode-memory budget of one scan, in MiB: what its decoded frames may hold at once.
DEFAULT_BUDGET_MB = 1024


@dataclass(frozen=True)
class Declared:
    """One page or frame as its header declares it."""

    width: int
    height: int
    #: bytes one decoded pixel takes (samples x bytes per sample), as the decoder will return it
    pixel_bytes: int = 3

    @property
    def pixels(self) -> int:
        return self.width * self.height


def decode_budget_bytes() -> int:
    """The decode-memory budget in bytes: ``EDGE_SEG_DECODE_BUDGET_MB`` MiB, else the default."""
    raw = os.environ.get(BUDGET_ENV, "").strip()
    try:
        mb = float(raw) if raw else float(DEFAULT_BUDGET_MB)
    except ValueError:
        mb = float(DEFAULT_BUDGET_MB)
    if not 0 < mb < 1e9:  # also NaN
        mb = float(DEFAULT_BUDGET_MB)
    return int(mb * 1024 * 1024)


#: decoded bytes at the decoder's peak, per decoded byte, where it is not 2 (measured: a 20-frame 1200 x 1200
#: animated WEBP peaks at 221 MiB for its 82 MiB of frames)
PEAK_FACTOR = {"WEBP": 3}


def check_declared(name: str | Path, fmt: str, frames: list[Declared], what: str = "") -> None:
    """Refuse, naming ``name``, a file whose declared frames pass a limit: per frame, in all, or the budget.

    The budget counts the decoded pixels twice (the decoder's buffer and the RGB copy made from it), an
    animated WEBP's three times (:data:`PEAK_FACTOR`: OpenCV's WEBP decoder peaks at 2.7 times its frames).
    """
    kind = what or ("page" if fmt == "TIFF" else "frame")
    for i, frame in enumerate(frames):
        if frame.width <= 0 or frame.height <= 0:
            raise ScanError(name, f"corrupt {fmt}: {kind} {i + 1} declares {frame.width} x {frame.height} pixels")
        if frame.pixels > MAX_PIXELS:
            where = f"{kind} {i + 1} of {len(frames)}" if len(frames) > 1 else "it"
            raise ScanError(
                name,
                f"image too large: {where} declares {frame.width} x {frame.height} pixels, "
                f"over the limit of {MAX_PIXELS:,}",
            )
    total = sum(f.pixels for f in frames)
    if len(frames) > 1 and total > MAX_TOTAL_PIXELS:
        raise ScanError(
            name,
            f"too large: {len(frames)} {kind}s of {total:,} pixels in all, over the limit of {MAX_TOTAL_PIXELS:,}",
        )
    need = PEAK_FACTOR.get(fmt, 2) * sum(f.pixels * f.pixel_bytes for f in frames)
    budget = decode_budget_bytes()
    if need > budget:
        raise ScanError(
            name,
            f"over the decode-memory budget: decoding needs about {need / 2**20:,.0f} MiB, the budget is "
            f"{budget / 2**20:,.0f} MiB ({BUDGET_ENV} or --decode-budget-mb)",
        )


def declared_frames(data: bytes, fmt: str, name: str | Path = "<bytes>") -> list[Declared]:
    """Every page or frame ``data`` declares, in a format of :func:`~edge_runtime.files.formats.sniff_format`."""
    reader = _READERS.get(fmt)
    if reader is None:
        return []
    try:
        frames = reader(data, name)
    except (struct.error, IndexError, ValueError):
        raise ScanError(name, f"corrupt or truncated {fmt} data: its headers end early") from None
    if not frames:
        raise ScanError(name, f"corrupt or truncated {fmt} data: no image in its headers")
    return frames


# --- PNG and APNG ------------------------------------------------------------------------------------------


def _png_chunks(data: bytes, name: str | Path):
    """Each chunk's type and data, its CRC checked: a flipped bit is refused here, before libpng prints an
    unnamed "libpng error" line on stderr and OpenCV says only that the image could not be decoded."""
    pos, view = 8, memoryview(data)  # the CRCs are computed on the file's own bytes, not on copies
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        crc = data[pos + 8 + length : pos + 12 + length]
        if len(crc) == 4 and zlib.crc32(view[pos + 4 : pos + 8 + length]) != int.from_bytes(crc, "big"):
            shown = kind.decode("latin-1") if kind.isalpha() else kind.hex()
            raise ScanError(name, f"corrupt PNG data: the CRC of its {shown} chunk at byte {pos:,} does not match")
        yield kind, view[pos + 8 : pos + 8 + min(length, 16)]  # what the readers look at: a chunk's start
        if kind == b"IEND":
            return
        pos += 12 + length


_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}


def _png(data: bytes, name: str | Path) -> list[Declared]:
    width = height = 0
    pixel_bytes, frames = 3, 0
    for kind, body in _png_chunks(data, name):
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
            pixel_bytes = _PNG_CHANNELS.get(colour, 4) * (2 if depth == 16 else 1)
        elif kind == b"fcTL":
            fw, fh = struct.unpack(">II", body[4:12])
            if fw > width or fh > height:  # a frame larger than the canvas is what a bomb looks like
                raise ScanError(name, f"corrupt APNG: frame {frames + 1} is {fw} x {fh}, its canvas {width} x {height}")
            frames += 1
            if frames > MAX_FRAMES:
                break
    return [Declared(width, height, pixel_bytes)] * max(frames, 1) if width or height else []


# --- JPEG (and JPEG-LS) ------------------------------------------------------------------------------------

#: Start-of-frame markers: SOF0-3, 5-7, 9-11, 13-15, and JPEG-LS's SOF55.
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7})
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


def _jpeg(data: bytes, name: str | Path) -> list[Declared]:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ValueError("no marker")
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # EOI or SOS before any SOF
            break
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker in _SOF:
            precision, height, width, components = struct.unpack(">BHHB", data[pos + 4 : pos + 10])
            return [Declared(width, height, max(1, min(components, 4)) * (2 if precision > 8 else 1))]
        pos += 2 + length
    return []


# --- JPEG 2000 (codestream or JP2 boxes) -------------------------------------------------------------------


def _j2k_codestream(data: bytes) -> list[Declared]:
    if data[:4] != b"\xff\x4f\xff\x51":
        return []
    xsiz, ysiz, xo, yo = struct.unpack(">IIII", data[8:24])
    components = struct.unpack(">H", data[40:42])[0]
    depth = (data[42] & 0x7F) + 1
    return [Declared(xsiz - xo, ysiz - yo, max(1, min(components, 4)) * (2 if depth > 8 else 1))]


def _jpeg2000(data: bytes, name: str | Path) -> list[Declared]:
    if data.startswith(b"\xff\x4f"):
        return _j2k_codestream(data)
    pos = 0
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        header = 8
        if length == 1:
            length, header = struct.unpack(">Q", data[pos + 8 : pos + 16])[0], 16
        elif length == 0:
            length = len(data) - pos
        if kind == b"jp2c":
            return _j2k_codestream(data[pos + header : pos + length])
        if length < header:
            raise ValueError("bad box")
        pos += length
    return []


# --- TIFF (and BigTIFF) ------------------------------------------------------------------------------------

_TIFF_TYPES = {3: ("H", 2), 4: ("I", 4), 16: ("Q", 8)}


def _tiff(data: bytes, name: str | Path) -> list[Declared]:
    order = "<" if data[:2] == b"II" else ">"
    big = struct.unpack(order + "H", data[2:4])[0] == 43
    if big:
        offset = struct.unpack(order + "Q", data[8:16])[0]
        count_fmt, entry_size, next_fmt = "Q", 20, "Q"
    else:
        offset = struct.unpack(order + "I", data[4:8])[0]
        count_fmt, entry_size, next_fmt = "H", 12, "I"
    count_size = struct.calcsize(count_fmt)
    pages: list[Declared] = []
    seen: set[int] = set()
    while offset and offset not in seen:
        if len(pages) > MAX_FRAMES:
            break
        seen.add(offset)
        n = struct.unpack(order + count_fmt, data[offset : offset + count_size])[0]
        tags: dict[int, int] = {}
        base = offset + count_size
        for i in range(min(n, 4096)):
            entry = data[base + i * entry_size : base + (i + 1) * entry_size]
            tag, typ = struct.unpack(order + "HH", entry[:4])
            if tag in (256, 257, 258, 277) and typ in _TIFF_TYPES:
                code, _ = _TIFF_TYPES[typ]
                value_at = 12 if big else 8
                tags[tag] = struct.unpack(order + code, entry[value_at : value_at + struct.calcsize(code)])[0]
        end = base + n * entry_size
        width, height = tags.get(256, 0), tags.get(257, 0)
        samples = max(1, min(tags.get(277, 1), 4))
        bits = tags.get(258, 8) if samples == 1 else 8  # several samples: the value is an offset; take 8 bits
        pages.append(Declared(width, height, samples * (2 if bits > 8 else 1)))
        offset = struct.unpack(order + next_fmt, data[end : end + struct.calcsize(next_fmt)])[0]
    return pages


# --- GIF -----------------------------------------------------------------------------------------------------


def _gif(data: bytes, name: str | Path) -> list[Declared]:
    width, height, flags = struct.unpack("<HHB", data[6:11])
    pos = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
    frames = 0
    while pos < len(data) and frames <= MAX_FRAMES:
        block = data[pos]
        if block == 0x3B:
            break
        if block == 0x21:  # extension: label, then sub-blocks
            pos = _skip_sub_blocks(data, pos + 2)
        elif block == 0x2C:
            fw, fh, fflags = struct.unpack("<HHB", data[pos + 5 : pos + 10])
            if fw > width or fh > height:
                raise ScanError(name, f"corrupt GIF: frame {frames + 1} is {fw} x {fh}, its screen {width} x {height}")
            pos += 10 + (3 * 2 ** ((fflags & 7) + 1) if fflags & 0x80 else 0)
            pos = _skip_sub_blocks(data, pos + 1)  # LZW minimum code size, then the data
            frames += 1
        else:
            break  # garbage after the frames: the decoder stops there too
    return [Declared(width, height, 4)] * frames


def _skip_sub_blocks(data: bytes, pos: int) -> int:
    while pos < len(data):
        size = data[pos]
        pos += 1 + size
        if size == 0:
            break
    return pos


# --- WEBP ----------------------------------------------------------------------------------------------------


def _webp(data: bytes, name: str | Path) -> list[Declared]:
    pos, canvas, frames = 12, None, 0
    single: Declared | None = None
    while pos + 8 <= len(data) and frames <= MAX_FRAMES:
        kind, length = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        body = data[pos + 8 : pos + 8 + min(length, 16)]  # a chunk's start is all that is read
        if kind == b"VP8X":
            canvas = (int.from_bytes(body[4:7], "little") + 1, int.from_bytes(body[7:10], "little") + 1)
        elif kind == b"ANMF":
            fw, fh = int.from_bytes(body[6:9], "little") + 1, int.from_bytes(body[9:12], "little") + 1
            if canvas and (fw > canvas[0] or fh > canvas[1]):
                where = f"its canvas {canvas[0]} x {canvas[1]}"
                raise ScanError(name, f"corrupt WEBP: frame {frames + 1} is {fw} x {fh}, {where}")
            frames += 1
        elif kind == b"VP8 " and single is None:
            w, h = struct.unpack("<HH", body[6:10])
            single = Declared(w & 0x3FFF, h & 0x3FFF, 4)
        elif kind == b"VP8L" and single is None:
            bits = int.from_bytes(body[1:5], "little")
            single = Declared((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, 4)
        pos += 8 + length + (length & 1)
    if canvas is not None:
        return [Declared(canvas[0], canvas[1], 4)] * max(frames, 1)
    return [single] if single else []


# --- BMP -----------------------------------------------------------------------------------------------------


def _bmp(data: bytes, name: str | Path) -> list[Declared]:
    header = struct.unpack("<I", data[14:18])[0]
    if header == 12:
        width, height = struct.unpack("<HH", data[18:22])
    else:
        width, height = struct.unpack("<ii", data[18:26])
    return [Declared(abs(width), abs(height), 4)]


_READERS = {
    "PNG": _png,
    "JPEG": _jpeg,
    "JPEG 2000": _jpeg2000,
    "TIFF": _tiff,
    "GIF": _gif,
    "WEBP": _webp,
    "BMP": _bmp,
}


def jpeg_family_frame(data: bytes, name: str | Path = "<bytes>") -> list[Declared]:
    """An encapsulated DICOM frame's declared size: JPEG / JPEG-LS (SOF) or JPEG 2000 (SIZ, or JP2 boxes)."""
    if data.startswith(b"\xff\x4f") or data[4:8] == b"jP  ":
        return declared_frames(data, "JPEG 2000", name)
    if data.startswith(b"\xff\xd8"):
        return declared_frames(data, "JPEG", name)
    return []
