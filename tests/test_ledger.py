"""The SQLite ledger: recovery after a crash, the move from a JSON-lines ledger, broken state folders,
several processes on one OUT, a full disk."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_runtime.cli import main
from edge_runtime.errors import SetupError
from edge_runtime.job.ledger import Ledger, ScanState, read_history, read_records
from edge_runtime.job.parts import Part
from tests.helpers import synthetic, write_png

REPO = Path(__file__).resolve().parent.parent


def begin(ledger: Ledger, rel: str, outputs: list[str]) -> None:
    ledger.begin(state(rel), outputs)


def state(rel: str) -> ScanState:
    return ScanState(rel, size=10, mtime_ns=1, sha256="h", sig="s", model="m", frames=1)


def done_events(out: Path, rel: str) -> int:
    return sum(r["rel"] == rel and r["event"] == "done" for r in read_history(out))


def test_a_scan_whose_outputs_were_written_before_a_crash_is_recorded_done(tmp_path):
    out = tmp_path / "out"
    ledger = Ledger(out)
    begin(ledger, "a.png", ["a.png"])
    begin(ledger, "b.png", ["b.png"])
    time.sleep(0.01)
    (out / "a.png").write_bytes(b"mask")  # a's output made it before the crash, b's did not
    ledger.close()  # then the process dies: no "done" records

    again = Ledger(out)
    again.close()
    assert again.recovered == 1
    last = read_records(out)
    assert last["a.png"]["event"] == "done" and last["a.png"]["recovered"] is True
    assert last["b.png"]["event"] == "begin"  # to be processed again

    third = Ledger(out)  # nothing left to recover: a is done in the database itself
    assert third.recovered == 0
    assert third.up_to_date("a.png", 10, 1, "s") and not third.up_to_date("b.png", 10, 1, "s")
    third.error("b.png", 10, 1, "unreadable")
    third.error("c.png", 10, 1, "unreadable")
    assert third.counts() == {"done": 1, "failed": 2}
    third.done(state("c.png"), ["c.png"])
    assert third.counts() == {"done": 2, "failed": 1}
    third.close()
    assert done_events(out, "a.png") == 1


def test_the_ledger_needs_no_image_decoding():
    """It depends on the durable-files module, not on OpenCV (a status tool or a migration can use it alone)."""
    code = "import sys, edge_runtime.job.ledger; print(sorted(m for m in ('cv2', 'numpy') if m in sys.modules))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert res.stdout.strip() == "[]"


# -- the move from ledger.jsonl -------------------------------------------------------------------
def jsonl_record(rel: str, event: str = "done", **extra: object) -> dict:
    rec = {"rel": rel, "event": event, "size": 10, "mtime_ns": 1, "sha256": "h", "sig": "s", "model": "m"}
    return {**rec, "frames": 1, "outputs": [rel], "time_ns": 5, "time": "2026-01-01T00:00:00Z", **extra}


def write_jsonl(out: Path, lines: list[str]) -> Path:
    path = out / ".edge-seg" / "ledger.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(lines))
    return path


def test_a_jsonl_ledger_is_moved_in_once_skipping_lines_it_cannot_use(tmp_path, caplog):
    out = tmp_path / "out"
    lines = [json.dumps(jsonl_record(f"s{i}.png")) + "\n" for i in range(5)]
    lines.insert(2, json.dumps(jsonl_record("s1.png", "error", reason="bad")) + "\n")  # the newest wins
    lines.append('{"rel": "x.png", "event": "done"}\n')  # parses, but lacks the fields
    lines.append('["not", "a", "record"]\n')
    lines.append('{"rel": "torn.png", "event": "do')  # a write cut short by a crash, no newline
    path = write_jsonl(out, lines)
    for i in range(5):
        (out / f"s{i}.png").write_bytes(b"mask")

    ledger = Ledger(out)
    assert ledger.migrated == 5
    assert ledger.up_to_date("s0.png", 10, 1, "s") and ledger.known_failure("s1.png", 10, 1)
    assert ledger.get("x.png") is None and ledger.get("torn.png") is None
    assert ledger.counts() == {"done": 4, "failed": 1}  # counted once at the end of the move
    ledger.error("s0.png", 10, 1, "unreadable")  # and kept from then on
    assert ledger.counts() == {"done": 3, "failed": 2}
    ledger.close()
    assert "skipped 3 unusable line(s) (first: line 7: no 'size')" in caplog.text
    assert not path.exists() and path.with_name("ledger.jsonl.migrated").read_text() == "".join(lines)
    caplog.clear()
    Ledger(out).close()  # once: nothing is read again, nothing warned again
    assert "unusable" not in caplog.text and len(read_records(out)) == 5


KILL_AT = """
import os, signal, sys
from pathlib import Path
from edge_runtime.job import ledger_migrate
from edge_runtime.job.ledger import Ledger
at = sys.argv[2]
if at == "store":
    store = Ledger._store
    def dying_store(self, records):
        store(self, records)  # in the database's transaction, not committed
        os.kill(os.getpid(), signal.SIGKILL)
    Ledger._store = dying_store
