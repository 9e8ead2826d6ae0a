"""Inputs that used to be dropped or misread: multi-page TIFF, GIF/WEBP/JPEG 2000, trailing bytes, tiny images,
and files under IN that are not scans (issue 15)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge_runtime.cli import main
from edge_runtime.errors import ScanError
from edge_runtime.files.scans import decode_frames, read_scan
from tests.helpers import synthetic, write_png


def run(*args) -> int:
    return main([str(a) for a in args])


def encoded(ext: str, image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(ext, image)
    assert ok
    return buf.tobytes()


def test_multi_page_tiff_pages_are_frames_named_like_dicom_frames(tmp_path, tiny_model):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    pages = [synthetic(s, 120, 140)[0] for s in (1, 2, 3)]
    ok, buf = cv2.imencodemulti(".tif", pages)
    assert ok
    (src / "stack.tif").write_bytes(buf.tobytes())
    scan = read_scan(src / "stack.tif")
    assert len(scan.frames) == 3 and all(np.array_equal(a, b) for a, b in zip(scan.frames, pages, strict=True))
    assert run(src, "--out", out, "--model", tiny_model) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["stack_f0001.png", "stack_f0002.png", "stack_f0003.png"]


def test_tiff_pages_of_different_sizes_are_refused_with_the_sizes(tmp_path):
    _, buf = cv2.imencodemulti(".tif", [synthetic(1, 120, 140)[0], synthetic(2, 60, 70)[0]])
    with pytest.raises(ScanError, match=r"its 2 TIFF pages are not all the same size \(70 x 60, 140 x 120\)"):
        decode_frames(buf.tobytes(), "x.tif")


@pytest.mark.parametrize("ext", [".webp", ".jp2", ".gif"])
def test_webp_jpeg2000_and_gif_are_read(tmp_path, tiny_model, ext):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    image = synthetic(4, 100, 130)[0]
    (src / f"scan{ext}").write_bytes(encoded(ext, cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)))
    assert run(src, "--out", out, "--model", tiny_model) == 0
    mask = cv2.imread(str(out / "scan.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (100, 130) and mask.max() == 255


def test_an_animated_gif_gives_one_mask_per_frame(tmp_path, tiny_model):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    frames = [cv2.cvtColor(synthetic(s, 90, 110)[0], cv2.COLOR_GRAY2BGR) for s in (1, 2)]
    ok, buf = cv2.imencodemulti(".gif", frames)
    assert ok
    (src / "cine.gif").write_bytes(buf.tobytes())
    assert run(src, "--out", out, "--model", tiny_model) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["cine_f0001.png", "cine_f0002.png"]


def test_a_folder_of_only_gifs_is_not_no_scans_found(tmp_path, tiny_model, capfd):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    (src / "a.gif").write_bytes(encoded(".gif", cv2.cvtColor(synthetic(1, 80, 80)[0], cv2.COLOR_GRAY2BGR)))
    (src / "b.gif").write_bytes(b"GIF89a not really")
    assert run(src, "--out", out, "--model", tiny_model) == 1
    err = capfd.readouterr().err
    assert "no scans found" not in err
    assert "ok   a.gif -> a.png" in err and "FAIL b.gif: corrupt or truncated GIF data" in err


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_trailing_bytes_after_a_valid_image_are_read_with_a_warning(tmp_path, ext, caplog):
    image = synthetic(5, 90, 100)[0]
    data = encoded(ext, image)
    path = tmp_path / f"x{ext}"
    path.write_bytes(data + b"\r\n\x00exporter padding")
    scan = read_scan(path)
    assert scan.frames[0].shape == (90, 100)
    assert "19 byte(s) after the end of the" in caplog.text


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_a_truly_truncated_image_is_still_refused(tmp_path, ext):
    data = encoded(ext, synthetic(5, 90, 100)[0])
    path = tmp_path / f"x{ext}"
    path.write_bytes(data[:-10])
    with pytest.raises(ScanError, match="truncated"):
        read_scan(path)


def test_a_jpeg_whose_exif_thumbnail_ends_early_is_truncated_when_cut(tmp_path):
    """The thumbnail's own end-of-image marker, inside APP1, is not the image's end."""
    thumb = encoded(".jpg", synthetic(1, 16, 16)[0])
    main_jpeg = encoded(".jpg", synthetic(2, 90, 100)[0])
    app1 = b"Exif\x00\x00" + thumb
    data = main_jpeg[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + main_jpeg[2:]
    path = tmp_path / "x.jpg"
    path.write_bytes(data[: len(data) - 200])
    with pytest.raises(ScanError, match="truncated JPEG"):
        read_scan(path)
    path.write_bytes(data)
    assert read_scan(path).frames[0].shape == (90, 100)


@pytest.mark.parametrize("size", [(1, 1), (1, 2), (2, 2), (3, 1)])
def test_tiny_images_are_processed_without_a_traceback(tmp_path, tiny_model, capfd, size):
    src, out = tmp_path / "in", tmp_path / "out"
    write_png(src / "tiny.png", np.full(size, 30, np.uint8))
    assert run(src, "--out", out, "--model", tiny_model, "--overlay", "--report") == 0
    assert "Traceback" not in capfd.readouterr().err
    assert cv2.imread(str(out / "tiny.png"), cv2.IMREAD_UNCHANGED).shape == size


def test_files_that_are_not_scans_are_counted_in_the_summary_and_named_with_v(tmp_path, tiny_model, capfd):
    src, out = tmp_path / "in", tmp_path / "out"
    write_png(src / "a.png", synthetic(1)[0])
    (src / "notes.txt").write_text("x")
    (src / "more.txt").write_text("x")
    (src / "h.png.part").write_bytes(b"x")
    (src / ".cache").mkdir()
    (src / ".cache" / "b.png").write_bytes(b"x")
    assert run(src, "--out", out, "--model", tiny_model) == 0
    err = capfd.readouterr().err
    assert "not scans, left alone: 2 .txt files, 1 hidden folders, 1 hidden or temporary" in err
    assert run(src, "--out", out, "--model", tiny_model, "-v") == 0
    err = capfd.readouterr().err
    assert "not a scan: notes.txt" in err and "not a scan: .cache/" in err


def test_a_tiff_of_too_many_pages_is_refused_before_it_is_decoded_whole(monkeypatch):
    from edge_runtime.files import headers

    pages = [synthetic(s, 40, 50)[0] for s in range(6)]
    _, buf = cv2.imencodemulti(".tif", pages)
    monkeypatch.setattr(headers, "MAX_TOTAL_PIXELS", 4 * 40 * 50)
    with pytest.raises(ScanError, match="too large: 6 pages of 12,000 pixels in all, over the limit of 8,000"):
        decode_frames(buf.tobytes(), "x.tif")
    monkeypatch.setattr(headers, "MAX_TOTAL_PIXELS", 6 * 40 * 50)
    assert len(decode_frames(buf.tobytes(), "x.tif")) == 6


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="named pipes are POSIX")
def test_a_named_pipe_named_like_a_scan_is_refused_not_waited_on_forever(tmp_path, tiny_model):
    import os
    import subprocess
    import sys

    src, out = tmp_path / "in", tmp_path / "out"
    write_png(src / "a.png", synthetic(1)[0])
    os.mkfifo(src / "pipe.png")
    os.mkfifo(src / "IM0001")  # no suffix: looked at for a DICOM marker
    cmd = [sys.executable, "-m", "edge_runtime", str(src), "--out", str(out), "--model", str(tiny_model)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stderr
    assert "FAIL pipe.png: not a regular file (a named pipe), not a scan" in res.stderr
    assert (out / "a.png").exists() and "Traceback" not in res.stderr


@pytest.mark.skipif(__import__("sys").platform != "linux", reason="file names of any bytes are a Linux thing")
def test_file_names_that_are_not_utf8_are_processed_and_reported(tmp_path, tiny_model, capfd):
    import os

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    good = os.path.join(os.fsencode(src), b"good\xfe.png")
    with open(good, "wb") as fh:
        fh.write(encoded(".png", synthetic(1)[0]))
    with open(os.path.join(os.fsencode(src), b"bad\xffname.png"), "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n broken")
    assert run(src, "--out", out, "--model", tiny_model, "--report", "--overlay") == 1
    err = capfd.readouterr().err
    assert "Traceback" not in err and "FAIL bad\\udcffname.png: truncated PNG" in err
    names = set(os.listdir(os.fsencode(out)))
    assert {b"good\xfe.png", b"bad\xffname.png.error.txt", b"run-summary.csv"} <= names
    with open(os.path.join(os.fsencode(out), b"bad\xffname.png.error.txt"), "rb") as fh:
        assert b"scan: bad\xffname.png" in fh.read()
    assert run(src, "--out", out, "--model", tiny_model, "--report", "--overlay") == 1  # the ledger reads back
