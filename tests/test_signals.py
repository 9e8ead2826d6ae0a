"""Real processes, real signals: SIGHUP and SIGTERM in watch and one-shot mode, and a status file that tells a
monitor the truth after a crash (issue 15)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import cv2
import pytest

from edge_runtime import watch as watch_mod
from edge_runtime.job.assemble import open_job
from edge_runtime.job.ledger import read_history
from edge_runtime.job.settings import JobRequest, RunOptions
from edge_runtime.job.sources import WatchedFolder
from tests.helpers import status, synthetic, wait_for

TIMEOUT = 60.0


def put_scans(src: Path, n: int, size: tuple[int, int] = (220, 260)) -> list[str]:
    src.mkdir(parents=True, exist_ok=True)
    names = [f"s{i:03d}.png" for i in range(n)]
    for i, name in enumerate(names):
        (src / name).write_bytes(cv2.imencode(".png", synthetic(i, *size)[0])[1].tobytes())
    return names


def ledger(out: Path) -> list[dict]:
    return read_history(out)


class Proc:
    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        self.fh = open(log, "w")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "edge_runtime", *args], stdout=self.fh, stderr=self.fh)

    def text(self) -> str:
        """The log without the time a daemon's console lines start with (off journald)."""
        return re.sub(r"(?m)^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", "", self.log.read_text())

    def ok(self) -> int:
        return sum(ln.startswith("ok ") for ln in self.text().splitlines())

    def wait(self) -> int:
        try:
            return self.proc.wait(TIMEOUT)
        finally:
            self.fh.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.fh.close()


@pytest.fixture
def procs():
    started: list[Proc] = []
    yield started
    for p in started:
        p.kill()


def daemon_args(src: Path, out: Path, model: Path) -> list[str]:
    return ["--watch", str(src), "--out", str(out), "--model", str(model), "--settle", "0.5", "--rescan", "3"]


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM])
def test_the_daemon_stops_cleanly_on_sighup_and_sigterm_and_says_so(tmp_path, tiny_model, procs, sig):
    src, out = tmp_path / "in", tmp_path / "out"
    put_scans(src, 3)
    d = Proc(daemon_args(src, out, tiny_model), tmp_path / "d.log")
    procs.append(d)
    wait_for(lambda: d.ok() == 3, "the backlog")
    d.proc.send_signal(sig)
    assert d.wait() == 0
    assert f"{sig.name} received: finishing the scans in hand, then stopping" in d.text()
    st = status(out)
    assert st["state"] == "stopped" and st["exit"]["reason"] == sig.name and st["pid"] == d.proc.pid


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_one_shot_run_stops_after_the_batches_in_hand_and_the_next_run_does_the_rest(
    tmp_path, tiny_model, procs, sig
):
    src, out = tmp_path / "in", tmp_path / "out"
    names = put_scans(src, 80, (300, 380))
    args = [str(src), "--out", str(out), "--model", str(tiny_model), "--batch-size", "1", "--threads", "1"]
    args.append("-v")  # a line per scan, to count (a run of more than 20 scans shows progress lines instead)
    p = Proc(args, tmp_path / "run.log")
    procs.append(p)
    wait_for(lambda: p.ok() >= 3 or p.proc.poll() is not None, "a few scans")
    p.proc.send_signal(sig)
    code = p.wait()
    text = p.text()
    assert p.ok() < len(names), "the run finished before the signal; the test proves nothing"
    assert code == 128 + sig, text
    assert f"{sig.name} received" in text and f"stopped by {sig.name}:" in text and "Traceback" not in text
    assert "done:" in text  # the summary
    again = Proc(args, tmp_path / "again.log")
    procs.append(again)
    assert again.wait() == 0
    # nothing lost, nothing repeated: every scan done exactly once over the two runs
    done = Counter(r["rel"] for r in ledger(out) if r["event"] == "done")
    assert sorted(done) == names and max(done.values()) == 1
    assert p.ok() + again.ok() == len(names)


def test_after_kill_9_a_monitor_tells_from_the_status_file_that_the_daemon_died(tmp_path, tiny_model, procs):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    d = Proc(daemon_args(src, out, tiny_model), tmp_path / "d.log")
    procs.append(d)
    wait_for(lambda: status(out).get("state") == "running", "the status file")
    first = status(out)
    assert first["pid"] == d.proc.pid and first["host"] and first["heartbeat_every_s"] > 0
    wait_for(lambda: status(out).get("heartbeat", 0) > first["heartbeat"], "a second heartbeat")
    d.proc.kill()
    d.proc.wait()
    last = status(out)
    assert last["state"] == "running"  # nobody could write otherwise ...
    with pytest.raises(ProcessLookupError):  # ... but its pid is gone
        os.kill(last["pid"], 0)
    assert last["heartbeat"] <= time.time()  # a time it can compare: from now on it only grows stale


def test_a_daemon_that_dies_of_an_exception_says_crashed(tmp_path, tiny_model, monkeypatch):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    job = open_job(src, out, JobRequest(tiny_model, None, ()), RunOptions(workers=1, batch_size=1), daemon=True)
    folder = WatchedFolder(job.in_dir, lambda r: True, 0.3)
    daemon = watch_mod.Daemon(job, folder, rescan=1.0)

    def boom(limit: int):
        raise KeyboardInterrupt  # what the loop does not catch (a second Ctrl-C)

    monkeypatch.setattr(folder, "take_ready", boom)
    caught: list[BaseException] = []

    def run() -> None:
        try:
            daemon.run()
        except BaseException as exc:
            caught.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join(TIMEOUT)
    job.close()
    assert caught and isinstance(caught[0], KeyboardInterrupt)
    st = status(out)
    assert st["state"] == "crashed" and st["exit"]["error"].startswith("KeyboardInterrupt")
