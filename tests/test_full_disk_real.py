"""A real daemon on a real full file system: OUT is a 4 MB tmpfs in the daemon's own mount namespace.

``unshare -rm`` gives the process a private mount namespace (as an unprivileged user too, where user
namespaces are allowed), so nothing is mounted on the machine and the tmpfs goes away with the
process; the test looks into it through ``/proc/<pid>/root``. Skipped where that is not possible.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest

from edge_runtime.job.ledger import read_history
from tests.helpers import synthetic, wait_for

TIMEOUT = 60.0


def _namespaces_work(tmp: Path) -> bool:
    if shutil.which("unshare") is None or not Path("/proc/self/root").exists():
        return False
    probe = tmp / "mnt-probe"
    probe.mkdir()
    cmd = f"mount -t tmpfs -o size=1m tmpfs {shlex.quote(str(probe))} && touch {shlex.quote(str(probe))}/x"
    try:
        res = subprocess.run(["unshare", "-rm", "sh", "-c", cmd], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0 and not (probe / "x").exists()


def copy_ledger(out: Path, dest: Path) -> Path:
    """A copy of OUT's ledger (the database and its write-ahead log) under ``dest``, to read from here:
    SQLite cannot open the original through ``/proc/<pid>/root`` (its shared-memory file is the namespace's)."""
    (dest / ".edge-seg").mkdir(parents=True)
    for name in ("ledger.sqlite", "ledger.sqlite-wal"):
        if (out / ".edge-seg" / name).exists():
            shutil.copy(out / ".edge-seg" / name, dest / ".edge-seg" / name)
    return dest


def put_scan(path: Path, seed: int) -> None:
    path.write_bytes(cv2.imencode(".png", synthetic(seed, 220, 260)[0])[1].tobytes())


@pytest.mark.slow
def test_a_full_disk_pauses_the_daemon_and_it_resumes_when_space_returns(tmp_path, tiny_model):
    if not _namespaces_work(tmp_path):
        pytest.skip("cannot mount a tmpfs in a private mount namespace here (unshare -rm)")
    src, out, log = tmp_path / "in", tmp_path / "out", tmp_path / "daemon.log"
    src.mkdir()
    out.mkdir()
    daemon = [sys.executable, "-m", "edge_runtime", "--watch", str(src), "--out", str(out)]
    daemon += ["--model", str(tiny_model), "--settle", "0.5", "--rescan", "2"]
    script = f"mount -t tmpfs -o size=4m tmpfs {shlex.quote(str(out))} && exec {shlex.join(daemon)}"
    with open(log, "w") as fh:
        proc = subprocess.Popen(["unshare", "-rm", "sh", "-c", script], stdout=fh, stderr=fh)
    view = Path(f"/proc/{proc.pid}/root") / out.relative_to("/")  # OUT as the daemon sees it

    def text() -> str:
        return log.read_text()

    def status() -> dict:
        try:
            return json.loads((view / ".edge-seg" / "status.json").read_text())
        except (OSError, ValueError):
            return {}

    try:
        wait_for(lambda: "watching" in text() or proc.poll() is not None, "the daemon to start")
        assert proc.poll() is None, text()
        for i in range(2):
            put_scan(src / f"a{i}.png", i)
        wait_for(lambda: all((view / f"a{i}.png").exists() for i in range(2)), "the first masks")
        filler = view / "filler.bin"
        with open(filler, "wb", buffering=0) as fh:  # fill the file system to the last byte
            try:
                while True:
                    fh.write(b"\0" * 65536)
            except OSError:
                pass
            try:
                while True:
                    fh.write(b"\0" * 512)
            except OSError:
                pass
        for i in range(2, 5):
            put_scan(src / f"a{i}.png", i)
        wait_for(lambda: status().get("state") == "blocked", "the status file to say blocked")
        assert status()["problem"]["what"] == "disk full"
        assert status()["pid"] == proc.pid  # unshare without --fork execs: the daemon is this process
        time.sleep(3.0)  # a rescan and more arrivals while full: still one line, no traceback
        put_scan(src / "a5.png", 5)
        time.sleep(1.0)
        assert text().count("cannot write to") == 1, text()
        assert "Traceback" not in text() and "FAIL" not in text()
        assert not list(view.glob("*.error.txt"))
        filler.unlink()
        wait_for(lambda: all((view / f"a{i}.png").exists() for i in range(6)), "every mask once space is back")
        assert text().count("can be written again") == 1
        copies = iter(range(10**6))

        def history() -> list[dict]:
            return read_history(copy_ledger(view, tmp_path / f"copy{next(copies)}"))

        # a mask is on disk a moment before its done record (written, synced, then recorded)
        wait_for(lambda: len({r["rel"] for r in history() if r["event"] == "done"}) == 6, "every scan recorded")
        ledger = history()
        assert not [r for r in ledger if r["event"] == "error"]
        done = [r["rel"] for r in ledger if r["event"] == "done"]
        assert sorted(set(done)) == [f"a{i}.png" for i in range(6)]
        assert max(done.count(r) for r in set(done)) == 1, "a scan done twice"
        wait_for(lambda: status().get("state") == "running", "the status file to say running")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(TIMEOUT)
    assert code == 0, text()
    assert not os.path.exists(out / "a0.png")  # the tmpfs went away with the daemon's namespace


@pytest.mark.slow
def test_a_one_shot_run_on_a_full_disk_stops_with_one_message_and_exit_2_and_the_next_run_does_the_rest(
    tmp_path, tiny_model
):
    if not _namespaces_work(tmp_path):
        pytest.skip("cannot mount a tmpfs in a private mount namespace here (unshare -rm)")
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    for i in range(30):
        put_scan(src / f"s{i:02d}.png", i)
    run = [sys.executable, "-m", "edge_runtime", str(src), "--out", str(out), "--model", str(tiny_model), "--overlay"]
    q = shlex.quote(str(out))
    script = (
        f"mount -t tmpfs -o size=200k tmpfs {q} && {shlex.join(run)} 2>&1; echo rc=$?; "
        f"mount -o remount,size=20m {q} && {shlex.join(run)} 2>&1; echo rc=$?; "
        f"mkdir -p {shlex.quote(str(tmp_path / 'copy' / '.edge-seg'))} && "
        f"cp {q}/.edge-seg/ledger.sqlite {shlex.quote(str(tmp_path / 'copy' / '.edge-seg'))}/"
    )
    res = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300)
    first, second = res.stdout.split("rc=", 1)[0], res.stdout.split("rc=", 1)[1]
    assert res.stdout.count("rc=") == 2 and "rc=2" in res.stdout and "rc=0" in res.stdout, res.stdout
    assert f"error: cannot write to {out}: disk full" in first and "not done, which the next run does" in first
    assert "Traceback" not in res.stdout and "FAIL" not in res.stdout
    lines = read_history(tmp_path / "copy")
    assert not [r for r in lines if r.get("event") == "error"]
    done = {r["rel"] for r in lines if r.get("event") == "done"}
    assert done == {f"s{i:02d}.png" for i in range(30)}
    assert "done: 0 segmented" not in second
