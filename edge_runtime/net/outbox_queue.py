"""The outbox's queue: one target's results waiting, sent and set aside, in one SQLite database.

``outbox.sqlite`` in the target's outbox folder (Python's ``sqlite3``, WAL, ``synchronous=FULL``: a
commit is on disk when it returns), one table, ``entries``, one row per result (its path relative to
OUT) with a ``state``:

* ``waiting``: queued (:meth:`OutboxQueue.add`), with when, the attempts so far, the next try, the
  last error and how many of the attempts the target refused;
* ``sent``: the target took it; ``sop_instance_uid``, ``size`` and ``mtime_ns`` (the file as it was
  sent), ``sent`` (when) and ``sent_to``. A result queued again keeps these columns while it waits:
  they say which version was sent, so a rewritten result (its scan redone) is a new one and a result
  found as it was sent is not queued again;
* ``aside``: refused :data:`MAX_REFUSALS` times; no longer offered until the next start, which queues
  it again (what an administrator does after fixing the PACS's configuration).

Recording a result sent is one transaction, so there is no moment between "recorded sent" and "no
longer waiting"; a kill between the target's answer and that commit sends the result again at the
next start (PACS treat a repeated SOP Instance UID as the same object). Rows of results no longer in
OUT as sent guard against nothing: :meth:`OutboxQueue.compact` drops them (at :data:`COMPACT_ROWS`
sent rows, then at twice what it kept), so a daemon that runs for years keeps no growing table.

One database per target, in that target's folder, not in the ledger: the targets stay independent
(removing a target's folder forgets that target's history and nothing else; the ledger is shared by
the processes of a ``--num-parts`` split, the outbox belongs to the daemon alone). An outbox folder
in the formats of edge-seg 0.6 and before (one JSON file per waiting result, ``sent.jsonl``,
``refused/``) is moved into the database when it is opened (:mod:`edge_runtime.net.outbox_legacy`).
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_runtime import timestamps
from edge_runtime.net import outbox_legacy

log = logging.getLogger(__name__)

DB_NAME = "outbox.sqlite"
MAX_WAIT = 600.0  #: the longest wait between two tries, seconds
MAX_REFUSALS = 10  #: refusals of one result (not failures to connect) before it is set aside until a restart
#: (with the back-off, about half an hour of refusals at the default ``--send-retry`` of 5 s)
COMPACT_ROWS = 10_000  #: sent rows at which :meth:`OutboxQueue.compact` runs, then at twice what it kept
BATCH = 32  #: results offered in one try at most

WAITING, SENT, ASIDE = "waiting", "sent", "aside"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    path TEXT PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('waiting', 'sent', 'aside')),
    queued REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    refusals INTEGER NOT NULL DEFAULT 0,
    sop_instance_uid TEXT,
    size INTEGER,
    mtime_ns INTEGER,
    sent TEXT,
    sent_to TEXT
);
CREATE INDEX IF NOT EXISTS entries_state ON entries (state, next_try);
PRAGMA user_version = 1;
"""
_FIELDS = "path, queued, attempts, next_try, last_error, refusals"
_FORGET_SENT = "sop_instance_uid = NULL, size = NULL, mtime_ns = NULL, sent = NULL, sent_to = NULL"

#: The results the outbox sends, in the order a scan's are sent (the SR references the SEG).
RESULT_SUFFIXES = (".seg.dcm", ".sr.dcm", ".sc.dcm")


@dataclass
class Entry:
    """One result waiting to be sent."""

    path: str  #: POSIX path relative to OUT
    queued: float
    attempts: int = 0
    next_try: float = 0.0
    last_error: str | None = None
    refusals: int = 0  #: of the attempts, those the target answered with a refusal (see :data:`MAX_REFUSALS`)


@dataclass(frozen=True)
class Sent:
    """A result the target took: the file as it was sent."""

    path: str
    sop_instance_uid: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Counts:
    """What the status file shows of a queue."""

    waiting: int
    refused: int  #: set aside until the next start
    sent_total: int  #: results whose sent version is recorded
    oldest: float | None  #: when the oldest result waiting was queued (Unix time)
    next_try: float | None  #: the earliest next try of one waiting


