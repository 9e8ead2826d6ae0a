"""Where scans come from: a folder listed once, or a folder followed as files arrive.

Every source hands the scheduler the same thing: paths of complete scans, relative to IN (POSIX
form). The DICOM listener (:mod:`edge_runtime.net`) writes instances into IN and lets
:class:`WatchedFolder` pick them up like any other arrival.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from edge_runtime.job.discovery import inside, is_candidate, iter_scans

log = logging.getLogger(__name__)

MAX_PENDING = 100_000  # distinct files waiting; beyond it new events are dropped and left to the rescan


def list_folder(in_dir: Path, skipped: Counter[str] | None = None) -> list[str]:
    """The one-shot source: every scan under ``in_dir``, listed once, sorted; ``skipped`` counts the rest."""
    return list(iter_scans(in_dir, skipped=skipped))


@dataclass
class _Pending:
    size: int
    mtime_ns: int
    changed_at: float  # monotonic time the size/mtime last changed (as far as we saw)
    ready: bool  # a close-after-write or rename into place said it is complete


class _Events(FileSystemEventHandler):
    """Turns watchdog events into queue entries; runs on the observer's thread."""

    def __init__(self, folder: WatchedFolder) -> None:
        self.f = folder

    def on_created(self, event: FileSystemEvent) -> None:
        if event.is_directory:  # a folder moved or copied in: its files may predate our watch on it
            self.f.request_rescan()
        else:
            self.f.note(event.src_path, ready=False)

    def on_modified(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self.f.note(event.src_path, ready=False)

    def on_closed(self, event: FileSystemEvent) -> None:  # inotify IN_CLOSE_WRITE
        if not event.is_directory:
            self.f.note(event.src_path, ready=True)

    def on_moved(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            self.f.request_rescan()
        else:
            self.f.forget(event.src_path)
            self.f.note(event.dest_path, ready=True)

    def on_deleted(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self.f.forget(event.src_path)


class WatchedFolder:
    """The daemon's source: scans under ``root`` as they become complete (contract 6 of docs/DESIGN.md).

    A scan is taken when a close-after-write or a rename into place says it is complete, or once its
    size and mtime have stayed unchanged for ``settle`` seconds. ``wanted(rel)`` says whether a scan
    found by a rescan needs work (the planner's answer).
    """

    def __init__(
        self, root: Path, wanted: Callable[[str], bool], settle: float = 2.0, polling: float | None = None
    ) -> None:
        self.root = root
        self.wanted = wanted
        self.settle = settle
        self.polling = polling
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self.wake = threading.Event()
        self.rescan_now = threading.Event()
        self._warned: set[str] = set()
        self._overflow_warned = False
        self.observer_kind = ""
        self.missing = False  #: IN was gone at the last rescan
        self.skipped: Counter[str] = Counter()  #: files the last rescan found that are not scans, by reason
        self.reattach = threading.Event()  #: IN came back: the observer must watch it anew

    # -- events ------------------------------------------------------------------------------------
    def _rel(self, path: str | bytes) -> str | None:
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        try:
            rel = Path(path).relative_to(self.root).as_posix()
        except ValueError:
            return None
        return rel if is_candidate(rel, root=self.root) else None

    def note(self, path: str | bytes, ready: bool) -> None:
        """Something happened to ``path``; queue it (``ready``: known complete now)."""
        rel = self._rel(path)
        if rel is None:
            return
        full = self.root / rel
        if full.is_symlink() and not inside(self.root, full):
            if rel not in self._warned:
                self._warned.add(rel)
                log.warning("SKIP %s: symbolic link leads outside the input folder", rel)
            return
        try:
            st = full.stat()
        except OSError:
            return
        now = time.monotonic()
        with self._lock:
            entry = self._pending.get(rel)
            if entry is None:
                if len(self._pending) >= MAX_PENDING:
                    if not self._overflow_warned:
                        self._overflow_warned = True
                        log.warning(
                            "more than %d scans waiting; newer ones will be picked up by the rescan", MAX_PENDING
                        )
                    return
                # A file last written longer ago than the settle time is complete already.
                age = time.time() - st.st_mtime_ns / 1e9
                changed_at = now - self.settle if age >= self.settle else now
                self._pending[rel] = _Pending(st.st_size, st.st_mtime_ns, changed_at, ready)
            else:
                if (st.st_size, st.st_mtime_ns) != (entry.size, entry.mtime_ns):
                    entry.size, entry.mtime_ns, entry.changed_at = st.st_size, st.st_mtime_ns, now
                    entry.ready = False
                entry.ready = entry.ready or ready
        self.wake.set()

    def forget(self, path: str | bytes) -> None:
        rel = self._rel(path)
        if rel is not None:
            with self._lock:
                self._pending.pop(rel, None)

    def request_rescan(self) -> None:
        self.rescan_now.set()
        self.wake.set()

    # -- the queue ---------------------------------------------------------------------------------
    def queued(self) -> int:
        with self._lock:
            return len(self._pending)

    def take_ready(self, limit: int) -> tuple[list[str], set[str], float]:
        """Pop up to ``limit`` complete scans, oldest first.

        Returns them, the subset taken on an event before their settle time was up, and the seconds
        until the next pending scan may settle. Only scans that are marked ready or whose settle time
        has passed are looked at (one ``stat`` each), so a long queue costs little per tick.
        """
        now = time.monotonic()
        ready: list[str] = []
        fresh: set[str] = set()
        wait = 1.0
        with self._lock:
            for rel, e in list(self._pending.items()):
                if len(ready) >= limit:
                    break
                settled = now - e.changed_at >= self.settle
                if not (e.ready or settled):
                    wait = min(wait, self.settle - (now - e.changed_at))
                    continue
                try:
                    st = os.stat(self.root / rel)
                except OSError:
                    del self._pending[rel]  # gone before we got to it
                    continue
                if (st.st_size, st.st_mtime_ns) != (e.size, e.mtime_ns):  # still changing: start over
                    e.size, e.mtime_ns, e.changed_at, e.ready = st.st_size, st.st_mtime_ns, now, False
                    wait = min(wait, self.settle)
                    continue
                del self._pending[rel]
                ready.append(rel)
                if not settled:
                    fresh.add(rel)
        return ready, fresh, max(0.05, wait)

    def requeue(self, rel: str) -> None:
        """Put a scan back to wait for the settle time (it was modified while or just before reading)."""
        try:
            st = os.stat(self.root / rel)
        except OSError:
            return
        with self._lock:
            self._pending[rel] = _Pending(st.st_size, st.st_mtime_ns, time.monotonic(), False)

    def retry_now(self) -> None:
        """Take every waiting scan at once, as if it had just been closed after writing (OUT is back)."""
        with self._lock:
            for entry in self._pending.values():
                entry.ready = True
        self.wake.set()

    def rescan(self) -> int:
        """Queue every scan under IN that needs work; returns how many were queued."""
        if not self.root.is_dir():
            if not self.missing:  # once, until it is back
                log.warning("input folder %s is not available; will look again", self.root)
            self.missing = True
            return 0
        if self.missing:
            self.missing = False
            self.reattach.set()  # the observer's watches went with the old folder
            log.warning("input folder %s is available again", self.root)
        n = 0
        self.skipped = Counter()
        for rel in iter_scans(self.root, warned=self._warned, skipped=self.skipped):
            with self._lock:
                if rel in self._pending:
                    continue
            if self.wanted(rel):
                self.note(str(self.root / rel), ready=False)
                n += 1
        return n

    # -- the observer ------------------------------------------------------------------------------
    def start_observer(self) -> BaseObserver:
        """Start following the folder: file-system events, or polling (``polling`` seconds, or when
        events are unavailable)."""
        obs = PollingObserver(timeout=self.polling) if self.polling is not None else Observer()
        obs.schedule(_Events(self), str(self.root), recursive=True)
        try:
            obs.start()
        except OSError as exc:  # e.g. the inotify watch limit
            if self.polling is not None:
                raise
            log.warning("file-system events unavailable (%s); polling every 2 s instead", exc)
            self.polling = 2.0
            return self.start_observer()
        self.observer_kind = f"polling every {self.polling:g} s" if self.polling is not None else type(obs).__name__
        return obs