else:
    ledger_migrate._set_aside = lambda path: os.kill(os.getpid(), signal.SIGKILL)
Ledger(Path(sys.argv[1]))
"""


@pytest.mark.parametrize("at", ["store", "rename"])
def test_a_kill_during_the_move_loses_nothing(tmp_path, at):
    """kill -9 (for real) with the records stored but not committed, or after the commit, before the rename."""
    out = tmp_path / "out"
    lines = [json.dumps(jsonl_record(f"s{i:04d}.png")) + "\n" for i in range(1000)]
    path = write_jsonl(out, lines)
    res = subprocess.run([sys.executable, "-c", KILL_AT, str(out), at], capture_output=True, text=True, timeout=120)
    assert res.returncode == -signal.SIGKILL, res.stderr
    if at == "store":
        assert path.read_text() == "".join(lines)  # the old ledger is untouched
        assert read_records(out) == {}  # and the half-done transaction left nothing
    else:
        assert path.exists() and len(read_records(out)) == 1000
    ledger = Ledger(out)
    assert ledger.counts() == {"done": 1000, "failed": 0}
    ledger.close()
    assert ledger.migrated == (1000 if at == "store" else 0)  # "rename": only renamed, not read twice
    assert len(read_records(out)) == 1000 and not path.exists()
    assert len(read_history(out)) == 1000


# -- broken state: one line, exit code 2 -----------------------------------------------------------
@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("state-is-a-file", ".edge-seg is a file"),
        ("ledger-is-a-folder", "ledger.sqlite is a folder, not edge-seg's ledger"),
        ("lock-is-a-folder", "lock is a folder, not edge-seg's lock file"),
        ("ledger-is-garbage", "cannot be opened (file is not a database); move it away"),
        ("sessions-is-a-file", "sessions is a file, not a folder"),
    ],
)
def test_a_broken_state_folder_is_one_line_and_exit_code_2(tmp_path, tiny_model, caplog, breakage, message):
    src, out = tmp_path / "in", tmp_path / "out"
    write_png(src / "a.png", synthetic(1, 40, 50)[0])
    state_dir = out / ".edge-seg"
    state_dir.mkdir(parents=True)
    if breakage == "state-is-a-file":
        state_dir.rmdir()
        state_dir.write_text("not a folder")
    elif breakage == "ledger-is-a-folder":
        (state_dir / "ledger.sqlite").mkdir()
    elif breakage == "lock-is-a-folder":
        (state_dir / "lock").mkdir()
    elif breakage == "ledger-is-garbage":
        (state_dir / "ledger.sqlite").write_bytes(b"this is not SQLite" * 100)
    else:
        (state_dir / "sessions").write_text("")
    assert main([str(src), "--out", str(out), "--model", str(tiny_model)]) == 2
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and message in errors[0].getMessage() and not errors[0].exc_info
    assert "\n" not in errors[0].getMessage()


# -- several processes ----------------------------------------------------------------------------
def test_two_processes_share_a_folder_only_with_different_parts_of_one_split(tmp_path):
    out = tmp_path / "out"
    first = Ledger(out, Part(0, 2))
    with pytest.raises(SetupError, match=r"\(pid \d+, part 0/2\) is already writing .* only with --num-parts N"):
        Ledger(out, Part(0, 2))
    with pytest.raises(SetupError, match="already writing"):
        Ledger(out, Part(1, 3))  # another split overlaps this one
    with pytest.raises(SetupError, match="already writing"):
        Ledger(out)  # all of them
    second = Ledger(out, Part(1, 2))
    second.close()
    first.close()
    Ledger(out).close()  # once they are gone, anyone may


def test_an_older_version_holding_the_folder_is_named_and_a_settling_one_waited_for(tmp_path, monkeypatch):
    import fcntl
    import threading

    from edge_runtime.job import locks

    monkeypatch.setattr(locks, "OLD_VERSION_WAIT_S", 0.3)
    out = tmp_path / "out"
    (out / ".edge-seg").mkdir(parents=True)
    with open(out / ".edge-seg" / "lock", "a+") as held:  # as 0.3.0 holds it: exclusively, its pid inside
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        held.write("4242\n")
        held.flush()
        with pytest.raises(SetupError, match=r"another edge-seg \(pid 4242\) is already writing .* up to 0.3.0"):
            Ledger(out)
        held.truncate(0)
        held.write("4243 settling\n")  # a process alone, settling the folder: waited for, however long
        held.flush()
        threading.Timer(1.0, lambda: fcntl.flock(held.fileno(), fcntl.LOCK_UN)).start()
        Ledger(out).close()


def test_a_live_sessions_scans_are_left_alone_and_a_dead_ones_settled_while_others_run(tmp_path):
    out = tmp_path / "out"
    other = Ledger(out, Part(1, 2))  # keeps running throughout: nobody is ever alone
    code = (
        "import os, signal, sys, time; from pathlib import Path\n"
        "from edge_runtime.job.ledger import Ledger, ScanState\nfrom edge_runtime.job.parts import Part\n"
        "led = Ledger(Path(sys.argv[1]), Part(0, 2))\n"
        "for rel in ('a.png', 'b.png'):\n"
        "    led.begin(ScanState(rel, 10, 1, 'h', 's', 'm', 1), [rel])\n"
        "time.sleep(0.02); Path(sys.argv[1], 'a.png').write_bytes(b'mask')\n"  # a's output made it, b's not
        "print('written', flush=True); time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "written"
        begin(other, "c.png", ["c.png"])  # the other session's own scan, at work
        (out / "c.png").write_bytes(b"mask")
        with pytest.raises(SetupError):  # part 0 is still running
            Ledger(out, Part(0, 2))
        proc.kill()
        proc.wait(timeout=30)
        rerun = Ledger(out, Part(0, 2))  # its rerun, while part 1 runs on
        assert rerun.recovered == 1
        assert rerun.get("a.png")["event"] == "done" and rerun.get("b.png")["event"] == "begin"
        assert rerun.get("c.png")["event"] == "begin"  # alive: not taken for dead
        rerun.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        other.close()


# -- a full disk ----------------------------------------------------------------------------------
def test_a_full_disk_at_close_is_one_line_and_the_summary_still_comes(tmp_path, tiny_model, caplog, monkeypatch):
    import edge_runtime.job.ledger as ledger_mod

    src, out = tmp_path / "in", tmp_path / "out"
    write_png(src / "a.png", synthetic(1, 40, 50)[0])

    def full(path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ledger_mod, "_fsync", full)  # the log's fsync finds the disk full
    assert main([str(src), "--out", str(out), "--model", str(tiny_model)]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert (
        len(errors) == 1 and errors[0].startswith("cannot save the ledger's last records") and "No space" in errors[0]
    )
    assert "done: 1 segmented" in caplog.text
    monkeypatch.undo()
    assert read_records(out)["a.png"]["event"] == "done"  # committed before the failed flush


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    return res.returncode == 0


def test_a_really_full_disk_under_the_ledger(tmp_path, caplog):
    """A real file system that fills up (a tmpfs; needs root): writes fail with ENOSPC, close does not raise."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "2m"):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        ledger = Ledger(disk / "out")
        begin(ledger, "a.png", ["a.png"])
        fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
        for block in (65536, 512):  # fill the disk to the last block
            try:
                while True:
                    os.write(fd, b"\0" * block)
            except OSError:
                pass
        os.close(fd)
        with pytest.raises(OSError) as info:
            for i in range(2000):  # the write-ahead log grows until it cannot
                begin(ledger, f"s{i}.png" + "x" * 200, ["o" * 300])
        assert info.value.errno == 28  # ENOSPC: what the processor and the daemon handle
        with contextlib.suppress(OSError):  # where the last flush fails, for the caller's one line; nothing else
            ledger.close()
        assert not ledger.session.path.exists()  # and it let go of the folder
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
