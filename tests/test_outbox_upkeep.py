"""The outbox over months: results a PACS keeps refusing are set aside, the table of sent results stays
small, a kill loses nothing, and an outbox folder of an older version is taken over.

A pynetdicom PACS in this process is the peer. Waits are liveness guards only; nothing passes or fails on speed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("pynetdicom")

from pydicom import dcmread

from edge_runtime.net import outbox_queue
from edge_runtime.net.outbox import Outbox
from edge_runtime.net.outbox_queue import ASIDE, DB_NAME, OutboxQueue, Sent
from edge_runtime.net.peer import Peer
from edge_runtime.net.senders import Delivery, Reply
from tests.dicomnet import Pacs
from tests.helpers import nodule_scan, us_ids, wait_for, write_dicom

DATA_SET_DOES_NOT_MATCH = 0xA900
OUT_OF_RESOURCES = 0xA700


def results(out_dir: Path, n: int, first: int = 0) -> list[str]:
    """``n`` real DICOM files under OUT/dicom/, as paths relative to OUT."""
    paths = []
    for i in range(first, first + n):
        p = write_dicom(out_dir / "dicom" / f"s{i}.sr.dcm", nodule_scan(seed=i)[0], **us_ids())
        paths.append(p.relative_to(out_dir).as_posix())
    return paths


def try_now(box: Outbox) -> int:
    """One try of everything waiting, whatever its back-off (the tests do not wait for it)."""
    return box.send_due(now=time.time() + 1e6)


def sent_rows(out: Path) -> list[tuple[str, str, str]]:
    """``(path, sop_instance_uid, sent_to)`` of each result the first target's outbox records as sent."""
    with contextlib.closing(sqlite3.connect(out / ".edge-seg" / "outbox" / DB_NAME)) as db:
        return db.execute("SELECT path, sop_instance_uid, sent_to FROM entries WHERE state = 'sent'").fetchall()


@contextlib.contextmanager
def answering(tmp_path: Path, status: int) -> Iterator[tuple[Pacs, Outbox, str]]:
    """A PACS that answers every C-STORE with ``status``, and an outbox for it holding one result (queued)."""
    out = tmp_path / "out"
    pacs = Pacs(status=status)
    try:
        box = Outbox(out, out / ".edge-seg", Peer("PACS", "127.0.0.1", pacs.port), retry=0.01)
        [path] = results(out, 1)
        box.add([path])
        yield pacs, box, path
    finally:
        pacs.close()


