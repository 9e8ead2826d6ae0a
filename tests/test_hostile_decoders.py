"""Damaged images of every format (issue 27, items 7 and 17): a failure naming the file and the reason, or the
image decoded right, never a wrong picture called "ok", and no library's line on the console without a name.

Each damaged file is made here from a synthetic scan. PNG and TIFF data that OpenCV decodes past its damage
(libtiff leaves the rest of an LZW strip black; libpng prints an unnamed "bad adaptive filter value") is
checked by :mod:`edge_runtime.files.integrity`; cut WEBP, BMP, GIF and JPEG 2000 files fail in their decoder.
"""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest

from edge_runtime.cli import main
from edge_runtime.errors import ScanError
from edge_runtime.files.integrity import _lzw_length
from edge_runtime.files.scans import decode_frames
from tests.helpers import nodule_scan

IMAGE = nodule_scan(200, 240, seed=5)[0]


def _encode(ext: str, image: np.ndarray = IMAGE, *params: int) -> bytes:
    return cv2.imencode(ext, image, list(params))[1].tobytes()


def _zeroed(data: bytes, at: int | None = None, n: int = 400) -> bytes:
    out = bytearray(data)
    at = len(data) // 2 if at is None else at
    out[at : at + n] = bytes(n)
    return bytes(out)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(image: np.ndarray, raw: bytes | None = None, interlace: int = 0) -> bytes:
    """A gray 8-bit PNG of ``image`` with its rows (each led by filter 0) as given, or made from the image."""
    h, w = image.shape
    if raw is None:
        raw = b"".join(b"\x00" + image[y].tobytes() for y in range(h))
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, interlace))
    return b"\x89PNG\r\n\x1a\n" + header + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")


def _adam7(image: np.ndarray) -> bytes:
    passes = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
    out = b""
    for x0, y0, dx, dy in passes:
        sub = image[y0::dy, x0::dx]
        if sub.size:
            out += b"".join(b"\x00" + row.tobytes() for row in sub)
    return out


def _tiff(image: np.ndarray, compression: int, rows_per_strip: int = 16) -> bytes:
    """A little-endian gray TIFF whose directory comes first and whose strips follow it (as scanners write)."""
    h, w = image.shape
    strips = []
    for y in range(0, h, rows_per_strip):
        raw = image[y : y + rows_per_strip].tobytes()
        strips.append(zlib.compress(raw) if compression == 8 else raw)
    n = 10
    ifd_at, arrays_at = 8, 8 + 2 + 12 * n + 4
    data_at = arrays_at + 8 * len(strips)
    offsets, at = [], data_at
    for s in strips:
        offsets.append(at)
        at += len(s)
    entries = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 1, 8), (259, 3, 1, compression), (262, 3, 1, 1)]
    entries += [(273, 4, len(strips), arrays_at), (277, 3, 1, 1), (278, 4, 1, rows_per_strip)]
    entries += [(279, 4, len(strips), arrays_at + 4 * len(strips)), (284, 3, 1, 1)]
    out = b"II*\x00" + struct.pack("<I", ifd_at) + struct.pack("<H", n)
    for tag, typ, count, value in entries:
        out += struct.pack("<HHI", tag, typ, count) + (
            struct.pack("<HH", value, 0) if typ == 3 else struct.pack("<I", value)
        )
    out += struct.pack("<I", 0)
    out += struct.pack(f"<{len(strips)}I", *offsets) + struct.pack(f"<{len(strips)}I", *map(len, strips))
    return out + b"".join(strips)


def _refused(data: bytes, name: str, pattern: str) -> None:
    with pytest.raises(ScanError, match=pattern) as caught:
        decode_frames(data, name)
    assert str(caught.value).startswith(f"{name}: ")


# --- PNG -------------------------------------------------------------------------------------------------


