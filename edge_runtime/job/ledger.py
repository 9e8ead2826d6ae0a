"""The ledger under ``OUT/.edge-seg/``: what was done with which scan, by which model and settings.

A SQLite database, ``ledger.sqlite`` (Python's own ``sqlite3``, WAL mode), read a row at a time: a
run's start-up time and memory do not grow with the scans done before it. Table ``scans`` holds each
scan's newest record (its path relative to IN is the key), ``events`` one row per record ever written
(what happened to which scan, when). The record shapes are this module's (:class:`ScanState` and the
methods that write them):

* ``begin`` -- written after the scan was read and before its outputs are, naming them, and the
  session (process) writing them (:meth:`Ledger.begin`);
* ``done``  -- its outputs are complete: the scan's size, mtime and sha256, the job signature, the
  outputs (:meth:`Ledger.done`; :meth:`Ledger.touched` when the same bytes were done already);
* ``error`` -- it could not be processed, and why (:meth:`Ledger.error`).

Each record is committed before the method returns (a ``begin`` before any output is written); the
``done`` records of a batch go in one transaction (:meth:`Ledger.batch`). A commit is in the kernel
once made: it survives ``kill -9``; :meth:`Ledger.sync` makes it survive a power cut.

A scan is up to date when its newest record is ``done`` for the same size, mtime and signature and
the outputs are still there. A scan left at ``begin`` by a session that is gone (killed, crashed)
whose outputs all exist and are newer than the ``begin`` record is recovered as done -- a ``done``
record marked ``"recovered": true`` -- and not processed again; otherwise it is processed again.

Several processes may share one ledger (``--num-parts``): SQLite serialises their commits, and
:mod:`edge_runtime.job.locks` tells which sessions are alive. A JSON-lines ledger of an older
version is moved in once (:mod:`edge_runtime.job.ledger_migrate`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_runtime import timestamps
from edge_runtime.errors import ErrorKind, SetupError
from edge_runtime.files.durable import sweep_temp_files
from edge_runtime.job.ledger_migrate import JSONL_NAME, migrate_jsonl
from edge_runtime.job.locks import LOCK_NAME, FolderLock, Session
from edge_runtime.outputs.layout import STATE_DIR

if TYPE_CHECKING:
    from edge_runtime.job.parts import Part

log = logging.getLogger(__name__)

LEDGER_NAME = "ledger.sqlite"
__all__ = ["JSONL_NAME", "LEDGER_NAME", "LOCK_NAME", "Ledger", "ScanState", "read_history", "read_records"]
#: how long a commit waits for another process's commit to finish
BUSY_TIMEOUT_S = 60.0
_MIGRATED = "migrated-from-jsonl"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS scans (
    rel TEXT PRIMARY KEY,   -- the scan's POSIX path relative to IN
    event TEXT NOT NULL,    -- of its newest record: begin, done or error
    record TEXT NOT NULL    -- its newest record, as JSON
) WITHOUT ROWID;
-- the scans at work (or left at work by a crash): what start-up settles, without reading every row
CREATE INDEX IF NOT EXISTS scans_begun ON scans (rel) WHERE event = 'begin';
-- how many scans are in each state, kept by the triggers (a count over a million rows takes a second)
CREATE TABLE IF NOT EXISTS tallies (event TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO tallies VALUES ('begin', 0), ('done', 0), ('error', 0);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    time_ns INTEGER NOT NULL,
    rel TEXT NOT NULL,
    event TEXT NOT NULL,
    recovered INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_TRIGGERS = [
    """CREATE TRIGGER IF NOT EXISTS scans_new AFTER INSERT ON scans BEGIN
        UPDATE tallies SET n = n + 1 WHERE event = NEW.event;
    END""",
    """CREATE TRIGGER IF NOT EXISTS scans_moved AFTER UPDATE OF event ON scans WHEN OLD.event <> NEW.event BEGIN
        UPDATE tallies SET n = n - 1 WHERE event = OLD.event;
        UPDATE tallies SET n = n + 1 WHERE event = NEW.event;
    END""",
]
#: around the one-time migration, in its transaction: the tallies counted once at the end, not per row
_BULK = (
    ["DROP TRIGGER IF EXISTS scans_new", "DROP TRIGGER IF EXISTS scans_moved"],
    ["UPDATE tallies SET n = (SELECT COUNT(*) FROM scans WHERE scans.event = tallies.event)", *_TRIGGERS],
)


@dataclass(frozen=True)
class ScanState:
    """One scan's content as read, and the job that processes it: the fields of its begin and done records."""

    rel: str  #: its POSIX path relative to IN
    size: int
    mtime_ns: int
    sha256: str
    sig: str  #: the job signature (:attr:`edge_runtime.job.settings.JobSpec.signature`)
    model: str  #: the first 16 hex digits of the model file's sha256
    frames: int


