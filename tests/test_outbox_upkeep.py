"""The outbox over months: results a PACS keeps refusing are set aside, and ``sent.jsonl`` stays small.

A pynetdicom PACS in this process is the peer. Waits are liveness guards only; nothing passes or fails on speed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("pynetdicom")

from pydicom import dcmread

from edge_runtime.net import outbox as outbox_mod
from edge_runtime.net.outbox import REFUSED_DIR, SENT_LOG, Outbox, _key
from edge_runtime.net.peer import Peer
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
    for e in box.due(now=time.time() + 1e6):
        e.next_try = 0
    return box.send_due()


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
    monkeypatch.setattr(outbox_mod, "MAX_REFUSALS", 3)
    out = tmp_path / "out"
    with answering(tmp_path, DATA_SET_DOES_NOT_MATCH) as (pacs, box, path):
        with caplog.at_level(logging.WARNING, logger="edge_runtime.net.outbox"):
            for _ in range(2):
                assert try_now(box) == 0
            assert box.stats()["waiting"] == 1 and box.stats()["refused"] == 0
            assert try_now(box) == 0  # the third refusal
        assert box.stats()["waiting"] == 0 and box.stats()["refused"] == 1
        assert box.due(now=time.time() + 1e6) == []  # no longer offered
        folder = out / ".edge-seg" / "outbox"
        assert not (folder / f"{_key(path)}.json").exists()
        aside = json.loads((folder / REFUSED_DIR / f"{_key(path)}.json").read_text())
        assert aside["path"] == path and aside["refusals"] == 3 and "0xA900" in aside["last_error"]
        [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert path in error.getMessage() and "refused 3 times" in error.getMessage()
        assert "C-STORE failed with status 0xA900" in error.getMessage() and "restart" in error.getMessage()
        assert box.reconcile() == 0  # set aside, not found again as "never sent"

        pacs.status = 0x0000  # the PACS is fixed, and edge-seg restarted
        again = Outbox(out, out / ".edge-seg", box.sender, retry=0.01)
        assert again.stats()["waiting"] == 1 and again.stats()["refused"] == 0
        assert not list((folder / REFUSED_DIR).glob("*.json"))
        assert again.send_due() == 1 and pacs.uids() == [str(dcmread(out / path).SOPInstanceUID)]


def test_out_of_resources_is_waited_for_not_set_aside(tmp_path, monkeypatch):
    monkeypatch.setattr(outbox_mod, "MAX_REFUSALS", 2)
    with answering(tmp_path, OUT_OF_RESOURCES) as (_, box, _):
        for _ in range(4):
            assert try_now(box) == 0
        assert box.stats()["waiting"] == 1 and box.stats()["refused"] == 0
        assert box.stats()["failed_tries"] == 4


def test_a_new_version_of_a_refused_result_is_offered_again(tmp_path, monkeypatch):
    monkeypatch.setattr(outbox_mod, "MAX_REFUSALS", 1)
    with answering(tmp_path, DATA_SET_DOES_NOT_MATCH) as (pacs, box, path):
        assert try_now(box) == 0 and box.stats()["refused"] == 1
        pacs.status = 0x0000
        box.add([path])  # its scan was redone: the daemon queues the new SEG/SR
        assert box.stats()["refused"] == 0 and box.stats()["waiting"] == 1
        assert not list((tmp_path / "out" / ".edge-seg" / "outbox" / REFUSED_DIR).glob("*.json"))
        assert box.send_due() == 1


def sent_line(path: str, stat: tuple[int, int]) -> str:
    return json.dumps({"path": path, "sop_instance_uid": "1.2.3", "size": stat[0], "mtime_ns": stat[1]})


def test_sent_jsonl_keeps_only_the_results_still_in_out_as_they_were_sent(tmp_path, monkeypatch):
    monkeypatch.setattr(outbox_mod, "COMPACT_LINES", 8)
    out = tmp_path / "out"
    paths = results(out, 6)
    stats = {p: (os.stat(out / p).st_size, os.stat(out / p).st_mtime_ns) for p in paths}
    lines = [sent_line(p, stats[p]) for p in paths]
    lines += [sent_line("dicom/gone.sr.dcm", (10, 10))]  # a result removed from OUT since
    lines.insert(0, sent_line(paths[0], (1, 1)))  # an older version of s0, sent before the one there now
    lines += [sent_line(paths[1], stats[paths[1]])]  # s1 sent twice (a kill before its entry went)
    lines.insert(2, sent_line(paths[2], (5, 5)))  # s2 rewritten since it was sent
    lines.remove(sent_line(paths[2], stats[paths[2]]))
    folder = out / ".edge-seg" / "outbox"
    folder.mkdir(parents=True)
    (folder / SENT_LOG).write_text("\n".join(lines) + "\n{torn")
    peer = Peer("PACS", "127.0.0.1", 11112)  # nothing is waiting: the sender never connects
    box = Outbox(out, out / ".edge-seg", peer)
    assert box.stats()["sent_total"] == 7  # s0..s5 (s2 as last recorded) and gone
    box.start()  # 10 lines >= 8: the sender's thread compacts
    try:
        wait_for(lambda: len((folder / SENT_LOG).read_text().splitlines()) < 10, "the compaction")
    finally:
        box.stop()
    kept = [json.loads(line) for line in (folder / SENT_LOG).read_text().splitlines()]
    assert sorted(r["path"] for r in kept) == sorted(p for p in paths if p != paths[2])
    assert all((r["size"], r["mtime_ns"]) == stats[r["path"]] for r in kept)
    assert box.stats()["sent_total"] == 5
    assert box.reconcile() == 1  # s2, rewritten since it was sent, is the one to send
    again = Outbox(out, out / ".edge-seg", peer)
    assert again.stats()["waiting"] == 1 and again.reconcile() == 0  # s2 waits; nothing else was unsent


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
    from edge_runtime.net.senders import Delivery, Reply

    out = tmp_path / "out"
    script = Scripted(
        Reply(Delivery.SENT), Reply(Delivery.REFUSED, "SCRIPTED@test: no"), Reply(Delivery.DOWN, "SCRIPTED@test: busy")
    )  # and nothing for the fourth: the connection was lost before it was tried
    box = Outbox(out, out / ".edge-seg", script, retry=60)
    paths = results(out, 4)
    box.add(paths)
    assert box.send_due() == 1 and script.offered == [4]
    sent = [json.loads(line) for line in (out / ".edge-seg" / "outbox" / SENT_LOG).read_text().splitlines()]
    assert [(r["path"], r["to"]) for r in sent] == [(paths[0], "SCRIPTED@test")]
    assert sent[0]["sop_instance_uid"] == str(dcmread(out / paths[0]).SOPInstanceUID)
    waiting = {e.path: e for e in box.due(now=time.time() + 1e6)}
    assert sorted(waiting) == paths[1:]
    assert (waiting[paths[1]].attempts, waiting[paths[1]].refusals) == (1, 1)  # refused: counts toward set-aside
    assert (waiting[paths[2]].attempts, waiting[paths[2]].refusals) == (1, 0)  # down: waited for
    assert waiting[paths[3]].attempts == 0 and waiting[paths[3]].next_try <= time.time()  # not tried: due now
    assert box.stats()["to"] == "SCRIPTED@test" and box.stats()["last_error"]["reason"] == "SCRIPTED@test: no"
