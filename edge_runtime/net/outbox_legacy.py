"""An outbox folder in the formats of edge-seg 0.6 and before, moved into its queue's database once.

Those versions kept one target's outbox as files: ``<key>.json`` per result waiting, ``sent.jsonl``
(one line per result the target took: ``path``, ``sop_instance_uid``, ``size``, ``mtime_ns``, ``sent``,
``to``) and ``refused/<key>.json`` per result set aside. :func:`read` reads them, the queue
(:class:`~edge_runtime.net.outbox_queue.OutboxQueue`) takes them into its table in one transaction,
then :func:`remove` removes the files. The last line of each result in ``sent.jsonl`` becomes its
sent version (so nothing sent is sent again); a waiting entry whose file is still as ``sent.jsonl``
recorded it (a kill between the two steps of those versions) is not queued; the others wait as they
did, attempts and back-off kept; a refused entry is set aside (and so queued again at this start, as
a restart always did). A torn line or an unreadable entry is skipped with a warning, as those
versions did. A kill before the files are removed takes them over again at the next start, to the
same rows.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SENT_LOG = "sent.jsonl"
REFUSED_DIR = "refused"
ENTRY_FIELDS = ("path", "queued", "attempts", "next_try", "last_error", "refusals")


def _entries(folder: Path) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for f in sorted(folder.glob("*.json")):
        try:
            entry = json.loads(f.read_text(encoding="utf-8"))
            row = {k: entry[k] for k in ENTRY_FIELDS if k in entry}
            if not isinstance(row.get("path"), str) or not isinstance(row.get("queued"), (int, float)):
                raise ValueError("no path or queued")
        except (OSError, ValueError, TypeError) as exc:
            log.warning("outbox: ignoring unreadable entry %s (%s)", f.name, exc)
            continue
        found[row["path"]] = row
    return found


def _sent(folder: Path) -> dict[str, dict[str, Any]]:
    sent: dict[str, dict[str, Any]] = {}
    try:
        lines = (folder / SENT_LOG).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return sent
    for line in lines:
        try:
            rec = json.loads(line)
            sent[rec["path"]] = {**rec, "size": int(rec["size"]), "mtime_ns": int(rec["mtime_ns"])}
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line (kill -9 mid-write): that result is sent again, which PACS tolerate
    return sent


@dataclass
class OldOutbox:
    """What an old-format outbox folder holds, as the rows its queue takes over."""

    files: list[Path]  #: the old files and folders, removed once the rows are committed
    sent: dict[str, dict[str, Any]]  #: path -> the last ``sent.jsonl`` line of it (``size``, ``mtime_ns`` as ints)
    aside: dict[str, dict[str, Any]]  #: path -> the entry's :data:`ENTRY_FIELDS`, from ``refused/``
    waiting: dict[str, dict[str, Any]]  #: path -> the entry's fields, those sent as they are now left out


def read(folder: Path, stat: Callable[[str], tuple[int, int] | None]) -> OldOutbox | None:
    """The old-format state of ``folder`` (None when it has none); ``stat(path)``: a result's size and
    mtime in OUT now, to leave out the waiting entries of results already sent as they are."""
    refused_dir = folder / REFUSED_DIR
    files = [*folder.glob("*.json"), folder / SENT_LOG, refused_dir]
    files = [p for p in files if p.exists()]
    if not files:
        return None
    sent = _sent(folder)
    aside = _entries(refused_dir) if refused_dir.is_dir() else {}
    waiting = {
        path: row
        for path, row in _entries(folder).items()
        if path not in sent or stat(path) != (sent[path]["size"], sent[path]["mtime_ns"])  # sent just before a kill
    }
    return OldOutbox(files, sent, aside, waiting)


def remove(old: OldOutbox) -> None:
    """Remove the old files once their rows are committed."""
    for p in old.files:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
