"""``--send-to``: the outbox of DICOM results, sent to one PACS on its own thread, by C-STORE
(``AET@HOST:PORT``) or by DICOMweb STOW-RS (a URL, :mod:`edge_runtime.net.dicomweb`); one outbox per
target, each with its own state folder.

The outbox is the queue: what waits, the back-off, what was sent and what is set aside. Each try is
one :class:`~edge_runtime.net.senders.Sender`'s (DIMSE C-STORE, :mod:`edge_runtime.net.dimse`, or
STOW-RS, :mod:`edge_runtime.net.dicomweb`), which answers dataset by dataset: sent, refused, or the
target down.

State lives under ``OUT/.edge-seg/outbox/``, so it survives restarts and ``kill -9``:

* one small JSON file per result waiting (``<key>.json``: its path under OUT, when it was queued,
  the attempts so far, the next try and the last error), written atomically before :meth:`Outbox.add`
  returns;
* ``sent.jsonl``: one line per result the PACS took (path, SOP Instance UID, the file's size and
  mtime, when, to whom), flushed to disk before the waiting entry is removed; compacted on the
  sender's thread (at :data:`COMPACT_LINES` lines, then at twice what it kept) to the lines of
  results still in OUT as they were sent, so a daemon that runs for years keeps neither a growing
  file nor a growing table of results long removed;
* ``refused/<key>.json``: results the PACS refused :data:`MAX_REFUSALS` times (a failure status, or
  no presentation context for their SOP class: answers that do not change by waiting), set aside
  with an error in the log instead of being offered every 10 minutes forever. A restart tries them
  again (what an administrator does after fixing the PACS's configuration), and so does a new
  version of the result (its scan redone).

A result is sent once: an entry whose file matches a ``sent.jsonl`` line (a kill between the two
steps) is dropped at start, not sent again; a result rewritten since (its scan was redone) is a new
result and is sent. At start, results under ``OUT/dicom/`` that are neither waiting nor sent are
queued (a kill between recording a scan done and queueing its results). A failed try (PACS down,
association rejected, a failure status) waits ``retry`` seconds, then twice as long each time, at most
:data:`MAX_WAIT`; a PACS that cannot be reached is waited for without end. Sending never blocks
segmentation: the daemon only adds files to the outbox.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edge_runtime.files.durable import write_atomic
from edge_runtime.net.dimse import DimseSender
from edge_runtime.net.peer import Peer, Target, WebTarget
from edge_runtime.net.senders import Delivery, Sender

log = logging.getLogger(__name__)

OUTBOX_DIR = "outbox"
SENT_LOG = "sent.jsonl"
REFUSED_DIR = "refused"
MAX_WAIT = 600.0  #: the longest wait between two tries, seconds
MAX_REFUSALS = 10  #: refusals of one result (not failures to connect) before it is set aside until a restart
#: (with the back-off, about half an hour of refusals at the default ``--send-retry`` of 5 s)
COMPACT_LINES = 10_000  #: ``sent.jsonl`` is compacted at this many lines, then at twice what it kept
BATCH = 32  #: results sent over one association at most


@dataclass
class Entry:
    """One result waiting to be sent."""

    path: str  #: POSIX path relative to OUT
    queued: float
    attempts: int = 0
    next_try: float = 0.0
    last_error: str | None = None
    refusals: int = 0  #: of the attempts, those the PACS answered with a refusal (see :data:`MAX_REFUSALS`)


def _key(path: str) -> str:
    return hashlib.sha1(path.encode("utf-8")).hexdigest()[:20]


def _iso(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))


#: The results the outbox sends, in the order a scan's are sent (the SR references the SEG).
RESULT_SUFFIXES = (".seg.dcm", ".sr.dcm", ".sc.dcm")


def _order(path: str) -> tuple[str, int]:
    """A scan's SEG before its SR (the SR references the SEG), then its Secondary Capture."""
    for rank, suffix in enumerate(RESULT_SUFFIXES):
        if path.endswith(suffix):
            return path.removesuffix(suffix), rank
    return path, len(RESULT_SUFFIXES)


