"""``edge-seg --watch IN --out OUT``: the daemon that follows a folder of incoming scans.

What it promises (DESIGN.md, watch section):

* At start, every scan under IN without an up-to-date output is processed; then new arrivals are
  followed (subfolders too), and a periodic rescan catches anything the events missed.
* A scan is read only when complete: a close-after-write or a rename into place (rsync, scp, many
  scanners write ``.name.XXXX`` or ``name.tmp`` and rename) makes it ready at once; otherwise its size
  and mtime must stay unchanged for ``--settle`` seconds. Hidden and temporary names are never read.
  A file taken at once that turns out unreadable is not yet an error: it is retried once settled.
* The ledger under ``OUT/.edge-seg/`` makes restarts (also after ``kill -9``) neither lose nor repeat
  work; a changed scan or a new model is processed again.
* An unreadable scan gets an error record and one log line; the daemon goes on.
* SIGINT/SIGTERM: the scans in hand are finished, the ledger is flushed, exit code 0.
* ``OUT/.edge-seg/status.json`` is rewritten every few seconds: alive, start time, model, counts,
  queue length, last error.

Memory stays flat: the queue holds at most one entry per distinct pending file (capped), and the
only state that grows is the ledger's one record per scan.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from edge_runtime._version import __version__
from edge_runtime.layout import STATE_DIR, inside, is_candidate, iter_scans
from edge_runtime.ledger import Ledger
from edge_runtime.memory import release_free_memory, settle_allocator
from edge_runtime.pipeline import Outcome, Processor, log_outcome
from edge_runtime.scanio import write_atomic

log = logging.getLogger("edge_seg")

STATUS_NAME = "status.json"
STATUS_EVERY = 5.0  # seconds between status file rewrites
TRIM_EVERY = 10.0  # at most this often, freed memory goes back to the OS when the queue runs dry
MAX_PENDING = 100_000  # distinct files waiting; beyond it new events are dropped and left to the rescan


@dataclass
class _Pending:
    size: int
    mtime_ns: int
    changed_at: float  # monotonic time the size/mtime last changed (as far as we saw)
    ready: bool  # a close-after-write or rename into place said it is complete


class _Events(FileSystemEventHandler):
    """Turns watchdog events into queue entries; runs on the observer's thread."""

    def __init__(self, watcher: Watcher) -> None:
        self.w = watcher

    def on_created(self, event: FileSystemEvent) -> None:
        if event.is_directory:  # a folder moved or copied in: its files may predate our watch on it
            self.w.request_rescan()
        else:
            self.w.note(event.src_path, ready=False)

    def on_modified(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self.w.note(event.src_path, ready=False)

    def on_closed(self, event: FileSystemEvent) -> None:  # inotify IN_CLOSE_WRITE
        if not event.is_directory:
            self.w.note(event.src_path, ready=True)

    def on_moved(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            self.w.request_rescan()
        else:
            self.w.forget(event.src_path)
            self.w.note(event.dest_path, ready=True)

    def on_deleted(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self.w.forget(event.src_path)


class Watcher:
    """Follows ``processor.in_dir`` and processes scans as they become complete."""

    def __init__(
        self,
        processor: Processor,
        ledger: Ledger,
        settle: float = 2.0,
        polling: float | None = None,
        rescan: float = 60.0,
    ) -> None:
        self.p = processor
        self.ledger = ledger
        self.settle = settle
        self.polling = polling
        self.rescan_every = rescan
        self.root = processor.in_dir
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._rescan_now = threading.Event()
        self._warned: set[str] = set()
        self._overflow_warned = False
        self.stop_requested = threading.Event()
        self.started = time.time()
        self.done = 0
        self.failed = 0
        self.last_error: dict | None = None
        self.observer_kind = ""

    # -- queue -------------------------------------------------------------------------------------
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
        self._wake.set()

    def forget(self, path: str | bytes) -> None:
        rel = self._rel(path)
        if rel is not None:
            with self._lock:
                self._pending.pop(rel, None)

    def request_stop(self) -> None:
        """Finish the scans in hand, then leave :meth:`run` (safe from a signal handler)."""
        self.stop_requested.set()
        self._wake.set()

    def request_rescan(self) -> None:
        self._rescan_now.set()
        self._wake.set()

    def queued(self) -> int:
        with self._lock:
            return len(self._pending)

    def _take_ready(self, limit: int) -> tuple[list[str], set[str], float]:
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

    def _requeue(self, rel: str) -> None:
        """Put a scan back to wait for the settle time (it was modified while or just before reading)."""
        try:
            st = os.stat(self.root / rel)
        except OSError:
            return
        with self._lock:
            self._pending[rel] = _Pending(st.st_size, st.st_mtime_ns, time.monotonic(), False)

    # -- scanning ----------------------------------------------------------------------------------
    def rescan(self) -> int:
        """Queue every scan under IN that needs work; returns how many were queued."""
        if not self.root.is_dir():
            log.warning("input folder %s is not available; will look again", self.root)
            return 0
        n = 0
        for rel in iter_scans(self.root, warned=self._warned):
            with self._lock:
                if rel in self._pending:
                    continue
            if self.p.needs_work(rel, retry_failed=False):
                self.note(str(self.root / rel), ready=False)
                n += 1
        return n

    # -- status ------------------------------------------------------------------------------------
    def write_status(self, state: str = "running") -> None:
        info = self.p.segmenter.info
        status = {
            "state": state,
            "pid": os.getpid(),
            "version": __version__,
            "started": _iso(self.started),
            "updated": _iso(time.time()),
            "input": str(self.root),
            "output": str(self.p.out_dir),
            "observer": self.observer_kind,
            "model": {"name": info.name, "version": info.version, "path": str(info.path), "sha256": info.sha256},
            "thresholds": list(self.p.options.thresholds),
            "outputs": ["masks", *(e.name + "s" for e in self.p.options.extras)],
            "done": self.done,
            "failed": self.failed,
            "queued": self.queued(),
            "last_error": self.last_error,
            "ledger": self.ledger.counts(),
        }
        try:
            import json

            write_atomic(self.p.out_dir / STATE_DIR / STATUS_NAME, json.dumps(status, indent=2) + "\n", fsync=False)
        except OSError as exc:
            log.warning("cannot write the status file: %s", exc)

    # -- running -----------------------------------------------------------------------------------
    def _start_observer(self):
        obs = PollingObserver(timeout=self.polling) if self.polling is not None else Observer()
        obs.schedule(_Events(self), str(self.root), recursive=True)
        try:
            obs.start()
        except OSError as exc:  # e.g. the inotify watch limit
            if self.polling is not None:
                raise
            log.warning("file-system events unavailable (%s); polling every 2 s instead", exc)
            self.polling = 2.0
            return self._start_observer()
        self.observer_kind = f"polling every {self.polling:g} s" if self.polling is not None else type(obs).__name__
        return obs

    def _handle(self, outcome: Outcome) -> None:
        if outcome.status == "changed":
            log.debug("wait %s: %s", outcome.rel, outcome.reason)
            self._requeue(outcome.rel)
            return
        log_outcome(outcome)
        if outcome.status == "ok":
            self.done += 1
        elif outcome.status == "failed":
            self.failed += 1
            self.last_error = {"scan": outcome.rel, "reason": outcome.reason, "time": _iso(time.time())}

    def run(self) -> int:
        observer = self._start_observer()
        log.info(
            "watching %s (%s); masks go to %s; settle %g s, rescan every %g s",
            self.root,
            self.observer_kind,
            self.p.out_dir,
            self.settle,
            self.rescan_every,
        )
        queued = self.rescan()
        if queued:
            log.info("%d scan(s) without up-to-date masks found at start", queued)
        last_rescan = last_status = time.monotonic()
        status_dirty = worked = False
        last_trim = 0.0
        self.write_status()
        batch = max(1, self.p.options.batch_size) * self.p.worker_count()  # a burst keeps every worker busy
        try:
            while not self.stop_requested.is_set():
                try:
                    ready, fresh, wait = self._take_ready(limit=batch)
                    todo = [r for r in ready if self.p.needs_work(r, retry_failed=False)]
                    if todo:
                        for outcome in self.p.process(todo, defer=fresh.__contains__):
                            self._handle(outcome)
                    now = time.monotonic()
                    if self._rescan_now.is_set() or now - last_rescan >= self.rescan_every:
                        self._rescan_now.clear()
                        last_rescan = now
                        self.rescan()
                    if not observer.is_alive():
                        log.error("the file-system observer stopped; restarting it")
                        observer = self._start_observer()
                        self.request_rescan()
                    # Rewrite the status every few seconds as a heartbeat, and soon after any change.
                    status_dirty = status_dirty or bool(todo)
                    if now - last_status >= STATUS_EVERY or (status_dirty and now - last_status >= 1.0):
                        last_status, status_dirty = now, False
                        self.write_status()
                    if todo:
                        worked = True
                    if not ready:
                        if worked and now - last_trim >= TRIM_EVERY:  # idle again after work
                            worked, last_trim = False, now
                            release_free_memory()
                        self._wake.wait(min(wait, 1.0) if status_dirty else wait)
                        self._wake.clear()
                except Exception:  # the daemon must not die of one bad scan or a passing I/O error
                    log.exception("unexpected error in the watch loop; continuing")
                    self.stop_requested.wait(1.0)
        finally:
            observer.stop()
            observer.join(timeout=5)
            self.ledger.sync()
            self.write_status("stopped")
        log.info("stopped: %d segmented, %d failed since start", self.done, self.failed, extra={"plain": True})
        return 0


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))


def run_watch(args: argparse.Namespace) -> int:
    """Entry point for ``edge-seg --watch``."""
    from edge_runtime.errors import SetupError
    from edge_runtime.oneshot import open_job

    if args.settle < 0:
        raise SetupError("--settle must not be negative")
    if args.polling is not None and args.polling <= 0:
        raise SetupError("--polling interval must be positive")
    if args.force:
        raise SetupError("--force is for one-shot runs; to redo everything, stop the daemon and run once with --force")
    settle_allocator()  # before the worker threads exist: RSS falls back after bursts (edge_runtime.memory)
    processor, ledger = open_job(args, args.watch, args.out, daemon=True)
    watcher = Watcher(processor, ledger, settle=args.settle, polling=args.polling, rescan=args.rescan)

    def stop(signum: int, _frame) -> None:
        log.info(
            "%s received: finishing the scans in hand, then stopping",
            signal.Signals(signum).name,
            extra={"plain": True},
        )
        watcher.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        return watcher.run()
    finally:
        ledger.close()
