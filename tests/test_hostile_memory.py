"""The daemon under a real memory limit with every bomb in IN (issue 27, item 5): it lives, and records each.

The daemon runs under ``ulimit -v`` (2 GiB, the shipped unit's MemoryMax) with a decode-memory budget of 64 MiB;
each bomb gets its error record naming the declared size or the budget, the good scan its mask, and the
daemon stays up and stops cleanly. Before, the first bomb took 7 to 12 GB.
"""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys

import numpy as np
import pytest

from tests import bombs
from tests.helpers import synthetic, wait_for, write_dicom, write_png

pytest.importorskip("pydicom")
LIMIT_KB = 2 * 1024 * 1024


def _dicom_jpeg_bomb(path):
    import pydicom
    from pydicom.encaps import encapsulate

    write_dicom(path, np.zeros((64, 64), np.uint8), jpeg=True)
    ds = pydicom.dcmread(path)
    ds.PixelData = encapsulate([bombs.jpeg_declaring(50000, 50000)])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)


EXPECTED = {
    "tiff.tif": "too large: 101 pages of 3,600,000,001 pixels in all",
    "apng.png": "too large: 100 frames of 3,600,000,000 pixels in all",
    "gif.gif": "too large: 100 frames of 3,600,000,000 pixels in all",
    "webp.webp": "too large: 100 frames of 3,600,000,000 pixels in all",
    "ihdr.png": "image too large: it declares 20000 x 20000 pixels",
    "sof.jpg": "image too large: it declares 50000 x 50000 pixels",
    "siz.jp2": "image too large: it declares 50000 x 50000 pixels",
    "jpeg-in-dicom.dcm": "DICOM frame 1 declares 50000 x 50000 pixels in its own header, the DICOM header 64 x 64",
    "frames-beyond.dcm": "DICOM pixel data is 45,000,000 bytes but the header (1 frame(s) of 1000 x 1000",
    "tiny-frames.dcm": "DICOM pixel data is 113,400 bytes but the header (1 frame(s) of 10 x 10",
    "budget.png": "over the decode-memory budget: decoding needs about 103 MiB, the budget is 64 MiB",
}


def test_the_daemon_lives_under_a_memory_limit_with_every_bomb_in_in(tmp_path, tiny_model):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for name, data in {
        "tiff.tif": bombs.tiff_bomb(),
        "apng.png": bombs.apng_bomb(),
        "gif.gif": bombs.gif_bomb(),
        "webp.webp": bombs.webp_bomb(),
        "ihdr.png": bombs.png_bomb(),
        "sof.jpg": bombs.jpeg_declaring(50000, 50000),
        "siz.jp2": bombs.j2k_declaring(50000, 50000),
    }.items():
        (src / name).write_bytes(data)
    _dicom_jpeg_bomb(src / "jpeg-in-dicom.dcm")
    write_dicom(src / "frames-beyond.dcm", np.zeros((1000, 1000), np.uint8), pixel_data=bytes(1000 * 1000 * 45))
    write_dicom(src / "tiny-frames.dcm", np.zeros((10, 10), np.uint8), pixel_data=bytes(10 * 10 * 1134))
    write_png(src / "budget.png", np.zeros((4000, 4500, 3), np.uint8))  # 18 Mpx: within the limits, not the budget
    write_png(src / "good.png", synthetic(1)[0])
    daemon = [sys.executable, "-m", "edge_runtime", "--watch", str(src), "--out", str(out)]
    daemon += ["--model", str(tiny_model), "--settle", "0.6", "--rescan", "3", "--decode-budget-mb", "64"]
    log = tmp_path / "daemon.log"
    with log.open("w") as fh:
        proc = subprocess.Popen(
            ["bash", "-c", f"ulimit -v {LIMIT_KB} && exec {shlex.join(daemon)}"], stdout=fh, stderr=fh
        )
        try:
            wait_for(
                lambda: all((out / f"{n}.error.txt").exists() for n in EXPECTED) or proc.poll() is not None,
                "an error record for every bomb",
                timeout=240,
            )
            wait_for(lambda: (out / "good.png").exists() or proc.poll() is not None, "the good scan's mask")
            assert proc.poll() is None, log.read_text()[-2000:]  # alive under the limit
            for name, words in EXPECTED.items():
                record = (out / f"{name}.error.txt").read_text()
                assert f"reason: {words}" in record, record
            status_file = out / ".edge-seg" / "status.json"
            wait_for(lambda: json.loads(status_file.read_text())["failed"] == len(EXPECTED), "the status to count them")
            status = json.loads(status_file.read_text())
            assert status["state"] == "running" and status["last_error"]["scan"] in EXPECTED
            assert EXPECTED[status["last_error"]["scan"]] in status["last_error"]["reason"]
            text = log.read_text()
            assert all(f"FAIL {name}: {words}" in text for name, words in EXPECTED.items())
            assert "Traceback" not in text and "MemoryError" not in text
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            code = proc.wait(120)
    assert code == 0