class Outbox:
    """The persistent queue and its sender thread (:meth:`start`, :meth:`stop`).

    ``peer``: where results go -- a DICOM peer (a :class:`DimseSender` calling as ``calling_ae``), a
    DICOMweb service (a :class:`~edge_runtime.net.dicomweb.StowSender` with ``auth``), or any sender.
    ``folder``: the outbox's state folder (default ``state_dir/outbox``).
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
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.sent_since_start = 0
        self.failed_tries = 0
        self.last_error: dict[str, Any] | None = None
        self.folder.mkdir(parents=True, exist_ok=True)
        self._sent_lines = 0  #: lines in sent.jsonl
        self._next_compaction = COMPACT_LINES  #: compact sent.jsonl once it has this many lines
        self._sent: dict[str, tuple[int, int]] = self._load_sent()
        self._refused: dict[str, Entry] = {}
        self._entries: dict[str, Entry] = self._load_entries()
        self._requeue_refused()

    # -- state on disk ---------------------------------------------------------------------------------
    def _load_sent(self) -> dict[str, tuple[int, int]]:
        sent: dict[str, tuple[int, int]] = {}
        try:
            lines = (self.folder / SENT_LOG).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return sent
        for line in lines:
            try:
                rec = json.loads(line)
                sent[rec["path"]] = (int(rec["size"]), int(rec["mtime_ns"]))
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line (kill -9 mid-write): that result is sent again, which PACS tolerate
        self._sent_lines = len(lines)
        return sent

    def compact(self) -> None:
        """Rewrite ``sent.jsonl`` with the last line of each result still in OUT as it was sent.

        The records of results removed from OUT, or rewritten since (their scan redone, so sent again or
        waiting), guard against nothing; they go, from the file and from memory. Atomic: a kill leaves the
        old file or the new one. Called on the sender's thread, the only one that appends to the file, so
        the daemon's own work does not wait for the ``stat`` of every result sent.
        """
        with self._lock:
            sent = dict(self._sent)
        kept = self._compact(sent)
        with self._lock:
            self._sent = kept
        self._next_compaction = max(COMPACT_LINES, 2 * self._sent_lines)

    def _compact(self, sent: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
        path = self.folder / SENT_LOG
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
            live = {p for p, stat in sent.items() if self._stat(p) == stat}
            kept: dict[str, str] = {}
            for line in lines:
                try:
                    rec = json.loads(line)
                    if rec["path"] in live and (int(rec["size"]), int(rec["mtime_ns"])) == sent[rec["path"]]:
                        kept[rec["path"]] = line
                except (ValueError, KeyError, TypeError):
                    continue
            write_atomic(path, "".join(f"{line}\n" for line in kept.values()), fsync=True)
        except OSError as exc:  # the file stays as it was; it is tried again after as many lines more
            log.warning("outbox: cannot compact %s: %s", path, exc.strerror or exc)
            return sent
        log.info(
            "outbox: %s compacted from %d to %d lines (results no longer in OUT as sent)",
            SENT_LOG,
            len(lines),
            len(kept),
        )
        self._sent_lines = len(kept)
        return {p: sent[p] for p in kept}

    def _load_entries(self, folder: Path | None = None) -> dict[str, Entry]:
        entries: dict[str, Entry] = {}
        for f in sorted((folder or self.folder).glob("*.json")):
            try:
                entry = Entry(**json.loads(f.read_text(encoding="utf-8")))
            except (OSError, ValueError, TypeError) as exc:
                log.warning("outbox: ignoring unreadable entry %s (%s)", f.name, exc)
                continue
            if self._already_sent(entry.path):
                f.unlink(missing_ok=True)  # sent just before a kill: not again
                continue
            entries[entry.path] = entry
        return entries

    def _requeue_refused(self) -> None:
        """At start, the results set aside as refused are queued again, their refusals forgotten."""
        folder = self.folder / REFUSED_DIR
        refused = self._load_entries(folder) if folder.is_dir() else {}
        if not refused:
            return
        now = time.time()
        for path, entry in refused.items():
            entry.refusals, entry.next_try = 0, now
            try:
                if path not in self._entries:  # (a newer version of it may be waiting already)
                    self._save(entry)
                (folder / f"{_key(path)}.json").unlink(missing_ok=True)
            except OSError as exc:
                log.warning("outbox: cannot queue %s again: %s", path, exc.strerror or exc)
                continue
            self._entries.setdefault(path, entry)
        log.info("outbox: trying again %d result(s) %s refused before this start", len(refused), self.target)

    def _stat(self, path: str) -> tuple[int, int] | None:
        try:
            st = os.stat(self.out_dir / path)
        except OSError:
            return None
        return st.st_size, st.st_mtime_ns

    def _already_sent(self, path: str) -> bool:
        return path in self._sent and self._sent[path] == self._stat(path)

    def _save(self, entry: Entry) -> None:
        write_atomic(self.folder / f"{_key(entry.path)}.json", json.dumps(asdict(entry)) + "\n", fsync=True)

    def _record_sent(self, path: str, uid: str, stat: tuple[int, int]) -> None:
        rec = {"path": path, "sop_instance_uid": uid, "size": stat[0], "mtime_ns": stat[1]}
        rec |= {"sent": _iso(time.time()), "to": str(self.target)}
        with open(self.folder / SENT_LOG, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self._sent[path] = stat
        self._sent_lines += 1
        (self.folder / f"{_key(path)}.json").unlink(missing_ok=True)

    # -- queueing --------------------------------------------------------------------------------------
    def add(self, paths: list[str]) -> None:
        """Queue results (paths relative to OUT) for sending; durable when this returns."""
        now = time.time()
        with self._lock:
            for path in sorted(paths, key=_order):
                entry = self._entries.get(path)
                if entry is None:
                    entry = self._entries[path] = Entry(path, now)
                entry.next_try, entry.refusals = now, 0  # new content: try now, whatever happened to the old
                self._save(entry)
                if self._refused.pop(path, None) is not None:
                    (self.folder / REFUSED_DIR / f"{_key(path)}.json").unlink(missing_ok=True)
        self._wake.set()

    def reconcile(self, folder: str = "dicom") -> int:
        """Queue every result under ``OUT/<folder>/`` that is neither waiting nor sent; returns how many."""
        found = []
        for dirpath, dirs, files in os.walk(self.out_dir / folder):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in files:
                if name.endswith(RESULT_SUFFIXES) and not name.startswith("."):
                    found.append((Path(dirpath) / name).relative_to(self.out_dir).as_posix())
        with self._lock:
            new = [p for p in found if p not in self._entries and p not in self._refused and not self._already_sent(p)]
        if new:
            log.info("outbox: %d result(s) not yet sent to %s found in OUT", len(new), self.target)
            self.add(new)
        return len(new)

    def stats(self) -> dict[str, Any]:
        """What the status file shows about the outbox."""
        with self._lock:
            entries = list(self._entries.values())
        return {
            "to": str(self.target),
            "waiting": len(entries),
            "sent_since_start": self.sent_since_start,
            "sent_total": len(self._sent),
            "failed_tries": self.failed_tries,
            "refused": len(self._refused),
            "oldest_waiting": _iso(min((e.queued for e in entries), default=None)),
            "next_try": _iso(min((e.next_try for e in entries), default=None)),
            "last_error": self.last_error,
        }

    # -- sending ---------------------------------------------------------------------------------------
    def due(self, now: float | None = None) -> list[Entry]:
        now = time.time() if now is None else now
        with self._lock:
            ready = [e for e in self._entries.values() if e.next_try <= now]
        return sorted(ready, key=lambda e: (e.queued, _order(e.path)))[:BATCH]

    def send_due(self) -> int:
        """One try for the results that are due (one connection, :attr:`sender`); returns how many were sent."""
        loaded = self._load(self.due())
        if not loaded:
            return 0
        sent = 0
        failed: dict[tuple[bool, str], list[Entry]] = {}  # (a refusal, the reason): the results so answered
        with contextlib.closing(self.sender.offer([ds for _, ds, _ in loaded], self._stop.is_set)) as replies:
            for reply, (entry, ds, stat) in zip(replies, loaded, strict=False):  # fewer replies: the rest untried
                if reply.delivery == Delivery.SENT:
                    self._sent_one(entry, str(ds.SOPInstanceUID), stat)
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
            stat = self._stat(entry.path)
            try:
                ds = dcmread(self.out_dir / entry.path)
            except Exception as exc:  # gone (its scan is being redone) or unreadable: drop, the redo queues it
                log.warning("outbox: dropping %s: %s", entry.path, exc)
                with self._lock:
                    self._entries.pop(entry.path, None)
                (self.folder / f"{_key(entry.path)}.json").unlink(missing_ok=True)
                continue
            if stat is not None:
                loaded.append((entry, ds, stat))
        return loaded

    def _sent_one(self, entry: Entry, uid: str, stat: tuple[int, int]) -> None:
        """The target took ``entry``'s result: recorded sent (on disk) before the next is offered."""
        with self._lock:
            try:
                self._record_sent(entry.path, uid, stat)
            except OSError as exc:  # not sent again by this process; after a restart it would be
                log.warning("outbox: cannot record %s as sent: %s", entry.path, exc.strerror or exc)
            self._entries.pop(entry.path, None)
            self.sent_since_start += 1
        log.info("sent %s to %s", entry.path, self.target)

    def _failed(self, entries: list[Entry], reason: str, refusal: bool = False) -> None:
        """A failed try of ``entries``: back off; a result refused :data:`MAX_REFUSALS` times is set aside."""
        now = time.time()
        aside: list[Entry] = []
        with self._lock:
            self.failed_tries += 1
            self.last_error = {"reason": reason, "time": _iso(now)}
            for e in entries:
                e.attempts += 1
                e.refusals += int(refusal)
                e.next_try = now + min(MAX_WAIT, self.retry * 2 ** (e.attempts - 1))
                e.last_error = reason
                try:
                    if e.refusals >= MAX_REFUSALS:
                        self._set_aside(e)
                        aside.append(e)
                    else:
                        self._save(e)
                except OSError as exc:  # the back-off then lives in memory only; the entry itself is on disk
                    log.warning("outbox: cannot update %s's entry: %s", e.path, exc.strerror or exc)
        for e in aside:
            log.error(
                "outbox: %s was refused %d times (%s); it stays in OUT and is no longer offered: fix the PACS's "
                "configuration and restart edge-seg to send it again",
                e.path,
                e.refusals,
                reason,
            )
        waiting = [e for e in entries if e not in aside]
        if waiting:
            wait = min(e.next_try for e in waiting) - now
            log.warning("outbox: %d result(s) not sent, %s; next try in %.0f s", len(waiting), reason, wait)

    def _set_aside(self, entry: Entry) -> None:
        """Move a refused result's entry to ``refused/`` (lock held): not offered again until a restart."""
        write_atomic(self.folder / REFUSED_DIR / f"{_key(entry.path)}.json", json.dumps(asdict(entry)) + "\n")
        (self.folder / f"{_key(entry.path)}.json").unlink(missing_ok=True)
        self._entries.pop(entry.path, None)
        self._refused[entry.path] = entry

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
                if self._sent_lines >= self._next_compaction:
                    self.compact()
            except Exception:  # the sender must not die of one odd file or network error
                log.exception("outbox: unexpected error while sending; will try again")
                self._stop.wait(self.retry)
            with self._lock:
                nxt = min((e.next_try for e in self._entries.values()), default=None)
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
