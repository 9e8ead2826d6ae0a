"""`edge-seg --watch`: real daemons, real files, real file-system events (no mocks of watchdog).

Waits use generous time-outs as liveness guards only; nothing here passes or fails on speed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime import Segmenter
from edge_runtime.job.ledger import read_history
from tests.helpers import make_tiny_model, synthetic, tiny_metadata, wait_for, write_png

TIMEOUT = 60.0
STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", re.MULTILINE)


class Daemon:
    """An `edge-seg --watch` subprocess with its log in a file."""

    def __init__(self, in_dir: Path, out_dir: Path, model: Path, *extra: str, log: Path | None = None):
        self.in_dir, self.out_dir = in_dir, out_dir
        self.log = log or out_dir.parent / f"daemon-{time.monotonic_ns()}.log"
        cmd = [
            sys.executable,
            "-m",
            "edge_runtime",
            "--watch",
            str(in_dir),
            "--out",
            str(out_dir),
            "--model",
            str(model),
            "--settle",
            "0.6",
            "--rescan",
            "3",
            *extra,
        ]
        self.fh = open(self.log, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stderr=self.fh, stdout=self.fh)
        wait_for(lambda: "watching" in self.text() or self.proc.poll() is not None, "the daemon to start")

    def raw(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def text(self) -> str:
        """The log without the time each console line starts with (a daemon's lines have it, off journald)."""
        return STAMP.sub("", self.raw())

    def ok_lines(self) -> Counter:
        return Counter(ln.split()[1] for ln in self.text().splitlines() if ln.startswith("ok "))

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(TIMEOUT)
        finally:
            self.fh.close()
        return code


def scan_bytes(seed: int, h: int = 220, w: int = 260) -> bytes:
    return cv2.imencode(".png", synthetic(seed, h, w)[0])[1].tobytes()


def ledger_records(out: Path) -> list[dict]:
    """Every record the ledger was given, oldest first (rel, event, recovered)."""
    return read_history(out)


def done_count(out: Path, rel: str) -> int:
    return sum(r["rel"] == rel and r["event"] == "done" and not r.get("recovered") for r in ledger_records(out))


@pytest.fixture
def dirs(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    return src, out


@pytest.fixture
def daemon(dirs, tiny_model):
    started: list[Daemon] = []

    def start(*extra: str) -> Daemon:
        d = Daemon(*dirs, tiny_model, *extra)
        started.append(d)
        return d

    yield start
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


def test_chunked_slow_write_gives_one_mask_from_the_complete_file(dirs, daemon, tiny_model):
    src, out = dirs
    d = daemon()
    data = scan_bytes(1)
    with open(src / "slow.png", "wb") as fh:  # a scanner writing in chunks, slower than nothing
        for i in range(4):
            fh.write(data[i * len(data) // 4 : (i + 1) * len(data) // 4])
            fh.flush()
            time.sleep(0.3)
    wait_for(lambda: (out / "slow.png").exists(), "the mask")
    time.sleep(1.5)  # let any late events arrive: they must not cause a second run
    assert d.stop() == 0
    assert d.ok_lines()["slow.png"] == 1
    assert done_count(out, "slow.png") == 1
    expected = Segmenter(tiny_model).segment(synthetic(1, 220, 260)[0]).masks[0.5]
    np.testing.assert_array_equal(cv2.imread(str(out / "slow.png"), cv2.IMREAD_UNCHANGED), expected)


def test_temp_name_then_rename_cp_and_mv_are_processed_once(dirs, daemon, tmp_path):
    src, out = dirs
    d = daemon()
    (src / ".incoming.png.tmp").write_bytes(scan_bytes(2))
    (src / "upload.png.part").write_bytes(scan_bytes(3))
    os.replace(src / ".incoming.png.tmp", src / "renamed.png")
    staged = tmp_path / "staged.png"
    staged.write_bytes(scan_bytes(4))
    subprocess.run(["cp", str(staged), str(src / "copied.png")], check=True)
    shutil.move(str(staged), str(src / "moved.png"))
    (src / "sub" / "deep").mkdir(parents=True)
    (src / "sub" / "deep" / "nested.png").write_bytes(scan_bytes(5))
    names = ["renamed.png", "copied.png", "moved.png", "sub/deep/nested.png"]
    wait_for(lambda: all((out / n).exists() for n in names), "four masks")
    time.sleep(1.0)
    assert d.stop() == 0
    assert d.ok_lines() == Counter(dict.fromkeys(names, 1))
    assert not list(out.rglob("*incoming*")) and not list(out.rglob("upload*"))


@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed")
def test_rsync_delivery_is_processed_once(dirs, daemon, tmp_path):
    src, out = dirs
    d = daemon()
    staged = tmp_path / "stage"
    staged.mkdir()
    for i in range(3):
        (staged / f"r{i}.png").write_bytes(scan_bytes(10 + i))
    subprocess.run(["rsync", "-a", f"{staged}/", f"{src}/"], check=True)
    wait_for(lambda: all((out / f"r{i}.png").exists() for i in range(3)), "rsync'd masks")
    time.sleep(1.0)
    assert d.stop() == 0
    assert d.ok_lines() == Counter({f"r{i}.png": 1 for i in range(3)})


@pytest.mark.skipif(shutil.which("scp") is None, reason="scp is not installed")
def test_scp_delivery_is_processed_once(dirs, daemon, tmp_path):
    src, out = dirs
    d = daemon()
    staged = tmp_path / "s.png"
    staged.write_bytes(scan_bytes(20))
    subprocess.run(["scp", "-q", str(staged), str(src / "scp.png")], check=True)
    wait_for(lambda: (out / "scp.png").exists(), "the scp'd mask")
    time.sleep(1.0)
    assert d.stop() == 0
    assert d.ok_lines() == Counter({"scp.png": 1})


def test_corrupt_scan_gets_an_error_record_and_the_daemon_goes_on(dirs, daemon):
    src, out = dirs
    d = daemon()
    (src / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    (src / "good.png").write_bytes(scan_bytes(30))
    wait_for(lambda: (out / "bad.png.error.txt").exists() and (out / "good.png").exists(), "error record + mask")
    record = (out / "bad.png.error.txt").read_text()
    assert "scan: bad.png" in record and "reason: truncated PNG" in record
    # the FAIL line is logged after its batch's files are written, so it can trail the error record
    wait_for(lambda: any(ln.startswith("FAIL bad.png: truncated PNG") for ln in d.text().splitlines()), "FAIL line")
    # the same bad file is not re-reported by the periodic rescan...
    time.sleep(3.5)
    assert sum(ln.startswith("FAIL bad.png") for ln in d.text().splitlines()) == 1
    status = json.loads((out / ".edge-seg" / "status.json").read_text())
    assert status["failed"] == 1 and status["last_error"]["scan"] == "bad.png"
    # ... but replacing it with a good scan gets it processed and clears the error record
    tmp = src / ".bad.png.new"
    tmp.write_bytes(scan_bytes(31))
    os.replace(tmp, src / "bad.png")
    wait_for(lambda: (out / "bad.png").exists() and not (out / "bad.png.error.txt").exists(), "the fixed scan")
    assert d.proc.poll() is None
    assert d.stop() == 0


def test_kill_9_then_restart_loses_and_repeats_nothing(dirs, daemon, tmp_path):
    src, out = dirs
    n = 40
    staged = tmp_path / "stage"
    staged.mkdir()
    for i in range(n):
        (staged / f"k{i:02d}.png").write_bytes(scan_bytes(100 + i, 300, 380))
    first = daemon("--batch-size", "2")
    for i in range(n):
        os.replace(staged / f"k{i:02d}.png", src / f"k{i:02d}.png")
    wait_for(lambda: len(first.ok_lines()) >= 8, "some masks before the kill")
    first.stop(signal.SIGKILL)
    assert len(first.ok_lines()) < n, "the daemon finished before the kill; the test proves nothing"
    second = daemon()
    names = [f"k{i:02d}.png" for i in range(n)]
    wait_for(
        lambda: (
            all((out / nm).exists() for nm in names) and all(done_count(out, nm) + _recovered(out, nm) for nm in names)
        ),
        "all masks after restart",
    )
    time.sleep(1.0)
    assert second.stop() == 0
    runs = first.ok_lines() + second.ok_lines()
    assert max(runs.values()) == 1, f"repeated: {[k for k, v in runs.items() if v > 1]}"
    for nm in names:
        mask = cv2.imread(str(out / nm), cv2.IMREAD_UNCHANGED)  # complete, decodable, right size
        assert mask is not None and mask.shape == (300, 380)
        # Done exactly once: one "done" record from whichever daemon did it (the first may be killed
        # after recording a scan but before logging its line), or written just before the kill and
        # recorded as done on restart -- never both, never twice.
        assert done_count(out, nm) + _recovered(out, nm) == 1, nm
    latest = {r["rel"]: r for r in ledger_records(out)}
    assert all(latest[nm]["event"] == "done" for nm in names)
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")], "temporary files left behind"


def _recovered(out: Path, rel: str) -> bool:
    return any(r["rel"] == rel and r.get("recovered") for r in ledger_records(out))


def test_polling_mode(dirs, daemon):
    src, out = dirs
    d = daemon("--polling", "0.3")
    (src / "p.png").write_bytes(scan_bytes(40))
    wait_for(lambda: (out / "p.png").exists(), "the mask in polling mode")
    assert "polling every 0.3 s" in d.text()
    assert d.stop() == 0
    assert d.ok_lines() == Counter({"p.png": 1})


def test_sigterm_exits_0_with_ledger_flushed_and_restart_repeats_nothing(dirs, daemon, tmp_path):
    src, out = dirs
    for i in range(5):
        (src / f"s{i}.png").write_bytes(scan_bytes(50 + i))
    d = daemon()
    wait_for(lambda: len(d.ok_lines()) == 5, "five masks")
    assert d.stop(signal.SIGTERM) == 0
    status = json.loads((out / ".edge-seg" / "status.json").read_text())
    assert status["state"] == "stopped" and status["done"] == 5
    assert {r["rel"] for r in ledger_records(out) if r["event"] == "done"} == {f"s{i}.png" for i in range(5)}
    again = daemon()
    time.sleep(1.5)
    assert again.stop(signal.SIGINT) == 0
    assert again.ok_lines() == Counter()
    # a new model makes every mask out of date
    other = make_tiny_model(tmp_path / "other.onnx", metadata=tiny_metadata(threshold=0.4))
    d3 = Daemon(src, out, other)
    wait_for(lambda: len(d3.ok_lines()) == 5, "five masks from the new model")
    assert d3.stop() == 0


def test_symlink_leading_outside_is_not_followed(dirs, daemon, tmp_path):
    src, out = dirs
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(scan_bytes(60))
    (src / "link.png").symlink_to(outside)
    (src / "real.png").write_bytes(scan_bytes(61))
    d = daemon()
    wait_for(lambda: (out / "real.png").exists(), "the real scan")
    time.sleep(3.5)  # a rescan passes: still reported only once
    assert d.stop() == 0
    assert not (out / "link.png").exists()
    assert d.text().count("SKIP link.png: symbolic link leads outside the input folder") == 1


def test_two_daemons_on_one_output_folder_are_refused(dirs, daemon, tiny_model):
    src, out = dirs
    d = daemon()
    res = subprocess.run(
        [sys.executable, "-m", "edge_runtime", "--watch", str(src), "--out", str(out), "--model", str(tiny_model)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert res.returncode == 2
    assert "already writing to this output folder" in res.stderr
    assert d.stop() == 0


def test_two_daemons_with_a_part_each_share_one_output_folder(dirs, daemon):
    from edge_runtime.job.parts import part_of

    src, out = dirs
    parts = [daemon("--num-parts", "2", "--part-id", str(k)) for k in range(2)]
    names = [f"s{i}.png" for i in range(12)]
    for i, nm in enumerate(names):
        (src / nm).write_bytes(scan_bytes(60 + i))
    wait_for(lambda: all((out / nm).exists() for nm in names), "every mask")
    time.sleep(1.0)
    assert [d.stop() for d in parts] == [0, 0]
    for k, d in enumerate(parts):
        assert d.ok_lines() == Counter({nm: 1 for nm in names if part_of(nm, 2) == k})  # its share, once
    assert all(done_count(out, nm) == 1 for nm in names)


def test_out_inside_in_is_refused(dirs, tiny_model):
    src, _ = dirs
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge_runtime",
            "--watch",
            str(src),
            "--out",
            str(src / "out"),
            "--model",
            str(tiny_model),
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert res.returncode == 2 and "inside input folder" in res.stderr


def test_startup_processes_the_backlog_and_writes_status(dirs, daemon):
    src, out = dirs
    for i in range(3):
        write_png(src / "old" / f"b{i}.png", synthetic(70 + i)[0])
    d = daemon()
    wait_for(lambda: len(d.ok_lines()) == 3, "the backlog")
    wait_for(lambda: (out / ".edge-seg" / "status.json").exists(), "the status file")
    status = json.loads((out / ".edge-seg" / "status.json").read_text())
    assert status["state"] == "running" and status["pid"] == d.proc.pid
    assert d.stop() == 0
