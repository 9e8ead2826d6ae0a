"""Images that used to be segmented wrongly and called "ok" (issue 27, items 7 and 8): corrupt JPEG data, and
EXIF orientation ignored."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest

from edge_runtime.cli import main
from edge_runtime.errors import ScanError
from edge_runtime.files.scans import decode_frames, read_scan
from tests.helpers import nodule_scan


def run(*args) -> int:
    return main([str(a) for a in args])


def _jpeg(image: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()


def _cut(data: bytes) -> bytes:
    return data[: int(len(data) * 0.4)] + b"\xff\xd9"  # cut at 40%, an end marker added


def _zeroed(data: bytes) -> bytes:
    middle = bytearray(data)
    middle[len(data) // 2 : len(data) // 2 + 2000] = bytes(2000)
    return bytes(middle)


@pytest.mark.parametrize(("damage", "words"), [(_cut, "premature end of data segment"), (_zeroed, "extraneous bytes")])
@pytest.mark.parametrize("colour", [False, True])
def test_a_corrupt_jpeg_is_a_failure_naming_the_file_not_ok(tmp_path, tiny_model, capfd, damage, words, colour):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    image = nodule_scan(360, 315, seed=5)[0]
    (src / "good.jpg").write_bytes(_jpeg(image))
    (src / "bad.jpg").write_bytes(damage(_jpeg(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if colour else image)))
    assert run(src, "--out", out, "--model", tiny_model) == 1
    err = capfd.readouterr().err
    assert "FAIL bad.jpg: corrupt JPEG data: Corrupt JPEG data: " in err and words in err
    assert "ok   good.jpg -> good.png" in err
    assert not (out / "bad.png").exists()
    assert (out / "bad.jpg.error.txt").read_text().startswith("scan: bad.jpg\nreason: corrupt JPEG data: ")
    assert not [line for line in err.splitlines() if line.startswith("Corrupt JPEG")]  # libjpeg's own, unnamed


def _exif(code: int) -> bytes:
    """A big-endian EXIF block whose first directory holds Orientation = ``code``."""
    return b"MM\x00*\x00\x00\x00\x08" + struct.pack(">HHHIHHI", 1, 0x0112, 3, 1, code, 0, 0)


def _with_app1(jpeg: bytes, code: int) -> bytes:
    body = b"Exif\x00\x00" + _exif(code)
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + jpeg[2:]


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


@pytest.mark.parametrize("code", range(1, 9))
def test_a_jpeg_is_turned_by_its_exif_orientation_as_viewers_show_it(tmp_path, code):
    stored = nodule_scan(315, 360, seed=6)[0]  # 360 wide, 315 high as stored
    path = tmp_path / f"o{code}.jpg"
    path.write_bytes(_with_app1(_jpeg(stored), code))
    shown = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)  # OpenCV's imread turns by EXIF, as viewers do
    frame = read_scan(path).frames[0]
    assert frame.shape == shown.shape == ((360, 315) if code >= 5 else (315, 360))
    assert np.array_equal(frame, shown)


def test_orientation_6_gives_a_mask_of_the_displayed_size(tmp_path, tiny_model):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    stored = nodule_scan(315, 360, seed=7)[0]
    (src / "rotated.jpg").write_bytes(_with_app1(_jpeg(stored), 6))
    assert run(src, "--out", out, "--model", tiny_model) == 0
    assert cv2.imread(str(out / "rotated.png"), cv2.IMREAD_UNCHANGED).shape == (360, 315)


def test_png_and_tiff_orientation_is_applied_too():
    stored = nodule_scan(40, 60, seed=8)[0]
    png = cv2.imencode(".png", stored)[1].tobytes()
    at = png.index(b"IDAT") - 4
    png = png[:at] + _png_chunk(b"eXIf", _exif(6)) + png[at:]
    assert np.array_equal(decode_frames(png, "x.png")[0], np.rot90(stored, -1))
    for code in range(1, 9):  # OpenCV's TIFF reader turns pages itself: they must not be turned twice
        tiff = _tiff_with_orientation(stored, code)
        shown = cv2.imdecode(np.frombuffer(tiff, np.uint8), cv2.IMREAD_GRAYSCALE)
        assert np.array_equal(decode_frames(tiff, "x.tif")[0], shown)
    assert np.array_equal(decode_frames(_tiff_with_orientation(stored, 8), "x.tif")[0], np.rot90(stored, 1))


def _tiff_with_orientation(gray: np.ndarray, code: int) -> bytes:
    h, w = gray.shape
    entries = [(256, 4, w), (257, 4, h), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 0), (274, 3, code)]
    entries += [(277, 3, 1), (278, 4, h), (279, 4, w * h)]
    ifd_at = 8
    data_at = ifd_at + 2 + 12 * len(entries) + 4
    out = b"II*\x00" + struct.pack("<I", ifd_at) + struct.pack("<H", len(entries))
    for tag, typ, value in entries:
        value = data_at if tag == 273 else value
        out += struct.pack("<HHI", tag, typ, 1) + (
            struct.pack("<HH", value, 0) if typ == 3 else struct.pack("<I", value)
        )
    return out + struct.pack("<I", 0) + gray.tobytes()


def test_a_clean_jpeg_decodes_exactly_as_opencv_decodes_it():
    image = cv2.cvtColor(nodule_scan(120, 150, seed=9)[0], cv2.COLOR_GRAY2BGR)
    image[:, :, 0] //= 2
    data = _jpeg(image)
    ours = decode_frames(data, "x.jpg")[0]
    assert np.array_equal(
        ours, cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    )
    with pytest.raises(ScanError, match=r"x\.jpg: corrupt JPEG data"):
        decode_frames(_cut(data), "x.jpg")


def test_a_png_with_a_flipped_bit_is_refused_naming_the_chunk_not_by_an_unnamed_libpng_line(capfd):
    data = bytearray(cv2.imencode(".png", nodule_scan(60, 80, seed=3)[0])[1].tobytes())
    data[data.index(b"IDAT") + 50] ^= 0xFF
    with pytest.raises(
        ScanError, match=r"x\.png: corrupt PNG data: the CRC of its IDAT chunk at byte \d+ does not match"
    ):
        decode_frames(bytes(data), "x.png")
    assert "libpng" not in capfd.readouterr().err


def test_webp_orientation_is_applied_too():
    stored = nodule_scan(40, 60, seed=8)[0]
    still = cv2.imencode(".webp", stored, [cv2.IMWRITE_WEBP_QUALITY, 101])[1].tobytes()  # lossless

    def chunk(kind: bytes, body: bytes) -> bytes:
        return kind + struct.pack("<I", len(body)) + body + b"\x00" * (len(body) % 2)

    header = bytes([0x08, 0, 0, 0]) + (59).to_bytes(3, "little") + (39).to_bytes(3, "little")  # EXIF flag, 60 x 40
    body = chunk(b"VP8X", header) + still[12:] + chunk(b"EXIF", _exif(6))
    webp = b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body
    frame = decode_frames(webp, "x.webp")[0]
    assert frame.shape[:2] == (60, 40) and np.array_equal(frame[:, :, 0], np.rot90(stored, -1))