def order(path: str) -> tuple[str, int]:
    """A scan's SEG before its SR (the SR references the SEG), then its Secondary Capture."""
    for rank, suffix in enumerate(RESULT_SUFFIXES):
        if path.endswith(suffix):
            return path.removesuffix(suffix), rank
    return path, len(RESULT_SUFFIXES)


def iso(t: float | None) -> str | None:
    return None if t is None else timestamps.local(t)


def _os_error(exc: sqlite3.Error, path: Path) -> OSError:
    """A failed write to the database as the OSError the callers handle (disk full stays ENOSPC)."""
    full = getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(exc)
    return OSError(errno.ENOSPC if full else errno.EIO, f"outbox {path}: {exc}")


class OutboxQueue:
    """One target's queue in ``folder/outbox.sqlite``; thread-safe (the daemon adds, the sender takes).

    ``out_dir``: OUT, against which the results' paths are checked (a result is the one sent while its
    file has the size and mtime it had then). Every write is committed to disk before it returns, or
    raises OSError.
    """

    def __init__(self, folder: Path, out_dir: Path, target: str) -> None:
        self.folder, self.out_dir, self.target = folder, out_dir, target
        self.path = folder / DB_NAME
        self._lock = threading.Lock()
        folder.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            from edge_runtime.errors import SetupError

            raise SetupError(f"cannot open the outbox {self.path} ({exc}); move it away to start it anew") from None
        self._take_over_old_files()
        self._next_compaction = max(COMPACT_ROWS, 2 * self.sent_rows())
        self._requeue_aside()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction (lock held), committed to disk when it ends; an error as OSError."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    with suppress(sqlite3.Error):  # (SQLite may have rolled it back itself)
                        self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise _os_error(exc, self.path) from None

    def _rows(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        """A read's rows; an error as OSError, as a transaction's is."""
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise _os_error(exc, self.path) from None

    def stat(self, path: str) -> tuple[int, int] | None:
        """``path``'s size and mtime in OUT, or None when it is not there."""
        try:
            st = os.stat(self.out_dir / path)
        except OSError:
            return None
        return st.st_size, st.st_mtime_ns

    # -- what is in it ---------------------------------------------------------------------------------
    def entries(self, state: str = WAITING) -> list[Entry]:
        """The results waiting (or, ``state=ASIDE``, set aside), in no particular order."""
        return [Entry(*r) for r in self._rows(f"SELECT {_FIELDS} FROM entries WHERE state = ?", state)]

    def due(self, now: float | None = None) -> list[Entry]:
        """The results to offer in the next try, at most :data:`BATCH`: due at ``now`` (default: now),
        oldest first, each scan's SEG before its SR before its SC."""
        now = time.time() if now is None else now
        rows = self._rows(f"SELECT {_FIELDS} FROM entries WHERE state = ? AND next_try <= ?", WAITING, now)
        return sorted((Entry(*r) for r in rows), key=lambda e: (e.queued, order(e.path)))[:BATCH]

    def next_try(self) -> float | None:
        [(nxt,)] = self._rows("SELECT min(next_try) FROM entries WHERE state = ?", WAITING)
        return None if nxt is None else float(nxt)

    def counts(self) -> Counts:
        [(waiting, aside, sent, oldest, nxt)] = self._rows(
            "SELECT sum(state = 'waiting'), sum(state = 'aside'), count(size), "
            "min(CASE WHEN state = 'waiting' THEN queued END), min(CASE WHEN state = 'waiting' THEN next_try END) "
            "FROM entries"
        )
        return Counts(waiting or 0, aside or 0, sent, oldest, nxt)

    def sent_rows(self) -> int:
        [(n,)] = self._rows("SELECT count(size) FROM entries")
        return int(n)

    def already_sent(self, path: str) -> bool:
        """Whether ``path`` is in OUT as it was when the target took it."""
        rows = self._rows("SELECT size, mtime_ns FROM entries WHERE path = ? AND size IS NOT NULL", path)
        return bool(rows) and tuple(rows[0]) == self.stat(path)

    def sent(self) -> list[Sent]:
        rows = self._rows("SELECT path, sop_instance_uid, size, mtime_ns FROM entries WHERE size IS NOT NULL")
        return [Sent(*r) for r in rows]

    # -- changes ---------------------------------------------------------------------------------------
    def add(self, paths: Iterable[str], now: float | None = None) -> None:
        """Queue results (paths relative to OUT), due now; a new version of a result set aside or sent
        is a new result (no attempts yet)."""
        now = time.time() if now is None else now
        with self._tx() as db:
            for path in sorted(paths, key=order):
                db.execute(
                    "INSERT INTO entries (path, state, queued, next_try) VALUES (?, 'waiting', ?, ?) "
                    "ON CONFLICT (path) DO UPDATE SET next_try = excluded.next_try, refusals = 0, "
                    "queued = CASE WHEN state = 'waiting' THEN queued ELSE excluded.queued END, "
                    "attempts = CASE WHEN state = 'waiting' THEN attempts ELSE 0 END, "
                    "last_error = CASE WHEN state = 'waiting' THEN last_error END, state = 'waiting'",
                    (path, now, now),
                )

    def unknown(self, paths: Iterable[str]) -> list[str]:
        """Of ``paths``, those neither waiting, set aside, nor in OUT as they were sent."""
        known = {
            p: (s, size, mtime) for p, s, size, mtime in self._rows("SELECT path, state, size, mtime_ns FROM entries")
        }
        new = []
        for path in paths:
            state, size, mtime = known.get(path, (None, None, None))
            if state in (WAITING, ASIDE) or (size is not None and (size, mtime) == self.stat(path)):
                continue
            new.append(path)
        return new

    def record_sent(self, sent: Sent, to: str) -> None:
        """The target took ``sent.path``: no longer waiting, and the version sent recorded, at once."""
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT INTO entries (path, state, queued, sop_instance_uid, size, mtime_ns, sent, sent_to) "
                "VALUES (?, 'sent', ?, ?, ?, ?, ?, ?) ON CONFLICT (path) DO UPDATE SET state = 'sent', "
                "sop_instance_uid = excluded.sop_instance_uid, size = excluded.size, mtime_ns = excluded.mtime_ns, "
                "sent = excluded.sent, sent_to = excluded.sent_to",
                (sent.path, now, sent.sop_instance_uid, sent.size, sent.mtime_ns, iso(now), to),
            )

    def drop(self, path: str) -> None:
        """A waiting result whose file is gone or unreadable: no longer waiting (its redo queues it again)."""
        with self._tx() as db:
            db.execute(
                "UPDATE entries SET state = 'sent' WHERE path = ? AND state = 'waiting' AND size IS NOT NULL", (path,)
            )
            db.execute("DELETE FROM entries WHERE path = ? AND state = 'waiting'", (path,))

    def failed(self, entries: list[Entry], reason: str, refusal: bool, retry: float) -> list[Entry]:
        """A failed try of ``entries``: each waits ``retry`` s, twice as long after each further failure (at
        most :data:`MAX_WAIT`); one refused :data:`MAX_REFUSALS` times is set aside. Returns the entries as
        they now are, those set aside with ``refusals`` at the limit."""
        now = time.time()
        out = []
        with self._tx() as db:
            for e in entries:
                row = db.execute(
                    "SELECT attempts, refusals FROM entries WHERE path = ? AND state = 'waiting'", (e.path,)
                )
                found = row.fetchone()
                if found is None:  # sent or dropped meanwhile
                    continue
                attempts, refusals = found[0] + 1, found[1] + int(refusal)
                nxt = now + min(MAX_WAIT, retry * 2 ** (attempts - 1))
                state = ASIDE if refusals >= MAX_REFUSALS else WAITING
                db.execute(
                    "UPDATE entries SET attempts = ?, refusals = ?, next_try = ?, last_error = ?, state = ? "
                    "WHERE path = ?",
                    (attempts, refusals, nxt, reason, state, e.path),
                )
                out.append(Entry(e.path, e.queued, attempts, nxt, reason, refusals))
        return out

    def _take_over_old_files(self) -> None:
        """An outbox folder of an older version: its files become rows (:mod:`edge_runtime.net.outbox_legacy`)."""
        old = outbox_legacy.read(self.folder, self.stat)
        if old is None:
            return
        fields = ", ".join(outbox_legacy.ENTRY_FIELDS)
        with self._tx() as db:
            for path, rec in old.sent.items():
                db.execute(
                    "INSERT INTO entries (path, state, queued, sop_instance_uid, size, mtime_ns, sent, sent_to) "
                    "VALUES (?, 'sent', 0, ?, ?, ?, ?, ?) ON CONFLICT (path) DO NOTHING",
                    (path, rec.get("sop_instance_uid"), rec["size"], rec["mtime_ns"], rec.get("sent"), rec.get("to")),
                )
            for state, entries in ((ASIDE, old.aside), (WAITING, old.waiting)):  # waiting wins over set aside
                for row in entries.values():
                    values = (
                        row["path"],
                        row["queued"],
                        row.get("attempts") or 0,
                        row.get("next_try") or 0.0,
                        row.get("last_error"),
                        row.get("refusals") or 0,
                    )
                    db.execute(
                        f"INSERT INTO entries (state, {fields}) VALUES (?, ?, ?, ?, ?, ?, ?) "
                        "ON CONFLICT (path) DO UPDATE SET state = excluded.state, queued = excluded.queued, "
                        "attempts = excluded.attempts, next_try = excluded.next_try, "
                        "last_error = excluded.last_error, refusals = excluded.refusals",
                        (state, *values),
                    )
        outbox_legacy.remove(old)
        log.info(
            "outbox: moved the old files of %s into %s (%d waiting, %d sent, %d set aside)",
            self.folder,
            DB_NAME,
            len(old.waiting),
            len(old.sent),
            len(old.aside),
        )

    def _requeue_aside(self) -> None:
        """At start, the results set aside are queued again, their refusals forgotten."""
        now = time.time()
        with self._tx() as db:
            n = db.execute(
                "UPDATE entries SET state = 'waiting', refusals = 0, next_try = ? WHERE state = 'aside'", (now,)
            ).rowcount
        if n:
            log.info("outbox: trying again %d result(s) %s refused before this start", n, self.target)

    # -- upkeep ----------------------------------------------------------------------------------------
    def compaction_due(self) -> bool:
        return self.sent_rows() >= self._next_compaction

    def compact(self) -> None:
        """Forget the sent versions of results no longer in OUT as they were sent (removed, or rewritten
        since: sent again or waiting); they guard against nothing. The ``stat`` of each is taken without
        the lock, and a row changed meanwhile is left as it is."""
        recorded = self.sent()
        stale = [s for s in recorded if self.stat(s.path) != (s.size, s.mtime_ns)]
        try:
            with self._tx() as db:
                for s in stale:
                    where = (s.path, s.size, s.mtime_ns)
                    db.execute(
                        "DELETE FROM entries WHERE path = ? AND size = ? AND mtime_ns = ? AND state = 'sent'", where
                    )
                    db.execute(f"UPDATE entries SET {_FORGET_SENT} WHERE path = ? AND size = ? AND mtime_ns = ?", where)
        except OSError as exc:  # the rows stay as they were; tried again after as many more
            log.warning("outbox: cannot compact %s: %s", self.path, exc)
            self._next_compaction = 2 * len(recorded)
            return
        kept = self.sent_rows()
        self._next_compaction = max(COMPACT_ROWS, 2 * kept)
        log.info(
            "outbox: compacted %s from %d to %d sent results (no longer in OUT as sent)", self.path, len(recorded), kept
        )
