"""The daemon against odd happenings: IN removed and made again, scans vanishing before they are read (issue 15)."""

from __future__ import annotations

import shutil
import time

from tests.test_watch import Daemon, dirs, scan_bytes, wait_for  # noqa: F401 - the fixture


def test_in_removed_and_made_again_is_said_once_each_and_followed_again(dirs, tiny_model):  # noqa: F811
    src, out = dirs
    d = Daemon(src, out, tiny_model)  # --rescan 3
    try:
        (src / "a.png").write_bytes(scan_bytes(1))
        wait_for(lambda: (out / "a.png").exists(), "the first mask")
        shutil.rmtree(src)
        wait_for(lambda: "is not available" in d.text(), "the daemon to notice")
        time.sleep(7)  # two more rescans without IN: no more lines
        src.mkdir()
        wait_for(lambda: "is available again" in d.text(), "the daemon to notice IN is back")
        (src / "b.png").write_bytes(scan_bytes(2))
        wait_for(lambda: (out / "b.png").exists(), "a mask for a scan in the new IN")
    finally:
        assert d.stop() == 0
    assert d.text().count("is not available") == 1
    assert d.text().count("is available again") == 1
    assert "Traceback" not in d.text()


def test_a_scan_removed_before_it_is_read_is_no_error(dirs, tiny_model):  # noqa: F811
    src, out = dirs
    d = Daemon(src, out, tiny_model)
    try:
        for i in range(20):  # written slowly (no close event yet), removed before it settles
            with open(src / f"gone{i}.png", "wb") as fh:
                fh.write(scan_bytes(i)[:100])
                fh.flush()
                (src / f"gone{i}.png").unlink()
        (src / "kept.png").write_bytes(scan_bytes(30))
        wait_for(lambda: (out / "kept.png").exists(), "the kept scan")
        time.sleep(1.0)
    finally:
        assert d.stop() == 0
    assert "FAIL" not in d.text() and "Traceback" not in d.text()
    assert not list(out.glob("gone*"))


def test_files_that_are_not_scans_are_counted_at_start_and_named_once_with_v(dirs, tiny_model):  # noqa: F811
    src, out = dirs
    (src / "notes.txt").write_text("x")
    (src / "a.png").write_bytes(scan_bytes(1))
    d = Daemon(src, out, tiny_model, "-v")  # --rescan 3
    try:
        wait_for(lambda: (out / "a.png").exists(), "the mask")
        time.sleep(7)  # two rescans more
    finally:
        assert d.stop() == 0
    assert "not scans, left alone: 1 .txt files" in d.text()
    assert d.text().count("not a scan: notes.txt") == 1
