"""Files of many pages and frames (issue 27, item 1): the peak memory of decoding them, measured in a child process.

A bomb (pages or frames declaring far more than they hold, or a GIF screen of 6000 x 6000 behind a few KB) is
refused on its headers with the peak hardly moved; a real 20-page TIFF is decoded a batch of pages at a time,
so decoding peaks near its pages and one batch, where it took twice its pages before.
"""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from edge_runtime.files import headers, scans
from edge_runtime.files.formats import sniff_format
from edge_runtime.files.scans import decode_frames
from tests import bombs

_PEAK = """
import sys
from edge_runtime.errors import ScanError
from edge_runtime.files import scans
scans._BATCH_BYTES = int(sys.argv[2])
data = open(sys.argv[1], "rb").read()

def kib(field):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field))

with open("/proc/self/clear_refs", "w") as fh:  # the peak (VmHWM) starts again from here
    fh.write("5")
before = kib("VmRSS:")
try:
    frames = scans.decode_frames(data, sys.argv[1])
    said = f"ok {sum(f.nbytes for f in frames)}"
except ScanError as exc:
    said = f"refused {exc}"
print((kib("VmHWM:") - before) * 1024, said)
"""
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the peak from /proc")


def _peak(path, batch: int = 64 * 2**20) -> tuple[int, str]:
    """Bytes the peak resident size (VmHWM) of a fresh process grew by while decoding ``path``, and what it said."""
    done = subprocess.run(
        [sys.executable, "-c", _PEAK, str(path), str(batch)], capture_output=True, text=True, check=True
    )
    grown, said = done.stdout.strip().split(" ", 1)
    return int(grown), said


@pytest.mark.parametrize(
    ("name", "build", "words"),
    [
        ("pages.tif", bombs.tiff_bomb, "too large: 101 pages of 3,600,000,001 pixels in all"),
        ("frames.gif", bombs.gif_bomb, "too large: 100 frames of 3,600,000,000 pixels in all"),
        ("screen.gif", lambda: bombs.gif_bomb(frames=1, side=65535), "it declares 65535 x 65535 pixels"),
        ("frames.png", bombs.apng_bomb, "too large: 100 frames of 3,600,000,000 pixels in all"),
        ("frames.webp", bombs.webp_bomb, "too large: 100 frames of 3,600,000,000 pixels in all"),
    ],
)
def test_a_bomb_of_pages_or_frames_is_refused_with_the_peak_hardly_moved(tmp_path, name, build, words):
    path = tmp_path / name
    path.write_bytes(build())
    grown, said = _peak(path)
    assert said.startswith(f"refused {path}: ") and words in said
    assert grown < 32 * 2**20, f"{grown / 2**20:.0f} MiB"


def _pages(n: int = 20, side: int = 1200) -> list[np.ndarray]:
    pages = []
    for i in range(n):
        page = np.full((side, side, 3), 10 * i, np.uint8)
        cv2.circle(page, (side // 2, side // 2), side // 4, (200, 100 + i, 50), -1)
        pages.append(page)
    return pages


def _encoded(ext: str, images: list[np.ndarray]) -> bytes:
    if ext == ".tif":
        return cv2.imencodemulti(ext, images)[1].tobytes()
    animation = cv2.Animation()
    animation.frames, animation.durations = images, [100] * len(images)
    return cv2.imencodeanimation(ext, animation)[1].tobytes()


@pytest.mark.parametrize(
    ("ext", "bound"),
    # decoded in one call these peaked at 2.02 (TIFF, GIF, APNG) and 2.69 (WEBP) times their frames; in
    # batches of 8 MiB at 1.08, 1.26, 1.22 and 1.58 times
    [(".tif", 1.3), (".gif", 1.5), (".png", 1.5), (".webp", 1.9)],
)
def test_a_real_file_of_many_pages_or_frames_peaks_near_them_not_twice_them(tmp_path, ext, bound):
    path = tmp_path / f"pages{ext}"
    path.write_bytes(_encoded(ext, _pages()))
    grown, said = _peak(path, batch=8 * 2**20)
    assert said.startswith("ok ")
    pages = int(said.split()[1])  # 20 x 1200 x 1200 x 3 bytes: 82 MiB
    assert grown < bound * pages, f"{grown / 2**20:.0f} MiB for {pages / 2**20:.0f} MiB of pages"


def test_tiff_pages_decoded_in_batches_are_every_page_in_order(monkeypatch):
    pages = _pages(7, 120)
    data = _encoded(".tif", pages)
    monkeypatch.setattr(scans, "_BATCH_BYTES", 3 * 120 * 120 * 3)  # three pages a batch: 3 + 3 + 1
    calls = []
    real = cv2.imdecodemulti

    def counted(*args):
        calls.append(args[3])
        return real(*args)

    monkeypatch.setattr(cv2, "imdecodemulti", counted)
    frames = decode_frames(data, "x.tif")
    assert calls == [(0, 3), (3, 6), (6, 8)]
    assert [np.array_equal(f, cv2.cvtColor(p, cv2.COLOR_BGR2RGB)) for f, p in zip(frames, pages, strict=True)] == [
        True
    ] * 7


@pytest.mark.parametrize("ext", [".gif", ".png", ".webp"])
def test_animation_frames_decoded_in_batches_are_the_frames_of_one_call(monkeypatch, ext):
    """Each batch starts where the last ended (a frame is composed on those before it): the same pixels as
    decoding the whole animation at once, every frame, in order."""
    data = _encoded(ext, _pages(7, 120))
    whole = decode_frames(data, f"x{ext}")
    first = headers.declared_frames(data, sniff_format(data))[0]  # GIF and WEBP frames are counted as RGBA
    monkeypatch.setattr(scans, "_BATCH_BYTES", 3 * first.pixels * first.pixel_bytes)  # three frames a batch
    calls = []
    real = cv2.imdecodeanimation

    def counted(buf, start, count):
        calls.append((start, count))
        return real(buf, start, count)

    monkeypatch.setattr(cv2, "imdecodeanimation", counted)
    frames = decode_frames(data, f"x{ext}")
    assert calls == [(0, 3), (3, 3), (6, 2)]  # the last asks for one more than declared: a hidden frame is refused
    assert len(frames) == 7 and all(np.array_equal(a, b) for a, b in zip(frames, whole, strict=True))


def test_the_budget_counts_an_animated_webp_at_its_decoders_peak(monkeypatch):
    """OpenCV's WEBP decoder peaks at 2.7 times the frames: 10 MiB of frames fit 25 MiB counted twice, not thrice."""
    from edge_runtime.errors import ScanError
    from edge_runtime.files.headers import BUDGET_ENV, Declared, check_declared

    monkeypatch.setenv(BUDGET_ENV, "25")
    frames = [Declared(1024, 1024, 1)] * 10  # 10 MiB decoded
    check_declared("a.gif", "GIF", frames)  # counted twice: 20 MiB
    with pytest.raises(ScanError, match="decoding needs about 30 MiB, the budget is 25 MiB"):
        check_declared("a.webp", "WEBP", frames)
