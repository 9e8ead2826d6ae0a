"""Decompression bombs (issue 27, items 1, 2, 4, 5): every declared page and frame is sized before any is decoded.

The files are built by tests/bombs.py. The decoders are replaced by ones that fail the test if called, so
each case shows the file is refused on its headers alone, not after a decode that would have taken GBs.
"""

from __future__ import annotations

import zlib

import cv2
import numpy as np
import pytest

from edge_runtime.errors import ScanError
from edge_runtime.files import headers
from edge_runtime.files import scans as scanio
from edge_runtime.files.scans import decode_frames, read_scan
from tests import bombs
from tests.helpers import write_dicom

pytest.importorskip("pydicom")


def _no_decoding(*args, **kwargs):
    raise AssertionError("a decoder was called on a file that should have been refused on its headers")


@pytest.fixture
def no_decoder(monkeypatch):
    monkeypatch.setattr(scanio.cv2, "imdecode", _no_decoding)
    monkeypatch.setattr(scanio.cv2, "imdecodemulti", _no_decoding)
    monkeypatch.setattr(scanio.cv2, "imdecodeanimation", _no_decoding)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (bombs.tiff_bomb, "too large: 101 pages of 3,600,000,001 pixels in all, over the limit of 160,000,000"),
        (bombs.apng_bomb, "too large: 100 frames of 3,600,000,000 pixels in all"),
        (bombs.gif_bomb, "too large: 100 frames of 3,600,000,000 pixels in all"),
        (bombs.webp_bomb, "too large: 100 frames of 3,600,000,000 pixels in all"),
        (bombs.png_bomb, "image too large: it declares 20000 x 20000 pixels, over the limit of 40,000,000"),
        (lambda: bombs.jpeg_declaring(50000, 50000), "image too large: it declares 50000 x 50000 pixels"),
        (lambda: bombs.j2k_declaring(50000, 50000), "image too large: it declares 50000 x 50000 pixels"),
    ],
    ids=["tiff", "apng", "gif", "webp", "png", "jpeg", "jpeg2000"],
)
def test_a_bomb_is_refused_on_its_declared_sizes_before_decoding(no_decoder, build, message):
    with pytest.raises(ScanError) as caught:
        decode_frames(build(), "bomb")
    assert str(caught.value) == f"bomb: {message}" or str(caught.value).startswith(f"bomb: {message}")


@pytest.mark.parametrize("kind", ["gif", "webp", "apng"])
def test_a_frame_larger_than_its_canvas_is_refused(no_decoder, kind):
    data = {"gif": bombs.gif_bomb, "webp": bombs.webp_bomb, "apng": bombs.apng_bomb}[kind](frames=1, side=64)
    canvas = {"gif": (6, 8), "webp": (b"VP8X", 12), "apng": (b"IHDR", 4)}[kind]
    data = bytearray(data)
    if kind == "gif":
        data[6:10] = (32).to_bytes(2, "little") * 2  # the screen shrinks to 32 x 32, the frame stays 64 x 64
    else:
        at = data.index(canvas[0]) + canvas[1]
        if kind == "webp":
            data[at : at + 6] = (31).to_bytes(3, "little") * 2
        else:
            data[at : at + 8] = (32).to_bytes(4, "big") * 2
            ihdr = data.index(b"IHDR")  # its CRC made right again: only the sizes are wrong
            data[ihdr + 17 : ihdr + 21] = zlib.crc32(data[ihdr : ihdr + 17]).to_bytes(4, "big")
    with pytest.raises(ScanError, match=r"frame 1 is 64 x 64, its (canvas|screen) 32 x 32"):
        decode_frames(bytes(data), "x")


def test_real_multi_image_files_still_decode_frame_for_frame():
    pages = [np.full((30, 40), v, np.uint8) for v in (10, 20, 30)]
    for ext in (".tif", ".gif"):
        ok, buf = cv2.imencodemulti(ext, [cv2.cvtColor(p, cv2.COLOR_GRAY2BGR) for p in pages])
        assert ok
        frames = decode_frames(buf.tobytes(), f"x{ext}")
        assert len(frames) == 3 and frames[2].shape[:2] == (30, 40)


