"""OUT that stops taking writes (disk full, EIO, permissions) is not the scans' fault (issue 15).

Faults are injected in-process by replacing the durable writer the mask writer and the probe use;
``test_full_disk_real.py`` does the same with a real full file system and a real daemon.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
import time
from pathlib import Path

import cv2
import pytest

from edge_runtime import watch as watch_mod
from edge_runtime.cli import main
from edge_runtime.files import durable
from edge_runtime.job.assemble import open_job
from edge_runtime.job.ledger import Ledger, read_history
from edge_runtime.job.plan import Planner
from edge_runtime.job.settings import JobRequest, RunOptions
from edge_runtime.job.sources import WatchedFolder
from edge_runtime.outputs import masks
from tests.helpers import status, synthetic, wait_for, write_png

TIMEOUT = 60.0


class FullDisk:
    """While ``full`` is set, every durable write of a mask (and the probe's) fails as on a full disk."""

    def __init__(self, monkeypatch, code: int = errno.ENOSPC, after: int = 0) -> None:
        self.full = threading.Event()
        self.code = code
        self.after = after  # writes that still succeed before the disk is full
        self.real = durable.write_atomic
        self.writes = 0
        self.lock = threading.Lock()
        monkeypatch.setattr(masks, "write_atomic", self.write)
        monkeypatch.setattr(durable, "write_atomic", self.write)  # probe_writable's

    def write(self, path, data, fsync: bool = True) -> None:
        with self.lock:
            self.writes += 1
            failing = self.full.is_set() and self.writes > self.after
        if failing:
            raise OSError(self.code, os.strerror(self.code), str(path))
        self.real(path, data, fsync=fsync)


def put_scan(path: Path, seed: int) -> None:
    """A scan written without the durable writer (which the tests make fail)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cv2.imencode(".png", synthetic(seed)[0])[1].tobytes())


def records(out: Path) -> list[dict]:
    return read_history(out) if (out / ".edge-seg" / "ledger.sqlite").exists() else []


class InProcessDaemon:
    def __init__(self, src: Path, out: Path, model: Path) -> None:
        options = RunOptions(workers=2, batch_size=1)
        self.job = open_job(src, out, JobRequest(model, None, ()), options, daemon=True)
        folder = WatchedFolder(self.job.in_dir, lambda r: self.job.planner.needs_work(r, retry_failed=False), 0.3)
        self.daemon = watch_mod.Daemon(self.job, folder, rescan=1.0)
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        self.code = self.daemon.run()

    def stop(self) -> int | None:
        self.daemon.request_stop()
        self.thread.join(TIMEOUT)
        self.job.close()
        return self.code


@pytest.fixture
def fast_retry(monkeypatch):
    from edge_runtime import blocked, status_file

    monkeypatch.setattr(blocked, "RETRY_FIRST", 0.2)  # the daemon's back-off while OUT takes no writes
    monkeypatch.setattr(blocked, "RETRY_MAX", 0.4)
    monkeypatch.setattr(status_file, "STATUS_EVERY", 0.3)
    monkeypatch.setattr(watch_mod, "STATUS_EVERY", 0.3)


def test_watch_pauses_on_a_full_disk_says_so_once_and_retries_when_space_returns(
    tmp_path, tiny_model, monkeypatch, caplog, fast_retry
):
    caplog.set_level(logging.DEBUG)
    src, out = tmp_path / "in", tmp_path / "out"
    for i in range(2):
        write_png(src / f"a{i}.png", synthetic(i)[0])
    disk = FullDisk(monkeypatch)
    disk.full.set()
    d = InProcessDaemon(src, out, tiny_model)
    try:
        wait_for(lambda: status(out).get("state") == "blocked", "the status file to say blocked")
        st = status(out)
        assert st["problem"]["what"] == "disk full" and "No space left on device" in st["problem"]["detail"]
        for i in range(2, 4):  # arrivals while blocked wait in the queue
            put_scan(src / f"a{i}.png", i)
        probes = disk.writes
        wait_for(lambda: disk.writes >= probes + 4, "several probes while the disk is full")
        assert not list(out.glob("*.png")) and not list(out.glob("*.error.txt"))
        assert not [r for r in records(out) if r["event"] == "error"], "a full disk was blamed on a scan"
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert sum("cannot write to" in m for m in errors) == 1, errors
        assert not any("Traceback" in m or "unexpected error" in m for m in errors)
        disk.full.clear()
        wait_for(lambda: all((out / f"a{i}.png").exists() for i in range(4)), "all masks once space is back")
        wait_for(lambda: status(out).get("state") == "running", "the status file to say running")
    finally:
        assert d.stop() == 0
    messages = [r.getMessage() for r in caplog.records]
    assert sum("can be written again" in m for m in messages) == 1
    done = [r["rel"] for r in records(out) if r["event"] == "done"]
    assert sorted(done) == [f"a{i}.png" for i in range(4)]
    assert status(out)["state"] == "stopped" and status(out)["problem"] is None


def test_a_restart_retries_the_scans_a_full_disk_held_back(tmp_path, tiny_model, monkeypatch, fast_retry):
    src, out = tmp_path / "in", tmp_path / "out"
    write_png(src / "x.png", synthetic(1)[0])
    disk = FullDisk(monkeypatch)
    disk.full.set()
    d = InProcessDaemon(src, out, tiny_model)
    wait_for(lambda: status(out).get("state") == "blocked", "blocked")
    assert d.stop() == 0
    assert not (out / "x.png").exists()
    disk.full.clear()
    d2 = InProcessDaemon(src, out, tiny_model)
    try:
        wait_for(lambda: (out / "x.png").exists(), "the mask after the restart")
    finally:
        d2.stop()


def test_a_scan_whose_own_output_path_is_blocked_gets_an_error_record(tmp_path, tiny_model):
    """A file where the scan's output folder should be is the scan's problem, not OUT's: FAIL, run goes on."""
    src, out = tmp_path / "in", tmp_path / "out"
    write_png(src / "sub" / "x.png", synthetic(1)[0])
    write_png(src / "y.png", synthetic(2)[0])
    out.mkdir()
    (out / "sub").write_text("a file in the way")
    assert main([str(src), "--out", str(out), "--model", str(tiny_model)]) == 1
    assert (out / "y.png").exists()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO, errno.EACCES])