def _os_error(exc: sqlite3.Error, path: Path) -> OSError:
    """A failed write to the ledger as the OSError the callers handle (disk full stays ENOSPC)."""
    full = getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(exc)
    err = OSError(errno.ENOSPC if full else errno.EIO, f"ledger {path.name}: {exc}")
    err.strerror = "No space left on device (ledger)" if full else f"ledger {path.name}: {exc}"
    return err


def _connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
    if path.is_dir():
        raise SetupError(f"{path} is a folder, not edge-seg's ledger; remove it")
    uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        if not readonly:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # commits reach the kernel; sync() reaches the disk
            conn.executescript(_SCHEMA)
            for sql in _TRIGGERS:
                conn.execute(sql)
        else:
            conn.execute("SELECT 1 FROM scans LIMIT 1")
    except sqlite3.DatabaseError as exc:
        if getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
            raise SetupError(
                f"ledger {path} cannot be opened ({exc}); "
                "move it away to start a new ledger (all scans are then redone)"
            ) from None
        raise SetupError(f"cannot open the ledger {path}: {exc}") from None
    return conn


class Ledger:
    """Thread-safe access to ``OUT/.edge-seg/ledger.sqlite``, shared with other processes on the same OUT."""

    def __init__(self, out_dir: Path, part: Part | None = None) -> None:
        """Open (or create) OUT's ledger; ``part``: the share of the scans this process does (None: all)."""
        self.out_dir = out_dir
        self.dir = out_dir / STATE_DIR
        if self.dir.exists() and not self.dir.is_dir():
            raise SetupError(f"{self.dir} is a file; edge-seg keeps its state in a folder of that name: move it away")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SetupError(f"cannot create {self.dir}: {exc.strerror or exc}") from None
        self.path = self.dir / LEDGER_NAME
        self._mutex = threading.RLock()
        self._depth = 0  # nested transactions (batch() around done())
        self._dirty = False
        self._sync_failing = False
        self._closed = False
        self.recovered = 0
        self.migrated = 0
        self._lock = FolderLock(self.dir)
        try:
            self.session = Session(self.dir, "all" if part is None else f"{part.index}/{part.count}")
        except BaseException:
            self._lock.release()
            raise
        try:
            self._conn = _connect(self.path)
            self._settle()
        except BaseException:
            self.session.end()
            self._lock.release()
            raise

    # -- start-up --------------------------------------------------------------------------------
    def _settle(self) -> None:
        """Alone: move an old ledger in and clear what killed writers left. Always: settle the dead's scans."""
        alone = self._lock.exclusive
        if alone:
            try:
                self.migrated = migrate_jsonl(self.dir, self._conn, self._store, _MIGRATED, _BULK)
            except sqlite3.Error as exc:
                raise SetupError(f"cannot move {self.dir / JSONL_NAME} into {self.path}: {exc}") from None
            except OSError as exc:
                raise SetupError(f"cannot read {self.dir / JSONL_NAME}: {exc.strerror or exc}") from None
        elif (self.dir / JSONL_NAME).is_file():
            log.warning("ledger %s is not read while another edge-seg runs on this folder", self.dir / JSONL_NAME)
        try:
            self.recovered = self._recover(alone)
        except OSError as exc:
            raise SetupError(
                f"cannot settle the scans a killed run left in {self.path}: {exc.strerror or exc}"
            ) from None
        if alone:
            self.session.sweep()
            sweep_temp_files(self.out_dir)
            self._lock.share()

    def _recover(self, alone: bool) -> int:
        """Settle scans left at ``begin`` by sessions that are gone: done if every output made it, else redo."""
        with self._mutex:
            rows = self._conn.execute("SELECT record FROM scans WHERE event = 'begin'").fetchall()
        recovered = 0
        for (text,) in rows:
            rec = json.loads(text)
            owner = rec.get("owner")
            if (owner is None and not alone) or (owner is not None and self.session.alive(owner)):
                continue  # someone else's, at work now (or written by an older version: settled when alone)
            outs = [self.out_dir / o for o in rec.get("outputs", [])]
            # 50 ms of slack: file systems stamp mtimes from a coarse clock that may lag time.time_ns().
            if outs and all(_mtime(o) >= rec["time_ns"] - 50_000_000 for o in outs):
                self._append({**rec, "event": "done", "recovered": True}, keep_time=True)
                recovered += 1
        if recovered:
            log.info("ledger: %d scan(s) interrupted after their outputs were written are recorded as done", recovered)
        return recovered

    # -- queries ---------------------------------------------------------------------------------
    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        with self._mutex:
            try:
                return self._conn.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise _os_error(exc, self.path) from None

    def get(self, rel: str) -> dict[str, Any] | None:
        """The scan's newest record, or None."""
        rows = self._query("SELECT record FROM scans WHERE rel = ?", (_key(rel),))
        return json.loads(rows[0][0]) if rows else None

    def rels(self, event: str) -> Iterator[str]:
        """The scans whose newest record is ``event``, in sorted order, read a thousand at a time."""
        last: str | bytes = ""
        while True:
            rows = self._query(
                "SELECT rel FROM scans WHERE event = ? AND rel > ? ORDER BY rel LIMIT 1000", (event, last)
            )
            if not rows:
                return
            yield from (_rel(r[0]) for r in rows)
            last = rows[-1][0]

    def done_with_prefix(self, prefix: str) -> list[tuple[str, dict[str, Any]]]:
        """The scans whose path starts with ``prefix`` and whose newest record is ``done``, with it.

        (Paths that are not UTF-8, kept as bytes, are not matched.)
        """
        if isinstance(_key(prefix), bytes):
            return []
        rows = self._query(
            "SELECT rel, record FROM scans WHERE rel >= ? AND rel < ? AND event = 'done'",
            (prefix, prefix + "\U0010ffff"),
        )
        return [(_rel(rel), json.loads(text)) for rel, text in rows]

    def done_rels(self) -> Iterator[str]:
        """The scans whose newest record is ``done``."""
        return self.rels("done")

    def outputs_exist(self, rec: dict[str, Any]) -> bool:
        return all((self.out_dir / o).exists() for o in rec.get("outputs", []))

    def up_to_date(self, rel: str, size: int, mtime_ns: int, signature: str) -> bool:
        """Done for this exact file state and job signature, with its outputs still on disk."""
        rec = self.get(rel)
        return (
            rec is not None
            and rec["event"] == "done"
            and rec["size"] == size
            and rec["mtime_ns"] == mtime_ns
            and rec["sig"] == signature
            and self.outputs_exist(rec)
        )

    def known_failure(self, rel: str, size: int, mtime_ns: int) -> bool:
        """Already recorded as failed in this exact file state (so it is not re-reported every rescan)."""
        rec = self.get(rel)
        return rec is not None and rec["event"] == "error" and rec["size"] == size and rec["mtime_ns"] == mtime_ns

    def counts(self) -> dict[str, int]:
        """How many scans are done and how many failed, as their newest records say."""
        rows = dict(self._query("SELECT event, n FROM tallies"))
        return {"done": rows.get("done", 0), "failed": rows.get("error", 0)}

    # -- updates ---------------------------------------------------------------------------------
    def begin(self, state: ScanState, outputs: list[str]) -> None:
        """The scan was read and its outputs are about to be written: these ones."""
        self._append({**asdict(state), "event": "begin", "outputs": outputs, "owner": self.session.id})

    def done(self, state: ScanState, outputs: list[str]) -> None:
        """The scan's outputs are complete (and their folders synced, where the job syncs)."""
        self._append({**asdict(state), "outputs": outputs, "event": "done"})

    def touched(self, rel: str, size: int, mtime_ns: int) -> list[str]:
        """The scan's file changed state but not content, which is done already: record it done as it is now.

        Returns the outputs of its done record.
        """
        rec = self.get(rel) or {}
        self._append({**rec, "rel": rel, "event": "done", "size": size, "mtime_ns": mtime_ns})
        return list(rec.get("outputs", []))

    def error(self, rel: str, size: int, mtime_ns: int, reason: str, kind: ErrorKind = ErrorKind.SCAN) -> None:
        """The scan could not be processed in this file state (size and mtime -1 when it is gone), for a
        person to read (``reason``) and whose fault (``kind``: what decides whether it is tried again)."""
        rec = {"rel": rel, "event": "error", "size": size, "mtime_ns": mtime_ns, "reason": reason, "kind": kind}
        self._append(rec)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """One transaction for the records written inside (other threads' records wait for it)."""
        with self._mutex:
            self._depth += 1
            try:
                if self._depth == 1:
                    self._exec("BEGIN IMMEDIATE")
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._conn.in_transaction:  # a failed write may have rolled it back
                    self._exec("COMMIT")

    def _put(self, rec: dict[str, Any]) -> None:
        """Store one record (inside a transaction)."""
        self._store([(rec, json.dumps(rec, sort_keys=True))])

    def _store(self, records: list[tuple[dict[str, Any], str]]) -> None:
        """Store records, each with its JSON text (inside a transaction)."""
        self._conn.executemany(
            "INSERT INTO scans (rel, event, record) VALUES (?, ?, ?) "
            "ON CONFLICT (rel) DO UPDATE SET event = excluded.event, record = excluded.record",
            [(_key(rec["rel"]), rec["event"], text) for rec, text in records],
        )
        self._conn.executemany(
            "INSERT INTO events (time_ns, rel, event, recovered) VALUES (?, ?, ?, ?)",
            [
                (rec.get("time_ns", 0), _key(rec["rel"]), rec["event"], int(bool(rec.get("recovered"))))
                for rec, _ in records
            ],
        )

    def _append(self, rec: dict[str, Any], keep_time: bool = False) -> None:
        now = time.time_ns()
        rec = {**rec, "time": timestamps.utc(now / 1e9)}
        if not keep_time or "time_ns" not in rec:
            rec["time_ns"] = now
        with self._mutex, self.batch():
            try:
                self._put(rec)
            except sqlite3.Error as exc:
                raise _os_error(exc, self.path) from None
            self._dirty = True

    def _exec(self, sql: str) -> None:
        try:
            self._conn.execute(sql)
        except sqlite3.Error as exc:
            raise _os_error(exc, self.path) from None

    def sync(self) -> bool:
        """Make the records committed so far survive a power cut: one fsync of the write-ahead log (what
        ``synchronous=FULL`` would do at every commit; SQLite's own checkpoints sync the database file).

        A failure (a full disk) is not raised: the records are committed, the next sync tries again,
        and :meth:`close` raises it if it lasts. Returns whether everything is on disk.
        """
        with self._mutex:
            if not self._dirty or self._closed:
                return True
            try:
                _fsync(self.path.with_name(self.path.name + "-wal"))
            except OSError as exc:  # close() raises it if it lasts, for the caller's one line
                if not self._sync_failing:
                    log.debug("cannot flush the ledger %s to disk: %s", self.path, exc.strerror or exc)
                self._sync_failing = True
                return False
            if self._sync_failing:
                log.info("ledger %s flushed to disk again", self.path)
            self._dirty = self._sync_failing = False
            return True

    def close(self) -> None:
        """Sync and let go of the folder. Raises OSError if the last records could not be flushed to
        disk (a full disk; they are committed, in the kernel): the caller says so in one line."""
        with self._mutex:
            if self._closed:
                return
            failed: OSError | None = None
            try:
                if self._dirty:
                    _fsync(self.path.with_name(self.path.name + "-wal"))
                self._conn.close()  # the last connection checkpoints the log into the database
            except OSError as exc:
                failed = exc
            except sqlite3.Error as exc:
                failed = _os_error(exc, self.path)
            finally:
                self._closed = True
                self.session.end()
                self._lock.release()
            if failed is not None:
                raise failed