def test_a_result_the_pacs_keeps_refusing_is_set_aside_and_a_restart_tries_it_again(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(outbox_queue, "MAX_REFUSALS", 3)
    out = tmp_path / "out"
    with answering(tmp_path, DATA_SET_DOES_NOT_MATCH) as (pacs, box, path):
        with caplog.at_level(logging.WARNING, logger="edge_runtime.net.outbox"):
            for _ in range(2):
                assert try_now(box) == 0
            assert box.stats()["waiting"] == 1 and box.stats()["refused"] == 0
            assert try_now(box) == 0  # the third refusal
        assert box.stats()["waiting"] == 0 and box.stats()["refused"] == 1
        assert box.due(now=time.time() + 1e6) == []  # no longer offered
        [aside] = box.queue.entries(ASIDE)
        assert aside.path == path and aside.refusals == 3 and "0xA900" in (aside.last_error or "")
        [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert path in error.getMessage() and "refused 3 times" in error.getMessage()
        assert "C-STORE failed with status 0xA900" in error.getMessage() and "restart" in error.getMessage()
        assert box.reconcile() == 0  # set aside, not found again as "never sent"

        pacs.status = 0x0000  # the PACS is fixed, and edge-seg restarted
        again = Outbox(out, out / ".edge-seg", box.sender, retry=0.01)
        assert again.stats()["waiting"] == 1 and again.stats()["refused"] == 0
        assert again.queue.entries(ASIDE) == []
        assert again.send_due() == 1 and pacs.uids() == [str(dcmread(out / path).SOPInstanceUID)]


def test_out_of_resources_is_waited_for_not_set_aside(tmp_path, monkeypatch):
    monkeypatch.setattr(outbox_queue, "MAX_REFUSALS", 2)
    with answering(tmp_path, OUT_OF_RESOURCES) as (_, box, _):
        for _ in range(4):
            assert try_now(box) == 0
        assert box.stats()["waiting"] == 1 and box.stats()["refused"] == 0
        assert box.stats()["failed_tries"] == 4


def test_a_new_version_of_a_refused_result_is_offered_again(tmp_path, monkeypatch):
    monkeypatch.setattr(outbox_queue, "MAX_REFUSALS", 1)
    with answering(tmp_path, DATA_SET_DOES_NOT_MATCH) as (pacs, box, path):
        assert try_now(box) == 0 and box.stats()["refused"] == 1
        pacs.status = 0x0000
        box.add([path])  # its scan was redone: the daemon queues the new SEG/SR
        assert box.stats()["refused"] == 0 and box.stats()["waiting"] == 1
        assert box.queue.entries(ASIDE) == []
        assert box.send_due() == 1


def sent_line(path: str, stat: tuple[int, int]) -> str:
    return json.dumps({"path": path, "sop_instance_uid": "1.2.3", "size": stat[0], "mtime_ns": stat[1]})


def entry_file(folder: Path, path: str, **fields: object) -> None:
    """A waiting entry as edge-seg before 0.12 wrote it (``<key>.json``)."""
    name = hashlib.sha1(path.encode()).hexdigest()[:20]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps({"path": path, "queued": 1000.0, **fields}) + "\n")


def test_an_outbox_folder_of_an_older_version_is_taken_over_and_nothing_is_sent_twice(tmp_path, caplog):
    out = tmp_path / "out"
    paths = results(out, 7)
    stats = {p: (os.stat(out / p).st_size, os.stat(out / p).st_mtime_ns) for p in paths}
    folder = out / ".edge-seg" / "outbox"
    # s0, s1 sent (s1 twice); s2 sent, then its entry left behind by a kill between the two steps
    lines = [sent_line(p, stats[p]) for p in (paths[0], paths[1], paths[1], paths[2])]
    lines.insert(0, sent_line(paths[3], (5, 5)))  # s3 sent, rewritten since, and waiting again
    folder.mkdir(parents=True)
    (folder / "sent.jsonl").write_text("\n".join(lines) + "\n{torn")
    entry_file(folder, paths[2])
    entry_file(folder, paths[3], attempts=4, next_try=time.time() + 3600, last_error="PACS@x: down")
    entry_file(folder, paths[4])
    entry_file(folder / "refused", paths[5], attempts=10, refusals=10, last_error="PACS@x: no")
    (folder / "0123456789abcdef0123.json").write_text("{torn")  # an entry cut short
    script = Scripted(*[Reply(Delivery.SENT)] * 7)
    with caplog.at_level(logging.INFO, logger="edge_runtime.net"):
        box = Outbox(out, out / ".edge-seg", script)
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(DB_NAME)) == []  # the old files gone
    assert "unreadable entry 0123456789abcdef0123.json" in caplog.text
    waiting = {e.path: e for e in box.queue.entries()}
    assert sorted(waiting) == [paths[3], paths[4], paths[5]]  # s5: set aside before, so tried at this start
    assert (waiting[paths[3]].attempts, waiting[paths[3]].last_error) == (4, "PACS@x: down")
    assert waiting[paths[5]].refusals == 0
    assert box.stats()["sent_total"] == 4 and box.stats()["refused"] == 0
    assert box.reconcile() == 1  # s6: in OUT, never queued
    assert box.send_due(now=time.time() + 1e6) == 4 and script.offered == [4]
    assert sorted(p for p, _, _ in sent_rows(out)) == paths
    again = Outbox(out, out / ".edge-seg", script)  # a second start: nothing to migrate, nothing to send
    assert again.reconcile() == 0 and again.send_due(now=time.time() + 1e6) == 0 and script.offered == [4]


