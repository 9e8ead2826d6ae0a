"""The ledger under ``OUT/.edge-seg/``: what was done with which scan, by which model and settings.

An append-only JSON-lines file. For each scan (its path relative to IN) the newest record wins. The
record shapes are this module's (:class:`ScanState` and the methods that write them):

* ``begin`` -- written after the scan was read and before its outputs are, naming them
  (:meth:`Ledger.begin`);
* ``done``  -- its outputs are complete: the scan's size, mtime and sha256, the job signature, the
  outputs (:meth:`Ledger.done`; :meth:`Ledger.touched` when the same bytes were done already);
* ``error`` -- it could not be processed, and why (:meth:`Ledger.error`).

A scan is up to date when its newest record is ``done`` for the same size, mtime and signature and
the outputs are still there. After a crash (even ``kill -9``), a scan left at ``begin`` whose outputs
all exist and are newer than the ``begin`` record is recovered as done -- a ``done`` record marked
``"recovered": true`` is appended, and it is not processed again; otherwise it is processed again.
A torn last line is ignored. Only one process may hold the ledger.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from edge_runtime.errors import SetupError
from edge_runtime.files.durable import write_atomic
from edge_runtime.outputs.layout import STATE_DIR

log = logging.getLogger(__name__)

LEDGER_NAME = "ledger.jsonl"
LOCK_NAME = "lock"


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


class _Lock:
    """An exclusive, advisory lock on ``OUT/.edge-seg/lock``, released when the process ends."""

    def __init__(self, path: Path) -> None:
        self.fh = open(path, "a+")  # noqa: SIM115 - held for the life of the ledger
        try:
            if sys.platform == "win32":
                import msvcrt

                msvcrt.locking(self.fh.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._held(path)
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(f"{os.getpid()}\n")
        self.fh.flush()

    def _held(self, path: Path) -> None:
        self.fh.seek(0)
        pid = self.fh.read().strip() or "?"
        self.fh.close()
        raise SetupError(
            f"another edge-seg (pid {pid}) is already writing to this output folder ({path.parent.parent})"
        )

    def release(self) -> None:
        with contextlib.suppress(OSError):
            self.fh.close()


class Ledger:
    """Thread-safe access to ``OUT/.edge-seg/ledger.jsonl``."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.dir = out_dir / STATE_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / LEDGER_NAME
        self._mutex = threading.Lock()
        self._lock = _Lock(self.dir / LOCK_NAME)
        self.records: dict[str, dict[str, Any]] = {}
        self.recovered = 0
        lines = self._load()
        recovered = self._recover()
        compact = lines > 2 * max(len(self.records), 100)
        if compact:
            self._compact()
        self._fh: IO[str] = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        self._dirty = False
        if not compact:  # the file says so too, not only this process's memory (compaction wrote them)
            for rec in recovered:
                self._append(rec)

    # -- loading ---------------------------------------------------------------------------------
    def _load(self) -> int:
        if not self.path.exists():
            return 0
        n = bad = 0
        with open(self.path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                n += 1
                try:
                    rec = json.loads(line)
                    self.records[rec["rel"]] = rec
                except (json.JSONDecodeError, KeyError, TypeError):
                    bad += 1
        if bad:
            log.warning("ledger %s: ignored %d unreadable line(s) (a write cut short by a crash)", self.path, bad)
        return n

    def _recover(self) -> list[dict[str, Any]]:
        """Settle scans left at ``begin`` by a crash: done if every output made it, else redo.

        Returns the records of the scans recovered as done, for the caller to append.
        """
        recovered = []
        for rel, rec in list(self.records.items()):
            if rec["event"] != "begin":
                continue
            outs = [self.out_dir / o for o in rec.get("outputs", [])]
            # 50 ms of slack: file systems stamp mtimes from a coarse clock that may lag time.time_ns().
            if outs and all(_mtime(o) >= rec["time_ns"] - 50_000_000 for o in outs):
                self.records[rel] = {**rec, "event": "done", "recovered": True}
                recovered.append(self.records[rel])
            else:
                del self.records[rel]
        self.recovered = len(recovered)
        if recovered:
            log.info(
                "ledger: %d scan(s) interrupted after their outputs were written are recorded as done", len(recovered)
            )
        return recovered

    def _compact(self) -> None:
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.records.values())
        write_atomic(self.path, text)

    # -- queries ---------------------------------------------------------------------------------
    def get(self, rel: str) -> dict[str, Any] | None:
        with self._mutex:
            return self.records.get(rel)

    def done_rels(self) -> Iterator[str]:
        """The scans whose newest record is ``done``."""
        with self._mutex:
            done = [rel for rel, rec in self.records.items() if rec["event"] == "done"]
        yield from done

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

    def done_with_content(self, rel: str, sha256: str, signature: str) -> dict[str, Any] | None:
        """The done record if this content was already processed with this signature (e.g. a ``touch``)."""
        rec = self.get(rel)
        if rec and rec["event"] == "done" and rec["sha256"] == sha256 and rec["sig"] == signature:
            return rec if self.outputs_exist(rec) else None
        return None

    # -- updates ---------------------------------------------------------------------------------
    def begin(self, state: ScanState, outputs: list[str]) -> None:
        """The scan was read and its outputs are about to be written: these ones."""
        self._append({**asdict(state), "event": "begin", "outputs": outputs})

    def done(self, state: ScanState, outputs: list[str]) -> None:
        """The scan's outputs are complete (and their folders synced, where the job syncs)."""
        self._append({**asdict(state), "outputs": outputs, "event": "done"})

    def touched(self, rel: str, size: int, mtime_ns: int) -> list[str]:
        """The scan's file changed state but not content, which is done already: record it done as it is now.

        Returns the outputs of its done record.
        """
        rec = self.get(rel) or {}
        self._append({**rec, "size": size, "mtime_ns": mtime_ns, "time_ns": time.time_ns()})
        return list(rec.get("outputs", []))

    def error(self, rel: str, size: int, mtime_ns: int, reason: str) -> None:
        """The scan could not be processed in this file state (size and mtime -1 when it is gone)."""
        self._append({"rel": rel, "event": "error", "size": size, "mtime_ns": mtime_ns, "reason": reason})

    def _append(self, rec: dict[str, Any]) -> None:
        rec = {**rec, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        rec.setdefault("time_ns", time.time_ns())
        line = json.dumps(rec, sort_keys=True) + "\n"
        with self._mutex:
            self._fh.write(line)
            self._fh.flush()  # in the kernel now: survives kill -9; sync() makes it survive power loss
            self._dirty = True
            self.records[rec["rel"]] = rec

    def sync(self) -> None:
        with self._mutex:
            if self._dirty and not self._fh.closed:
                os.fsync(self._fh.fileno())
                self._dirty = False

    def close(self) -> None:
        self.sync()
        with self._mutex:
            self._fh.close()
        self._lock.release()

    def counts(self) -> dict[str, int]:
        with self._mutex:
            done = sum(r["event"] == "done" for r in self.records.values())
            failed = sum(r["event"] == "error" for r in self.records.values())
        return {"done": done, "failed": failed}


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return -1