def test_a_png_whose_image_data_is_damaged_under_intact_crcs_is_refused_with_the_reason(capfd):
    rows = b"".join(b"\x00" + IMAGE[y].tobytes() for y in range(IMAGE.shape[0]))
    _refused(
        _png(IMAGE, rows[: len(rows) // 2]),
        "cut.png",
        r"truncated PNG data: its image data ends after "
        r"24,100 of the 48,200 bytes its header declares",
    )
    filters = bytearray(rows)
    filters[241 * 7] = 9  # row 8's filter type
    _refused(_png(IMAGE, bytes(filters)), "filter.png", r"corrupt PNG data: row 8 has filter type 9 \(0 to 4")
    good = _png(IMAGE)
    at = good.index(b"IDAT") + 4
    idat = bytearray(good[at : good.index(b"IEND") - 8])
    idat[len(idat) // 2 : len(idat) // 2 + 300] = bytes(300)  # zeroed, the CRC made again to match
    damaged = good[: at - 8] + _chunk(b"IDAT", bytes(idat)) + _chunk(b"IEND", b"")
    _refused(damaged, "zeroed.png", r"(corrupt|truncated) PNG data: ")
    assert "libpng" not in capfd.readouterr().err


@pytest.mark.parametrize("shape", [(200, 240), (37, 53), (5, 3), (1, 1), (9, 1)])
def test_an_intact_interlaced_png_still_decodes_exactly(shape):
    image = np.random.default_rng(1).integers(0, 255, shape, dtype=np.uint8)
    data = _png(image, _adam7(image), interlace=1)
    assert np.array_equal(decode_frames(data, "i.png")[0], image)
    rows = _adam7(image)
    if len(rows) > 4:
        _refused(_png(image, rows[:-3], interlace=1), "i.png", r"truncated PNG data: its image data ends after")


def _apng() -> tuple[bytes, list[np.ndarray]]:
    frames = [cv2.cvtColor(np.full((120, 100), 10 * i, np.uint8), cv2.COLOR_GRAY2BGR) for i in range(4)]
    for i, f in enumerate(frames):
        cv2.circle(f, (50, 60), 20 + 5 * i, (200, 150, 100), -1)
    animation = cv2.Animation()
    animation.frames, animation.durations = frames, [100] * 4
    ok, buf = cv2.imencodeanimation(".png", animation)
    assert ok
    return buf.tobytes(), [cv2.cvtColor(f, cv2.COLOR_BGR2RGB) for f in frames]


def _third_frame_rewritten(data: bytes, change) -> bytes:
    """The APNG with its third frame's (second ``fdAT``'s) data changed, the chunk's CRC made right."""
    at = data.index(b"fdAT", data.index(b"fdAT") + 4) - 4
    length = int.from_bytes(data[at : at + 4], "big")
    body = change(data[at + 8 : at + 8 + length])
    return data[:at] + _chunk(b"fdAT", body) + data[at + 12 + length :]


def test_an_apng_frame_whose_data_is_damaged_is_refused_not_decoded_wrong(capfd):
    data, frames = _apng()
    decoded = decode_frames(data, "a.png")
    assert all(np.array_equal(a, b) for a, b in zip(decoded, frames, strict=True))

    def zeroed(body: bytes) -> bytes:  # past its sequence number, 40 bytes of the deflated rows
        return body[:4] + _zeroed(body[4:], n=40)

    damaged = _third_frame_rewritten(data, zeroed)
    shown = cv2.imdecodemulti(np.frombuffer(damaged, np.uint8), cv2.IMREAD_UNCHANGED)[1]
    assert len(shown) == 4 and not np.array_equal(cv2.cvtColor(shown[2], cv2.COLOR_BGR2RGB), frames[2])
    capfd.readouterr()  # libpng's unnamed "ADLER32 checksum mismatch" warning, when OpenCV alone decodes it
    _refused(damaged, "a.png", r"corrupt PNG data: frame 3's image data does not inflate \(zlib: ")
    _refused(
        _third_frame_rewritten(data, lambda body: body[: len(body) // 2]),
        "a.png",
        r"truncated PNG data: frame 3's image data ends after",
    )
    assert "libpng" not in capfd.readouterr().err


# --- TIFF ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", [1, 8])
def test_an_intact_tiff_decodes_exactly_with_its_strips_checked(compression):
    assert np.array_equal(decode_frames(_tiff(IMAGE, compression), "x.tif")[0], IMAGE)
    lzw = _encode(".tif", IMAGE, cv2.IMWRITE_TIFF_COMPRESSION, 5)
    assert np.array_equal(decode_frames(lzw, "x.tif")[0], IMAGE)
    colour = cv2.cvtColor(IMAGE, cv2.COLOR_GRAY2BGR)
    colour[:, :, 0] //= 3
    lzw = _encode(".tif", colour, cv2.IMWRITE_TIFF_COMPRESSION, 5)
    assert np.array_equal(decode_frames(lzw, "x.tif")[0], cv2.cvtColor(colour, cv2.COLOR_BGR2RGB))


def test_a_tiff_whose_lzw_strip_is_zeroed_is_refused_not_left_half_black():
    lzw = _encode(".tif", IMAGE, cv2.IMWRITE_TIFF_COMPRESSION, 5)
    damaged = _zeroed(lzw)
    shown = cv2.imdecode(np.frombuffer(damaged, np.uint8), cv2.IMREAD_UNCHANGED)
    assert shown is not None and not np.array_equal(shown, IMAGE)  # what OpenCV alone calls a picture
    _refused(damaged, "z.tif", r"corrupt or truncated TIFF data: its strip \d+ holds [\d,]+ of the 8,160 bytes")


def test_a_tiff_cut_inside_its_strips_or_with_a_broken_deflate_strip_is_refused():
    plain = _tiff(IMAGE, 1)
    _refused(
        plain[: len(plain) * 6 // 10],
        "cut.tif",
        r"truncated TIFF data: its strip \d+ ends at byte [\d,]+, "
        r"the file at [\d,]+",
    )
    deflated = _tiff(IMAGE, 8)
    _refused(_zeroed(deflated, n=64), "d.tif", r"corrupt (or truncated )?TIFF data: its strip \d+ ")


def test_the_lzw_length_count_matches_what_libtiff_decodes():
    rng = np.random.default_rng(2)
    for image in (IMAGE, rng.integers(0, 255, (64, 300), dtype=np.uint8), np.zeros((300, 300), np.uint8)):
        data = _encode(".tif", image, cv2.IMWRITE_TIFF_COMPRESSION, 5)
        assert decode_frames(data, "x.tif")[0].shape == image.shape
    assert _lzw_length(_codes(256, 65, 66, 258, 257), 1000) == 4  # A, B, then "AB" (the entry just made)
    assert _lzw_length(_codes(256, 65, 66, 259, 257), 1000) == 4  # 259 = the entry being made: "BB"
    assert _lzw_length(_codes(256, 65, 300, 257), 1000) == -1  # a code past the table


def _codes(*codes: int) -> bytes:
    """9-bit LZW codes, most significant bit first (short streams: the width stays 9)."""
    bits = "".join(f"{c:09b}" for c in codes)
    bits += "0" * (-len(bits) % 8)
    return int(bits, 2).to_bytes(len(bits) // 8, "big")


# --- the others: cut or damaged, they fail in their decoder, named -------------------------------------


def _formats() -> list[tuple[str, bytes]]:
    colour = cv2.cvtColor(IMAGE, cv2.COLOR_GRAY2BGR)
    return [
        ("x.webp", _encode(".webp", colour, cv2.IMWRITE_WEBP_QUALITY, 90)),
        ("x.webp", _encode(".webp", colour, cv2.IMWRITE_WEBP_QUALITY, 101)),
        ("x.bmp", _encode(".bmp", IMAGE)),
        ("x.jp2", _encode(".jp2", IMAGE)),
        ("x.gif", cv2.imencode(".gif", colour)[1].tobytes()),
    ]


@pytest.mark.parametrize("cut", [0.3, 0.6, 0.95])
def test_a_cut_webp_bmp_gif_or_jpeg2000_is_refused_naming_the_file(cut, capfd):
    for name, data in _formats():
        fmt = {"webp": "WEBP", "bmp": "BMP", "jp2": "JPEG 2000", "gif": "GIF"}[name.split(".")[1]]
        _refused(data[: int(len(data) * cut)], name, rf"(corrupt|truncated)[a-z ]* {fmt} data")
    assert not capfd.readouterr().err.strip()


def test_damaged_scans_in_a_run_are_failures_each_named_and_the_good_one_is_ok(tmp_path, tiny_model, capfd):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    scan = nodule_scan(200, 240, seed=5)[0]
    (src / "good.png").write_bytes(_png(scan))
    (src / "lzw.tif").write_bytes(_zeroed(_encode(".tif", scan, cv2.IMWRITE_TIFF_COMPRESSION, 5)))
    rows = bytearray(b"".join(b"\x00" + scan[y].tobytes() for y in range(scan.shape[0])))
    rows[241 * 3] = 200
    (src / "filter.png").write_bytes(_png(scan, bytes(rows)))
    (src / "cut.tif").write_bytes(_tiff(scan, 1)[:30000])
    assert main([str(src), "--out", str(out), "--model", str(tiny_model)]) == 1
    err = capfd.readouterr().err
    assert "ok   good.png -> good.png" in err
    assert "FAIL lzw.tif: corrupt or truncated TIFF data: its strip" in err
    assert "FAIL filter.png: corrupt PNG data: row 4 has filter type 200" in err
    assert "FAIL cut.tif: truncated TIFF data: its strip" in err
    for name in ("lzw.tif", "filter.png", "cut.tif"):
        assert not (out / (name.rsplit(".", 1)[0] + ".png")).exists()
        assert (out / f"{name}.error.txt").read_text().startswith(f"scan: {name}\nreason: ")
    assert not [line for line in err.splitlines() if line.startswith(("libpng", "TIFF", "[ERROR", "[ WARN"))]
