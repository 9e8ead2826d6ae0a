"""A PNG's and a TIFF's coded image data checked where their decoders would not say it is damaged.

OpenCV hands back a picture from a TIFF page whose LZW strip libtiff could not finish ("Not enough data
at scanline 68": the rest of the page is left black, with the message on OpenCV's silenced log), and
libpng prints an unnamed "libpng error: bad adaptive filter value" line on stderr for a PNG whose chunks
are intact but whose image data is not. A scan decoded past such damage must not be segmented and called
"ok", so these are checked here from the bytes, before decoding, and refused with the file's name and
the reason:

* PNG: the ``IDAT`` data, and each APNG frame's ``fdAT`` data, inflates (zlib) to at least the size its
  header declares, each row with a defined filter type (interlaced images: the size only), and its
  checksum matches (libpng only warns, unnamed, and decodes the wrong rows).
* TIFF: every strip and tile lies inside the file and, uncompressed, Deflate or LZW, holds at least the
  bytes its rows need. Other compressions are left to the decoder.

What these formats cannot tell is not claimed: bytes zeroed inside uncompressed pixels, a lossy WEBP's
or a JPEG 2000's coded data (neither carries a checksum) decode without any decoder noticing.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from edge_runtime.errors import ScanError

_CHUNK = 1 << 20  # inflate a MiB at a time: the check holds no more than that of the image at once


def check_coded_data(data: bytes, fmt: str, name: str | Path) -> None:
    """Refuse, naming ``name``, a PNG or TIFF whose image data is damaged (see the module's text)."""
    try:
        if fmt == "PNG":
            _png(data, name)
        elif fmt == "TIFF":
            _tiff(data, name)
    except (struct.error, IndexError):
        raise ScanError(name, f"corrupt or truncated {fmt} data: its headers end early") from None


# --- PNG -------------------------------------------------------------------------------------------------

_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _png(data: bytes, name: str | Path) -> None:
    view = memoryview(data)
    pos, header = 8, None
    streams: list[tuple[str, int, int, list[memoryview]]] = []  # what, width, height, the zlib stream's parts
    frame, size, in_frame = 0, (0, 0), False
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", data[pos + 8 : pos + 21])
        elif kind == b"fcTL":  # an APNG frame: its own size; its data in the next IDAT or fdAT chunks
            frame, size, in_frame = frame + 1, struct.unpack(">II", data[pos + 12 : pos + 20]), False
        elif kind == b"IDAT" and header is not None:
            if not streams or streams[-1][0] != "its image data":
                streams.append(("its image data", header[0], header[1], []))
            streams[-1][3].append(view[pos + 8 : pos + 8 + length])
        elif kind == b"fdAT":
            if not in_frame:
                streams.append((f"frame {frame}'s image data", size[0], size[1], []))
                in_frame = True
            streams[-1][3].append(view[pos + 12 : pos + 8 + length])  # after its sequence number
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None:
        return  # the decoder says it cannot read it
    depth, colour, interlace = header[2], header[3], header[6]
    bits = _PNG_CHANNELS.get(colour, 4) * depth
    for what, width, height, parts in streams:
        _png_stream(parts, width, height, bits, interlace, what, name)


def _png_stream(
    parts: list[memoryview], width: int, height: int, bits: int, interlace: int, what: str, name: str | Path
) -> None:
    """One zlib stream of rows: it inflates, to the rows' size, with defined filters and a matching checksum.

    libpng stops at the rows and only warns ("IDAT: ADLER32 checksum mismatch", unnamed) when the checksum
    after them says they are wrong, then decodes them; here zlib reads on to it (a bounded surplus).
    """
    if interlace:
        passes = [(max(0, -(-(width - x0) // dx)), max(0, -(-(height - y0) // dy))) for x0, y0, dx, dy in _ADAM7]
        rows = [(w * bits + 7) // 8 + 1 for w, h in passes if w and h for _ in range(h)]
        expected, row = sum(rows), 0
    else:
        row = (width * bits + 7) // 8 + 1
        expected = height * row
    label = "row" if what.startswith("its") else what.removesuffix("'s image data") + ", row"
    inflate = zlib.decompressobj()
    done = surplus = 0
    try:
        for part in parts:
            pending: bytes | memoryview = part
            while pending and not inflate.eof:
                if done < expected:
                    out = inflate.decompress(pending, min(_CHUNK, expected - done))
                    if row:
                        _png_filters(out, done, row, label, name)
                    done += len(out)
                elif surplus < expected + _CHUNK:
                    surplus += len(inflate.decompress(pending, _CHUNK))
                else:
                    break
                pending = inflate.unconsumed_tail
    except zlib.error as exc:
        raise ScanError(name, f"corrupt PNG data: {what} does not inflate (zlib: {exc})") from None
    if done < expected:
        raise ScanError(
            name, f"truncated PNG data: {what} ends after {done:,} of the {expected:,} bytes its header declares"
        )


def _png_filters(out: bytes, at: int, row: int, label: str, name: str | Path) -> None:
    """Each row's first byte (its filter type) in ``out``, which starts ``at`` bytes into the image data."""
    first = (-at) % row
    filters = np.frombuffer(out, np.uint8)[first::row]
    bad = np.flatnonzero(filters > 4)
    if bad.size:
        line = (at + first) // row + int(bad[0]) + 1
        raise ScanError(
            name, f"corrupt PNG data: {label} {line} has filter type {filters[bad[0]]} (0 to 4 are defined)"
        )


# --- TIFF ------------------------------------------------------------------------------------------------

_TYPES = {1: "B", 3: "H", 4: "I", 16: "Q"}
_NONE, _LZW, _DEFLATE = 1, 5, (8, 32946)


def _tiff(data: bytes, name: str | Path) -> None:
    order = "<" if data[:2] == b"II" else ">"
    big = struct.unpack(order + "H", data[2:4])[0] == 43
    offset = struct.unpack(order + ("Q" if big else "I"), data[8:16] if big else data[4:8])[0]
    seen: set[int] = set()
    page = 0
    while offset and offset not in seen and page < 100_000:
        seen.add(offset)
        page += 1
        tags, offset = _ifd(data, offset, order, big)
        _tiff_page(data, tags, page, name)


def _ifd(data: bytes, offset: int, order: str, big: bool) -> tuple[dict[int, list[int]], int]:
    count_fmt, entry_size, value_size = ("Q", 20, 8) if big else ("H", 12, 4)
    n = struct.unpack(order + count_fmt, data[offset : offset + struct.calcsize(count_fmt)])[0]
    base = offset + struct.calcsize(count_fmt)
    tags: dict[int, list[int]] = {}
    for i in range(min(n, 4096)):
        entry = data[base + i * entry_size : base + (i + 1) * entry_size]
        tag, typ = struct.unpack(order + "HH", entry[:4])
        code = _TYPES.get(typ)
        if code is None or tag not in (256, 257, 258, 259, 273, 277, 278, 279, 284, 322, 323, 324, 325):
            continue
        count = struct.unpack(order + ("Q" if big else "I"), entry[4 : 4 + value_size])[0]
        size = struct.calcsize(code) * min(count, 1 << 20)
        at = base + i * entry_size + 4 + value_size
        if size > value_size:
            at = struct.unpack(order + ("Q" if big else "I"), entry[4 + value_size : 4 + 2 * value_size])[0]
        raw = data[at : at + size]
        tags[tag] = list(struct.unpack(f"{order}{len(raw) // struct.calcsize(code)}{code}", raw))
    end = base + n * entry_size
    next_fmt = "Q" if big else "I"
    return tags, struct.unpack(order + next_fmt, data[end : end + struct.calcsize(next_fmt)])[0]


def _tiff_page(data: bytes, tags: dict[int, list[int]], page: int, name: str | Path) -> None:
    one = lambda tag, default: (tags.get(tag) or [default])[0]  # noqa: E731
    width, height = one(256, 0), one(257, 0)
    samples, compression, planar = one(277, 1), one(259, _NONE), one(284, 1)
    bits = one(258, 1)
    per_pixel = bits * (samples if planar == 1 else 1)
    if 322 in tags and 324 in tags:  # tiles: each the tile's size, edges padded
        offsets, counts = tags[324], tags.get(325, [])
        tile_w, tile_h = one(322, 0), one(323, 0)
        needs = [tile_h * ((tile_w * per_pixel + 7) // 8)] * len(offsets)
        what = "tile"
    else:
        offsets, counts = tags.get(273, []), tags.get(279, [])
        rows = min(one(278, height) or height, height)
        if rows <= 0:
            return
        row_bytes = (width * per_pixel + 7) // 8
        per_plane = -(-height // rows)
        needs = [min(rows, height - (i % per_plane) * rows) * row_bytes for i in range(len(offsets))]
        what = "strip"
    where = f"page {page}'s " if page > 1 else "its "
    for i, (start, count) in enumerate(zip(offsets, counts, strict=False)):
        if start + count > len(data):
            raise ScanError(
                name,
                f"truncated TIFF data: {where}{what} {i + 1} ends at byte {start + count:,}, the file at {len(data):,}",
            )
        coded = data[start : start + count]
        if compression == _NONE:
            got = count
        elif compression in _DEFLATE:
            try:
                got = _inflated_length(coded, needs[i])
            except zlib.error as exc:
                raise ScanError(name, f"corrupt TIFF data: {where}{what} {i + 1} does not inflate ({exc})") from None
        elif compression == _LZW:
            got = _lzw_length(coded, needs[i])
            if got < 0:
                raise ScanError(name, f"corrupt TIFF data: {where}{what} {i + 1} has an LZW code past its table")
        else:
            return
        if got < needs[i]:
            raise ScanError(
                name,
                f"corrupt or truncated TIFF data: {where}{what} {i + 1} holds {got:,} of the {needs[i]:,} bytes "
                "of its rows",
            )


def _inflated_length(coded: bytes, need: int) -> int:
    """The rows' bytes a Deflate strip gives (at most ``need``), read on to the stream's checksum.

    libtiff stops inflating at the rows and so never sees the checksum saying they are wrong; here zlib
    reads on (a bounded surplus past the rows) and raises ``zlib.error`` when it does not match.
    """
    inflate = zlib.decompressobj()
    got = len(inflate.decompress(coded, need))
    surplus = 0
    while inflate.unconsumed_tail and surplus < need + _CHUNK:
        surplus += len(inflate.decompress(inflate.unconsumed_tail, _CHUNK))
    return got


def _lzw_length(coded: bytes, need: int) -> int:
    """How many bytes TIFF's LZW ``coded`` decodes to (stopping at ``need``), -1 for a code past the table.

    Only the length of each table entry is kept, not its bytes. An old-style (bit-reversed) stream is not
    checked: its length is taken as ``need``.
    """
    if len(coded) >= 2 and coded[0] == 0 and coded[1] & 1:
        return need
    lengths = [1] * 258
    width, at, acc, held, out, prev = 9, 0, 0, 0, 0, -1
    while out < need:
        while held < width and at < len(coded):
            acc, held, at = (acc << 8) | coded[at], held + 8, at + 1
        if held < width:
            break
        held -= width
        code, acc = acc >> held, acc & ((1 << held) - 1)
        if code == 256:  # clear
            del lengths[258:]
            width, prev = 9, -1
            continue
        if code == 257:  # end of information
            break
        size = len(lengths)
        if code < size:
            length = lengths[code]
        elif code == size and prev >= 0:
            length = lengths[prev] + 1
        else:
            return -1
        out += length
        if prev >= 0:
            lengths.append(lengths[prev] + 1)
        prev = code
        if len(lengths) + 1 >= (1 << width) and width < 12:  # TIFF's "early change"
            width += 1
    return out