def read_records(out_dir: Path) -> dict[str, dict[str, Any]]:
    """Every scan's newest record in OUT's ledger, read-only (for tools and tests; a run uses :class:`Ledger`)."""
    conn = _connect(out_dir / STATE_DIR / LEDGER_NAME, readonly=True)
    try:
        return {_rel(rel): json.loads(text) for rel, text in conn.execute("SELECT rel, record FROM scans")}
    finally:
        conn.close()


def read_history(out_dir: Path) -> list[dict[str, Any]]:
    """Every record OUT's ledger was ever given, oldest first: ``rel``, ``event``, ``time_ns``, ``recovered``."""
    conn = _connect(out_dir / STATE_DIR / LEDGER_NAME, readonly=True)
    try:
        rows = conn.execute("SELECT rel, event, time_ns, recovered FROM events ORDER BY id").fetchall()
    finally:
        conn.close()
    return [{"rel": _rel(r), "event": e, "time_ns": t, "recovered": bool(k)} for r, e, t, k in rows]


def _key(rel: str) -> str | bytes:
    """A path as the database keeps it: text, or its bytes for a name that is not UTF-8 (surrogate escapes)."""
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return rel.encode("utf-8", "surrogateescape")
    return rel


def _rel(key: str | bytes) -> str:
    return key.decode("utf-8", "surrogateescape") if isinstance(key, bytes) else key


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return  # no log: everything is in the database file, which a checkpoint synced
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return -1
