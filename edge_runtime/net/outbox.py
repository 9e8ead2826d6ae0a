"""``--send-to``: one target's outbox -- its queue (:mod:`edge_runtime.net.outbox_queue`) and the thread
that sends what is due, by C-STORE (``AET@HOST:PORT``, :mod:`edge_runtime.net.dimse`) or by DICOMweb
STOW-RS (a URL, :mod:`edge_runtime.net.dicomweb`); one outbox per target, each with its own folder.

The queue holds what waits, the back-off, what was sent and what is set aside, in one SQLite database
in the target's folder under ``OUT/.edge-seg/outbox/``, so it survives restarts and ``kill -9``: a
result is queued durably before :meth:`Outbox.add` returns, and recorded sent (in the same commit that
takes it off the queue) before the next is offered. Each try is one
:class:`~edge_runtime.net.senders.Sender`'s, which answers dataset by dataset: sent, refused, or the
target down.

A result is sent once: one found in OUT as it was sent is not queued again (a restart, a
reconcile); a result rewritten since (its scan was redone) is a new result and is sent. Only a kill
between the target's answer and the commit that records it sends it again at the next start (PACS
treat a repeated SOP Instance UID as the same object). At start, results under ``OUT/dicom/`` that
are neither waiting, set aside nor sent as they are now are queued (:meth:`Outbox.reconcile`: a kill
between recording a scan done and queueing its results). A failed try (target down, association
rejected, a failure status) waits ``retry`` seconds, then twice as long each time, at most
:data:`~edge_runtime.net.outbox_queue.MAX_WAIT`; a target that cannot be reached is waited for
without end. A result the target refuses :data:`~edge_runtime.net.outbox_queue.MAX_REFUSALS` times
(a failure status, or no presentation context for its SOP class: answers that do not change by
waiting) is set aside with an error in the log instead of being offered every 10 minutes forever;
a restart tries it again (what an administrator does after fixing the PACS's configuration), and so
does a new version of it. The sender's thread compacts the queue's sent rows now and then
(:meth:`~edge_runtime.net.outbox_queue.OutboxQueue.compact`), so a daemon that runs for years keeps no
growing table of results long removed. Sending never blocks segmentation: the daemon only adds
results to the outbox. An outbox folder of an older version (JSON files) is moved into the database
at start (:mod:`edge_runtime.net.outbox_legacy`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_runtime.net.dimse import DimseSender
from edge_runtime.net.outbox_queue import RESULT_SUFFIXES, Entry, OutboxQueue, Sent, iso
from edge_runtime.net.peer import Peer, Target, WebTarget
from edge_runtime.net.senders import Delivery, Sender

if TYPE_CHECKING:
    from edge_runtime.outputs.dicom_results import DicomResult

log = logging.getLogger(__name__)

OUTBOX_DIR = "outbox"


class Outbox:
    """One target's queue and the thread that sends from it (:meth:`start`, :meth:`stop`).

    ``peer``: where results go -- a DICOM peer (a :class:`DimseSender` calling as ``calling_ae``), a
    DICOMweb service (a :class:`~edge_runtime.net.dicomweb.StowSender` with ``auth``), or any sender.
    ``folder``: the outbox's state folder (default ``state_dir/outbox``), where :attr:`queue` keeps its
    database.
    """

    def __init__(
        self,
        out_dir: Path,
        state_dir: Path,
        peer: Target | Sender,
        calling_ae: str = "EDGESEG",
        retry: float = 5.0,
        folder: Path | None = None,
        auth: tuple[str, str] | str | None = None,
    ):
        self.out_dir = out_dir
        self.folder = folder or state_dir / OUTBOX_DIR
        self.sender = _sender(peer, calling_ae, auth)
        self.peer = peer if isinstance(peer, (Peer, WebTarget)) else self.sender.target
        self.target = str(self.sender.target)
        self.retry = retry
        self.queue = OutboxQueue(self.folder, out_dir, self.target)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.sent_since_start = 0
        self.failed_tries = 0
        self.last_error: dict[str, Any] | None = None
        #: results this process holds back whatever the queue says, until when: those sent whose record
        #: could not be written (not again before a restart), and the back-off of a failure not recorded
        self._held: dict[str, float] = {}

    def add(self, results: Iterable[DicomResult | str]) -> None:
        """Queue results (as the writers made them, or paths relative to OUT); durable when this returns."""
        self.queue.add(r if isinstance(r, str) else r.path for r in results)
        self._wake.set()

    def reconcile(self, folder: str = "dicom") -> int:
        """Queue every result under ``OUT/<folder>/`` that is neither waiting, set aside nor sent as it is
        now; returns how many."""
        found = []
        for dirpath, dirs, files in os.walk(self.out_dir / folder):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in files:
                if name.endswith(RESULT_SUFFIXES) and not name.startswith("."):
                    found.append((Path(dirpath) / name).relative_to(self.out_dir).as_posix())
        new = self.queue.unknown(found)
        if new:
            log.info("outbox: %d result(s) not yet sent to %s found in OUT", len(new), self.target)
            self.add(new)
        return len(new)

    def stats(self) -> dict[str, Any]:
        """What the status file shows about the outbox."""
        counts = self.queue.counts()
        return {
            "to": self.target,
            "waiting": counts.waiting,
            "sent_since_start": self.sent_since_start,
            "sent_total": counts.sent_total,
            "failed_tries": self.failed_tries,
            "refused": counts.refused,
            "oldest_waiting": iso(counts.oldest),
            "next_try": iso(counts.next_try),
            "last_error": self.last_error,
        }

    def due(self, now: float | None = None) -> list[Entry]:
        """What the next try offers (:meth:`OutboxQueue.due`)."""
        return self.queue.due(now)

    # -- sending ---------------------------------------------------------------------------------------
    def send_due(self, now: float | None = None) -> int:
        """One try for the results due at ``now`` (default: now; one connection, :attr:`sender`); returns
        how many were sent."""
        now = time.time() if now is None else now
        loaded = self._load([e for e in self.queue.due(now) if self._held.get(e.path, 0.0) <= now])
        if not loaded:
            return 0
        sent = 0
        failed: dict[tuple[bool, str], list[Entry]] = {}  # (a refusal, the reason): the results so answered
        with contextlib.closing(self.sender.offer([ds for _, ds, _ in loaded], self._stop.is_set)) as replies:
            for reply, (entry, ds, stat) in zip(replies, loaded, strict=False):  # fewer replies: the rest untried
                if reply.delivery == Delivery.SENT:
                    self._sent_one(Sent(entry.path, str(ds.SOPInstanceUID), *stat))
                    sent += 1
                else:
                    failed.setdefault((reply.delivery == Delivery.REFUSED, reply.reason), []).append(entry)
        for (refusal, reason), entries in sorted(failed.items(), key=lambda kv: kv[0][0]):  # the target down first
            self._failed(entries, reason, refusal)
        return sent

    def _load(self, entries: list[Entry]) -> list[tuple[Entry, Any, tuple[int, int]]]:
        """The due results read back from OUT, with their size and mtime; one gone or unreadable is dropped."""
        if not entries:
            return []
        from pydicom import dcmread

        loaded: list[tuple[Entry, Any, tuple[int, int]]] = []
        for entry in entries:
            stat = self.queue.stat(entry.path)
            try:
                ds = dcmread(self.out_dir / entry.path)
            except Exception as exc:  # gone (its scan is being redone) or unreadable: drop, the redo queues it
                log.warning("outbox: dropping %s: %s", entry.path, exc)
                self.queue.drop(entry.path)
                continue
            if stat is not None:
                loaded.append((entry, ds, stat))
        return loaded

    def _sent_one(self, sent: Sent) -> None:
        """The target took a result: recorded sent (on disk) before the next is offered."""
        try:
            self.queue.record_sent(sent, self.target)
        except OSError as exc:  # not sent again by this process; after a restart it would be
            self._held[sent.path] = float("inf")
            log.warning("outbox: cannot record %s as sent: %s", sent.path, exc.strerror or exc)
        self.sent_since_start += 1
        log.info("sent %s to %s", sent.path, self.target)

    def _failed(self, entries: list[Entry], reason: str, refusal: bool = False) -> None:
        """A failed try of ``entries``: back off; a result refused too often is set aside (and said so)."""
        self.failed_tries += 1
        self.last_error = {"reason": reason, "time": iso(time.time())}
        from edge_runtime.net import outbox_queue

        try:
            now = self.queue.failed(entries, reason, refusal, self.retry)
        except OSError as exc:  # the back-off then lives in memory only; the entries themselves are on disk
            log.warning("outbox: cannot update %d entries: %s", len(entries), exc.strerror or exc)
            for e in entries:
                self._held[e.path] = time.time() + min(outbox_queue.MAX_WAIT, self.retry * 2**e.attempts)
            return
        aside = [e for e in now if e.refusals >= outbox_queue.MAX_REFUSALS]
        for e in aside:
            log.error(
                "outbox: %s was refused %d times (%s); it stays in OUT and is no longer offered: fix the PACS's "
                "configuration and restart edge-seg to send it again",
                e.path,
                e.refusals,
                reason,
            )
        waiting = [e for e in now if e not in aside]
        if waiting:
            wait = min(e.next_try for e in waiting) - time.time()
            log.warning("outbox: %d result(s) not sent, %s; next try in %.0f s", len(waiting), reason, wait)

    # -- the thread ------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="outbox", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                while self.send_due() and not self._stop.is_set():
                    pass
                if self.queue.compaction_due():
                    self.queue.compact()
            except OSError as exc:  # the queue's database could not be read or written: no bug, no traceback
                log.warning("outbox: %s; will try again", exc.strerror or exc)
                self._stop.wait(self.retry)
            except Exception:  # the sender must not die of one odd file or network error
                log.exception("outbox: unexpected error while sending; will try again")
                self._stop.wait(self.retry)
            try:
                nxt = self.queue.next_try()
            except OSError:  # said above or at the next pass; the thread lives on
                nxt = None
            if nxt is not None and self._held:  # (a disk that takes no writes: not faster than the back-off)
                nxt = max(nxt, min(self._held.values()))
            wait = 60.0 if nxt is None else max(0.05, min(60.0, nxt - time.time()))
            self._wake.wait(wait)
            self._wake.clear()


def _sender(peer: Target | Sender, calling_ae: str, auth: tuple[str, str] | str | None) -> Sender:
    """The sender for ``peer``: C-STORE to a DICOM peer, STOW-RS to a DICOMweb service, or ``peer`` itself."""
    if isinstance(peer, Peer):
        return DimseSender(peer, calling_ae)
    if isinstance(peer, WebTarget):
        from edge_runtime.net.dicomweb import StowSender

        return StowSender(peer, auth)
    return peer