def test_the_sent_rows_keep_only_the_results_still_in_out_as_they_were_sent(tmp_path, monkeypatch):
    monkeypatch.setattr(outbox_queue, "COMPACT_ROWS", 5)
    out = tmp_path / "out"
    paths = results(out, 7)
    box = Outbox(out, out / ".edge-seg", Scripted(*[Reply(Delivery.SENT)] * 7))
    box.add(paths)
    assert box.send_due() == 7 and box.stats()["sent_total"] == 7
    (out / paths[0]).unlink()  # removed from OUT
    write_dicom(out / paths[1], nodule_scan(seed=99)[0], **us_ids())  # rewritten (its scan redone) ...
    box.add([paths[1]])  # ... and queued again
    write_dicom(out / paths[2], nodule_scan(seed=98)[0], **us_ids())  # rewritten, not yet queued
    box.start()  # 7 sent rows >= 5: the sender's thread compacts
    try:
        wait_for(lambda: box.stats()["sent_total"] < 7, "the compaction")
    finally:
        box.stop()
    assert sorted(p for p, _, _ in sent_rows(out)) == [paths[1], *paths[3:]]
    assert box.stats()["sent_total"] == 5 and box.stats()["waiting"] == 0  # s1's new version was sent
    assert box.reconcile() == 1  # s2, rewritten since it was sent, is the one to send
    again = Outbox(out, out / ".edge-seg", box.sender)
    assert again.stats()["waiting"] == 1 and again.reconcile() == 0  # s2 waits; nothing else was unsent


KILLED = """
import os, signal, sys
from pathlib import Path
from edge_runtime.net.outbox_queue import OutboxQueue, Sent
out = Path(sys.argv[1])
queue = OutboxQueue(out / ".edge-seg" / "outbox", out, "PACS@test")
queue.add(sys.argv[2:])
stat = queue.stat(sys.argv[2])
queue.record_sent(Sent(sys.argv[2], "1.2.3", *stat), "PACS@test")
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_kill_9_after_a_send_is_recorded_loses_nothing_and_repeats_nothing(tmp_path):
    out = tmp_path / "out"
    paths = results(out, 3)
    proc = subprocess.run([sys.executable, "-c", KILLED, str(out), *paths], check=False)
    assert proc.returncode == -signal.SIGKILL
    queue = OutboxQueue(out / ".edge-seg" / "outbox", out, "PACS@test")
    assert sorted(e.path for e in queue.due()) == paths[1:]  # queued before the kill: still waiting
    assert queue.already_sent(paths[0]) and queue.unknown(paths) == []
    assert queue.sent() == [Sent(paths[0], "1.2.3", *queue.stat(paths[0]))]  # type: ignore[misc]


class Scripted:
    """A sender (:class:`edge_runtime.net.senders.Sender`) answering from a script: one reply a dataset."""

    target = "SCRIPTED@test"

    def __init__(self, *replies: object) -> None:
        self.replies = list(replies)
        self.offered: list[int] = []

    def offer(self, datasets, stop):  # type: ignore[no-untyped-def]
        self.offered.append(len(datasets))
        yield from self.replies[: len(datasets)]


def test_any_sender_that_answers_sent_refused_or_down_drives_the_queue(tmp_path):
    """The outbox is the queue and a sender only one try: what a DICOMweb sender plugs into."""
    out = tmp_path / "out"
    script = Scripted(
        Reply(Delivery.SENT), Reply(Delivery.REFUSED, "SCRIPTED@test: no"), Reply(Delivery.DOWN, "SCRIPTED@test: busy")
    )  # and nothing for the fourth: the connection was lost before it was tried
    box = Outbox(out, out / ".edge-seg", script, retry=60)
    paths = results(out, 4)
    box.add(paths)
    assert box.send_due() == 1 and script.offered == [4]
    assert sent_rows(out) == [(paths[0], str(dcmread(out / paths[0]).SOPInstanceUID), "SCRIPTED@test")]
    waiting = {e.path: e for e in box.due(now=time.time() + 1e6)}
    assert sorted(waiting) == paths[1:]
    assert (waiting[paths[1]].attempts, waiting[paths[1]].refusals) == (1, 1)  # refused: counts toward set-aside
    assert (waiting[paths[2]].attempts, waiting[paths[2]].refusals) == (1, 0)  # down: waited for
    assert waiting[paths[3]].attempts == 0 and waiting[paths[3]].next_try <= time.time()  # not tried: due now
    assert box.stats()["to"] == "SCRIPTED@test" and box.stats()["last_error"]["reason"] == "SCRIPTED@test: no"


def test_an_outbox_database_that_is_not_one_is_one_clear_message(tmp_path):
    from edge_runtime.errors import SetupError

    folder = tmp_path / "out" / ".edge-seg" / "outbox"
    folder.mkdir(parents=True)
    (folder / DB_NAME).write_bytes(b"not a database, " * 256)
    with pytest.raises(SetupError, match=r"cannot open the outbox .*outbox\.sqlite .*move it away"):
        Outbox(tmp_path / "out", tmp_path / "out" / ".edge-seg", Scripted())
