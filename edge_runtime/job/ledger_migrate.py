"""The ledger's records: which are well-formed, what older ones mean, and the one-time move of a
JSON-lines ledger into SQLite.

Up to 0.3.0 the ledger was ``OUT/.edge-seg/ledger.jsonl``, one JSON record a line, the newest record of
a scan winning. :func:`migrate_jsonl` reads it line by line (memory stays flat however long it is)
into the SQLite ledger in one transaction, which also notes that it was done; only after that
transaction is committed is the old file renamed to ``ledger.jsonl.migrated`` (kept, for whoever wants
to look at it). A kill at any point leaves either the old file untouched and no trace in the
database (the transaction is rolled back), or the records in the database with the note: the next
start either migrates again or only renames.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_runtime.errors import ErrorKind

log = logging.getLogger(__name__)

JSONL_NAME = "ledger.jsonl"
MIGRATED_SUFFIX = ".migrated"

#: the fields each kind of record must have, with their types
_SCAN_FIELDS: dict[str, type | tuple[type, ...]] = {
    "rel": str,
    "size": int,
    "mtime_ns": int,
    "sha256": str,
    "sig": str,
    "outputs": list,
    "time_ns": int,
}
REQUIRED: dict[str, dict[str, type | tuple[type, ...]]] = {
    "begin": _SCAN_FIELDS,
    "done": _SCAN_FIELDS,
    "error": {"rel": str, "size": int, "mtime_ns": int, "reason": str},
}


#: How the reasons of error records that older versions wrote, with no ``kind``, begin when the scan failed
#: not for its own fault: OUT did not take its outputs or records (a full disk, say), or a DICOM result its
#: header could not give (now that result alone is refused and the scan is done).
_OLD_WRITE_FAILURES = (
    "cannot write its outputs",
    "cannot record its outputs",
    "cannot write its error record",
    "cannot make DICOM results",
)


def error_kind(rec: dict[str, Any]) -> ErrorKind:
    """Whose fault the failure an error record says is: its ``kind``, or for a record older versions wrote
    without one, what its reason says (the one place the reason's words decide anything)."""
    kind = str(rec.get("kind"))
    if kind in set(ErrorKind):
        return ErrorKind(kind)
    return ErrorKind.WRITE if str(rec.get("reason", "")).startswith(_OLD_WRITE_FAILURES) else ErrorKind.SCAN


def problem(rec: Any) -> str | None:
    """Why ``rec`` is not a record the ledger can use (None if it is one)."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    fields = REQUIRED.get(rec.get("event"))  # type: ignore[arg-type]
    if fields is None:
        return f"unknown event {rec.get('event')!r}"
    for name, kind in fields.items():
        if name not in rec:
            return f"no {name!r}"
        if not isinstance(rec[name], kind) or isinstance(rec[name], bool):
            return f"{name!r} is not a {getattr(kind, '__name__', kind)}"
    return None


def migrate_jsonl(
    state_dir: Path,
    conn: sqlite3.Connection,
    store: Callable[[list[tuple[dict[str, Any], str]]], None],
    done_key: str,
    around: tuple[list[str], list[str]] = ([], []),
) -> int:
    """Move ``state_dir/ledger.jsonl`` into the database behind ``conn``.

    ``store`` stores records, given with their JSON text, ten thousand at a time; the statements of
    ``around`` run in the same transaction before and after them.

    Only call this while alone in the folder. Returns how many scans it brought over (0 if there was
    no old ledger). ``done_key`` names the note in the ``meta`` table that marks the migration done.
    """
    path = state_dir / JSONL_NAME
    if not path.is_file():
        return 0
    if conn.execute("SELECT 1 FROM meta WHERE key = ?", (done_key,)).fetchone():
        _set_aside(path)  # migrated by a run that was killed before it could rename the old file
        return 0
    lines = bad = 0
    first_bad = ""
    chunk: list[tuple[dict[str, Any], str]] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        for sql in around[0]:
            conn.execute(sql)
        with open(path, encoding="utf-8", errors="replace") as fh:
            for lines, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    why: str | None = "not JSON (a write cut short by a crash?)"
                else:
                    why = problem(rec)
                if why is not None:
                    bad += 1
                    first_bad = first_bad or f"line {lines}: {why}"
                    continue
                chunk.append((rec, line.strip()))
                if len(chunk) >= 10_000:
                    store(chunk)
                    chunk = []
        store(chunk)
        for sql in around[1]:
            conn.execute(sql)
        scans = conn.execute("SELECT COUNT(*) FROM scans").fetchone()[0]
        conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (done_key, f"{lines} lines, {bad} skipped"))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    if bad:
        log.warning("ledger %s: skipped %d unusable line(s) (first: %s)", path, bad, first_bad)
    _set_aside(path)
    log.info("ledger: moved %d scan record(s) from %s into %s", scans, path.name, "ledger.sqlite")
    return int(scans)


def _set_aside(path: Path) -> None:
    try:
        os.replace(path, path.with_name(path.name + MIGRATED_SUFFIX))
    except OSError as exc:
        log.warning("cannot rename the migrated ledger %s (it is no longer read): %s", path, exc.strerror or exc)
