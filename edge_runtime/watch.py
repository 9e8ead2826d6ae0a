"""``edge-seg --watch IN --out OUT``: the daemon that follows a folder of incoming scans.

What it promises (contract 6 of docs/DESIGN.md):

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

Memory stays flat: the queue holds at most one entry per distinct pending file (capped), the ledger
stays on disk (SQLite, read a row at a time), and the only state that grows is the planner's note of
the output names claimed since start. The folder itself is followed by
:class:`edge_runtime.job.sources.WatchedFolder`; this module is the loop around it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from types import FrameType

from edge_runtime._version import __version__
from edge_runtime.files.durable import write_atomic
from edge_runtime.job.assemble import Job, open_job
from edge_runtime.job.outcome import Outcome, Status, log_outcome, log_summary
from edge_runtime.job.settings import RunSettings
from edge_runtime.job.sources import WatchedFolder
from edge_runtime.memory import release_free_memory, settle_allocator
from edge_runtime.outputs.layout import STATE_DIR

log = logging.getLogger(__name__)

STATUS_NAME = "status.json"
STATUS_EVERY = 5.0  # seconds between status file rewrites
TRIM_EVERY = 10.0  # at most this often, freed memory goes back to the OS when the queue runs dry


class Daemon:
    """Processes the scans of a :class:`WatchedFolder` as they become complete, until stopped."""

    def __init__(self, job: Job, folder: WatchedFolder, rescan: float = 60.0) -> None:
        self.job = job
        self.folder = folder
        self.rescan_every = rescan
        self.stop_requested = threading.Event()
        self.started = time.time()
        self.done = 0
        self.failed = 0
        self.last_error: dict | None = None

    def request_stop(self) -> None:
        """Finish the scans in hand, then leave :meth:`run` (safe from a signal handler)."""
        self.stop_requested.set()
        self.folder.wake.set()

    # -- status ------------------------------------------------------------------------------------
    def write_status(self, state: str = "running") -> None:
        job = self.job
        info = job.spec.model
        status = {
            "state": state,
            "pid": os.getpid(),
            "version": __version__,
            "started": _iso(self.started),
            "updated": _iso(time.time()),
            "input": str(job.in_dir),
            "output": str(job.out_dir),
            "observer": self.folder.observer_kind,
            "model": {"name": info.name, "version": info.version, "path": str(info.path), "sha256": info.sha256},
            "thresholds": list(job.spec.thresholds),
            "outputs": list(job.spec.kinds),
            "done": self.done,
            "failed": self.failed,
            "queued": self.folder.queued(),
            "last_error": self.last_error,
            "ledger": job.ledger.counts(),
        }
        try:
            write_atomic(job.out_dir / STATE_DIR / STATUS_NAME, json.dumps(status, indent=2) + "\n", fsync=False)
        except OSError as exc:
            log.warning("cannot write the status file: %s", exc)

    # -- running -----------------------------------------------------------------------------------
    def _handle(self, outcome: Outcome) -> None:
        if outcome.status == Status.CHANGED:
            log.debug("wait %s: %s", outcome.rel, outcome.reason)
            self.folder.requeue(outcome.rel)
            return
        log_outcome(outcome)
        if outcome.status == Status.OK:
            self.done += 1
        elif outcome.status == Status.FAILED:
            self.failed += 1
            self.last_error = {"scan": outcome.rel, "reason": outcome.reason, "time": _iso(time.time())}

    def run(self) -> int:
        folder, job = self.folder, self.job
        planner, scheduler = job.planner, job.scheduler
        observer = folder.start_observer()
        log.info(
            "watching %s (%s); masks go to %s; settle %g s, rescan every %g s",
            folder.root,
            folder.observer_kind,
            job.out_dir,
            folder.settle,
            self.rescan_every,
        )
        queued = folder.rescan()
        if queued:
            log.info("%d scan(s) without up-to-date masks found at start", queued)
        last_rescan = last_status = time.monotonic()
        status_dirty = worked = False
        last_trim = 0.0
        self.write_status()
        batch = scheduler.batch_size * scheduler.workers  # a burst keeps every worker busy
        try:
            while not self.stop_requested.is_set():
                try:
                    ready, fresh, wait = folder.take_ready(limit=batch)
                    todo = [r for r in ready if planner.needs_work(r, retry_failed=False)]
                    if todo:
                        for outcome in scheduler.process(todo, defer=fresh.__contains__):
                            self._handle(outcome)
                    now = time.monotonic()
                    if folder.rescan_now.is_set() or now - last_rescan >= self.rescan_every:
                        folder.rescan_now.clear()
                        last_rescan = now
                        folder.rescan()
                    if not observer.is_alive():
                        log.error("the file-system observer stopped; restarting it")
                        observer = folder.start_observer()
                        folder.request_rescan()
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
                        folder.wake.wait(min(wait, 1.0) if status_dirty else wait)
                        folder.wake.clear()
                except Exception:  # the daemon must not die of one bad scan or a passing I/O error
                    log.exception("unexpected error in the watch loop; continuing")
                    self.stop_requested.wait(1.0)
        finally:
            observer.stop()
            observer.join(timeout=5)
            job.ledger.sync()
            self.write_status("stopped")
        log_summary(f"stopped: {self.done} segmented, {self.failed} failed since start")
        return 0


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))


def run_watch(settings: RunSettings) -> int:
    """Entry point for ``edge-seg --watch``."""
    from edge_runtime.errors import SetupError

    if settings.run.force:
        raise SetupError("--force is for one-shot runs; to redo everything, stop the daemon and run once with --force")
    settle_allocator()  # before the worker threads exist: RSS falls back after bursts (edge_runtime.memory)
    job = open_job(settings.in_dir, settings.out_dir, settings.job, settings.run, daemon=True)
    watch = settings.watch
    folder = WatchedFolder(
        job.in_dir, lambda rel: job.planner.needs_work(rel, retry_failed=False), watch.settle, watch.polling
    )
    daemon = Daemon(job, folder, rescan=watch.rescan)

    def stop(signum: int, _frame: FrameType | None) -> None:
        log_summary(f"{signal.Signals(signum).name} received: finishing the scans in hand, then stopping")
        daemon.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        return daemon.run()
    finally:
        job.close()