def test_one_shot_stops_at_once_with_one_message_and_exit_2_and_the_next_run_does_the_rest(
    tmp_path, tiny_model, monkeypatch, capfd, code
):
    src, out = tmp_path / "in", tmp_path / "out"
    for i in range(12):
        write_png(src / f"s{i:02d}.png", synthetic(i, 80, 90)[0])
    disk = FullDisk(monkeypatch, code=code, after=3)
    disk.full.set()
    argv = [str(src), "--out", str(out), "--model", str(tiny_model), "--batch-size", "1", "--threads", "1"]
    assert main(argv) == 2
    err = capfd.readouterr().err
    assert err.count(f"error: cannot write to {out}") == 1, err
    assert "not done, which the next run does" in err
    assert "FAIL" not in err and "Traceback" not in err
    assert not list(out.glob("*.error.txt"))
    assert not [r for r in records(out) if r["event"] == "error"]
    assert len(list(out.glob("*.png"))) == 3
    disk.full.clear()
    assert main(argv) == 0
    assert len(list(out.glob("*.png"))) == 12


def test_error_records_that_older_versions_wrote_for_a_full_disk_are_retried_once(tmp_path, tiny_model):
    src, out = tmp_path / "in", tmp_path / "out"
    write_png(src / "x.png", synthetic(1)[0])
    st = (src / "x.png").stat()
    old = [  # as older versions wrote them: no kind (the ledger they left is moved in when it opens)
        {"rel": "x.png", "event": "error", "size": st.st_size, "mtime_ns": st.st_mtime_ns, "reason": why}
        for why in ("cannot write its outputs: No space left on device",)
    ] + [{"rel": "y.png", "event": "error", "size": 1, "mtime_ns": 1, "reason": "corrupt PNG data"}]
    (out / ".edge-seg").mkdir(parents=True)
    (out / ".edge-seg" / "ledger.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    ledger = Ledger(out)
    try:
        planner = Planner(src, ledger, "sig")
        assert planner.needs_work("x.png", retry_failed=False)
        assert planner.needs_work("x.png", retry_failed=False)  # asked again before it is taken: still
        planner.taking(["x.png"])  # taken for work: the one retry of this process is used
        assert not planner.needs_work("x.png", retry_failed=False)  # once per process, not every rescan
    finally:
        ledger.close()


def test_whether_a_failed_scan_is_retried_is_its_error_records_kind_not_its_words(tmp_path):
    from edge_runtime.errors import ErrorKind

    src, out = tmp_path / "in", tmp_path / "out"
    for name in ("w.png", "s.png", "old.png", "old-scan.png"):
        write_png(src / name, synthetic(1)[0])
    st = {p.name: p.stat() for p in src.iterdir()}
    old = [  # error records as older versions wrote them, with no kind, in the ledger an older version left
        {"rel": name, "event": "error", "size": st[name].st_size, "mtime_ns": st[name].st_mtime_ns, "reason": why}
        for name, why in (("old.png", "cannot record its outputs: EIO"), ("old-scan.png", "corrupt PNG data"))
    ]
    (out / ".edge-seg").mkdir(parents=True)
    (out / ".edge-seg" / "ledger.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    ledger = Ledger(out)
    try:
        ledger.error("w.png", st["w.png"].st_size, st["w.png"].st_mtime_ns, "quota exceeded", ErrorKind.WRITE)
        words = "cannot write its outputs: a writer refused it"  # a write failure's words, the scan's kind
        ledger.error("s.png", st["s.png"].st_size, st["s.png"].st_mtime_ns, words, ErrorKind.SCAN)
        assert ledger.get("w.png")["kind"] == "write" and "kind" not in ledger.get("old.png")  # type: ignore[index,operator]
        planner = Planner(src, ledger, "sig")
        assert planner.needs_work("w.png", retry_failed=False) and planner.needs_work("old.png", retry_failed=False)
        assert not planner.needs_work("s.png", retry_failed=False)
        assert not planner.needs_work("old-scan.png", retry_failed=False)
        planner.taking(["w.png", "old.png"])
        assert not planner.needs_work("w.png", retry_failed=False)  # once per process
    finally:
        ledger.close()


def test_the_status_file_is_rewritten_in_place_when_the_disk_is_too_full_for_a_new_one(
    tmp_path, tiny_model, monkeypatch
):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    d = InProcessDaemon(src, out, tiny_model)
    try:
        wait_for(lambda: status(out).get("state") == "running", "the first status")

        def full(*_a, **_k):
            raise OSError(errno.ENOSPC, "No space left on device")

        from edge_runtime import status_file

        monkeypatch.setattr(status_file, "write_atomic", full)  # where the status file is written
        d.daemon.blocked = watch_mod.Blocked("disk full", "No space left on device", out, time.time(), 60.0)
        d.daemon.blocked.next_try = time.monotonic() + 600
        d.daemon.write_status()
        assert status(out)["state"] == "blocked" and status(out)["problem"]["what"] == "disk full"
        assert (out / ".edge-seg" / "status.json").stat().st_size == watch_mod.STATUS_BYTES
    finally:
        d.daemon.blocked = None
        monkeypatch.undo()
        d.stop()


def test_a_log_file_that_cannot_be_opened_is_a_setup_error_of_one_line(tmp_path, tiny_model, capfd):
    src = tmp_path / "in"
    write_png(src / "x.png", synthetic(1)[0])
    assert main([str(src), "--out", str(tmp_path / "out"), "--model", str(tiny_model), "--log-file", str(src)]) == 2
    err = capfd.readouterr().err
    assert err.strip() == f"error: cannot write the log file {src}: Is a directory"
