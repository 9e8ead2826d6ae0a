"""Decompression bombs built by the tests: small files whose headers declare far more pixels than they hold.

Each builder returns the file's bytes. Sizes default to the issue's cases (pages and frames of 6000 x 6000
behind a tiny first one, a 64 x 64 DICOM whose JPEG frame says 50000 x 50000); every file is a few MB at most.
"""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def tiff_bomb(pages: int = 100, side: int = 6000) -> bytes:
    """A 1 x 1 first page, then ``pages`` pages of ``side`` x ``side`` gray, each one deflated strip of zeros."""
    strip = zlib.compress(bytes(side * side), 9)
    first_pixel = b"\x00"
    out = bytearray(b"II*\x00" + struct.pack("<I", 0))
    data_at = len(out)
    out += first_pixel + strip + (b"\x00" if len(strip) % 2 == 0 else b"\x00\x00")
    ifds = [(1, 1, 1, data_at, 1)] + [(side, side, 8, data_at + 1, len(strip))] * pages
    first_ifd = len(out)
    for i, (width, height, compression, offset, count) in enumerate(ifds):
        here = len(out)
        entries = [
            (256, 4, 1, width),
            (257, 4, 1, height),
            (258, 3, 1, 8),
            (259, 3, 1, compression),
            (262, 3, 1, 1),
            (273, 4, 1, offset),
            (277, 3, 1, 1),
            (278, 4, 1, height),
            (279, 4, 1, count),
        ]
        nxt = here + 2 + 12 * len(entries) + 4 if i + 1 < len(ifds) else 0
        out += struct.pack("<H", len(entries))
        for tag, typ, n, value in entries:
            packed = struct.pack("<HH", value, 0) if typ == 3 else struct.pack("<I", value)
            out += struct.pack("<HHI", tag, typ, n) + packed
        out += struct.pack("<I", nxt)
    out[4:8] = struct.pack("<I", first_ifd)
    return bytes(out)


def apng_bomb(frames: int = 100, side: int = 6000) -> bytes:
    """An animated PNG: a ``side`` x ``side`` gray canvas and ``frames`` frames of zeros."""
    rows = zlib.compress(bytes(side + 1) * side, 9)
    out = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
    out += _png_chunk(b"acTL", struct.pack(">II", frames, 0))
    seq = 0
    for i in range(frames):
        out += _png_chunk(b"fcTL", struct.pack(">IIIIIHHBB", seq, side, side, 0, 0, 1, 10, 0, 0))
        seq += 1
        if i == 0:
            out += _png_chunk(b"IDAT", rows)
        else:
            out += _png_chunk(b"fdAT", struct.pack(">I", seq) + rows)
            seq += 1
    return out + _png_chunk(b"IEND", b"")


def png_bomb(side: int = 20000) -> bytes:
    """One PNG whose IHDR says ``side`` x ``side`` (no image data worth the name)."""
    out = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
    return out + _png_chunk(b"IDAT", zlib.compress(bytes(side + 1) * 16)) + _png_chunk(b"IEND", b"")


def gif_bomb(frames: int = 100, side: int = 6000) -> bytes:
    """A ``side`` x ``side`` GIF screen with ``frames`` full-screen frames of almost no LZW data."""
    out = b"GIF89a" + struct.pack("<HHBBB", side, side, 0x80, 0, 0) + bytes(6)  # 2-colour global table
    for _ in range(frames):
        out += b"\x21\xf9\x04\x00\x0a\x00\x00\x00"  # graphic control: 0.1 s
        out += b"\x2c" + struct.pack("<HHHHB", 0, 0, side, side, 0)
        out += b"\x02\x02\x4c\x01\x00"  # min code size 2, one sub-block: clear, then end of information
    return out + b"\x3b"


def webp_bomb(frames: int = 100, side: int = 6000) -> bytes:
    """An animated WEBP: a ``side`` x ``side`` canvas and ``frames`` lossless frames of zeros."""
    ok, one = cv2.imencode(".webp", np.zeros((side, side, 3), np.uint8), [cv2.IMWRITE_WEBP_QUALITY, 101])
    assert ok
    one = one.tobytes()
    vp8l = one[12 : 20 + struct.unpack("<I", one[16:20])[0]]  # the VP8L chunk, header included
    vp8l += b"\x00" * (len(vp8l) % 2)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return kind + struct.pack("<I", len(body)) + body + b"\x00" * (len(body) % 2)

    size = (side - 1).to_bytes(3, "little") * 2
    body = chunk(b"VP8X", bytes([0x02, 0, 0, 0]) + size) + chunk(b"ANIM", bytes(4) + struct.pack("<H", 0))
    frame = bytes(6) + size + (100).to_bytes(3, "little") + b"\x00" + vp8l
    body += chunk(b"ANMF", frame) * frames
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


def jpeg_declaring(width: int, height: int, source: np.ndarray | None = None) -> bytes:
    """A small real JPEG whose SOF is rewritten to say ``width`` x ``height``."""
    image = np.zeros((64, 64), np.uint8) if source is None else source
    data = bytearray(cv2.imencode(".jpg", image)[1].tobytes())
    pos = 2
    while data[pos + 1] not in (0xC0, 0xC1, 0xC2):
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    data[pos + 5 : pos + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def j2k_declaring(width: int, height: int) -> bytes:
    """A small real JP2 file whose codestream's SIZ is rewritten to say ``width`` x ``height``."""
    data = bytearray(cv2.imencode(".jp2", np.zeros((64, 64), np.uint8))[1].tobytes())
    siz = data.index(b"\xff\x4f\xff\x51")
    data[siz + 8 : siz + 16] = struct.pack(">II", width, height)
    return bytes(data)