def test_the_decode_budget_is_settable_and_refuses_before_decoding(monkeypatch, no_decoder):
    image = cv2.imencode(".png", np.zeros((1000, 1000, 3), np.uint8))[1].tobytes()
    monkeypatch.setenv(headers.BUDGET_ENV, "4")
    with pytest.raises(ScanError, match=r"over the decode-memory budget: decoding needs about 6 MiB, the budget is 4"):
        decode_frames(image, "big.png")
    monkeypatch.setenv(headers.BUDGET_ENV, "nan")  # not a number: the default, never "no budget"
    assert headers.decode_budget_bytes() == headers.DEFAULT_BUDGET_MB * 2**20


# --- DICOM -------------------------------------------------------------------------------------------------


def _decoders_off(monkeypatch):
    from pydicom.pixels.decoders.base import Decoder

    monkeypatch.setattr(Decoder, "iter_array", _no_decoding)
    monkeypatch.setattr(Decoder, "as_array", _no_decoding)


@pytest.mark.parametrize(
    ("syntax", "frame"),
    [
        ("1.2.840.10008.1.2.4.50", lambda: bombs.jpeg_declaring(50000, 50000)),  # JPEG Baseline
        ("1.2.840.10008.1.2.4.80", lambda: _as_jpeg_ls(bombs.jpeg_declaring(50000, 50000))),  # JPEG-LS
        ("1.2.840.10008.1.2.4.90", lambda: bombs.j2k_declaring(50000, 50000)),  # JPEG 2000
        ("1.2.840.10008.1.2.4.90", lambda: _codestream(bombs.j2k_declaring(50000, 50000))),
    ],
    ids=["jpeg", "jpeg-ls", "jp2", "j2k-codestream"],
)
def test_an_encapsulated_frame_declaring_another_size_is_refused_before_decoding(tmp_path, monkeypatch, syntax, frame):
    from pydicom.encaps import encapsulate

    path = write_dicom(tmp_path / "bomb.dcm", np.zeros((64, 64), np.uint8), jpeg=True)
    _rewrite(path, syntax, encapsulate([frame()]))
    _decoders_off(monkeypatch)
    with pytest.raises(
        ScanError,
        match=r"bomb.dcm: DICOM frame 1 declares 50000 x 50000 pixels in its own header, "
        r"the DICOM header 64 x 64: refused before decoding",
    ):
        read_scan(path)


def test_more_encapsulated_frames_than_the_header_says_are_refused(tmp_path, monkeypatch):
    from pydicom.encaps import encapsulate

    path = write_dicom(tmp_path / "many.dcm", np.zeros((64, 64), np.uint8), jpeg=True)
    one = bombs.jpeg_declaring(64, 64)
    _rewrite(path, "1.2.840.10008.1.2.4.50", encapsulate([one] * 3, has_bot=False))
    _decoders_off(monkeypatch)
    with pytest.raises(ScanError, match="DICOM pixel data holds 3 encapsulated frames, the header says 1: refused"):
        read_scan(path)


@pytest.mark.parametrize(("side", "frames"), [(2000, 45), (10, 1134)])
def test_native_pixel_data_longer_than_the_header_is_refused_naming_both_lengths(tmp_path, side, frames):
    pixels = np.zeros((side, side), np.uint8)
    path = write_dicom(tmp_path / "long.dcm", pixels, pixel_data=bytes(side * side * frames))
    with pytest.raises(ScanError) as caught:
        read_scan(path)
    assert str(caught.value) == (
        f"{path}: DICOM pixel data is {side * side * frames:,} bytes but the header (1 frame(s) of {side} x {side}, "
        f"1 sample(s) of 8 bits) says {side * side:,}: refused"
    )


def _codestream(jp2: bytes) -> bytes:
    """A JP2 file's codestream alone (as most DICOM JPEG 2000 frames are stored)."""
    return jp2[jp2.index(b"\xff\x4f\xff\x51") :]


def _as_jpeg_ls(jpeg: bytes) -> bytes:
    """The same bytes with the SOF0 marker made JPEG-LS's SOF55 (only the header is read)."""
    at = jpeg.index(b"\xff\xc0")
    return jpeg[:at] + b"\xff\xf7" + jpeg[at + 2 :]


def _rewrite(path, syntax: str, pixel_data: bytes) -> None:
    import pydicom

    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = pixel_data
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
