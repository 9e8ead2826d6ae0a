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
* OUT not taking writes (disk full, read-only, permission, I/O error) is not the scans' fault: nothing
  is recorded against them; one log line says so, no new scans are taken, and OUT is probed with
  back-off (5 s doubling to 60 s); once it takes writes again, one log line, and the waiting scans go on.
* SIGTERM, SIGHUP (a closed SSH session) and SIGINT: a log line, the scans in hand are finished, the
  ledger is flushed, exit code 0.
* ``OUT/.edge-seg/status.json`` is rewritten every few seconds: state (``running``, ``blocked`` and its
  problem, ``stopped``, ``crashed``), pid and host, a heartbeat time, start time, model, counts, queue
  length, last error. After ``kill -9`` it still says ``running``: a monitor tells a dead daemon by a
  heartbeat older than a few ``heartbeat_every_s`` or a pid that is gone.

Memory stays flat: the queue holds at most one entry per distinct pending file (capped), the ledger
stays on disk (SQLite, read a row at a time), and who writes which output name is decided anew for
each burst of arrivals (:mod:`edge_runtime.outputs.naming`), so nothing grows with the scans seen.
The folder itself is followed by :class:`edge_runtime.job.sources.WatchedFolder`; this module is the
loop around it and its parts: the status file (:mod:`edge_runtime.status_file`), the back-off while
OUT takes no writes (:mod:`edge_runtime.blocked`), the review page (:class:`PageKeeper`).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from edge_runtime.blocked import RETRY_MAX, Backoff, Blocked
from edge_runtime.errors import ErrorKind
from edge_runtime.job.assemble import Job, close_job, open_job
from edge_runtime.job.discovery import describe_skipped
from edge_runtime.job.outcome import Outcome, Status, log_outcome, log_summary
from edge_runtime.job.processor import WriteFailed
from edge_runtime.job.review import PageKeeper
from edge_runtime.job.settings import RunSettings
from edge_runtime.job.sources import WatchedFolder
from edge_runtime.memory import release_free_memory, settle_allocator
from edge_runtime.node import Node, open_node, prepare_inbox
from edge_runtime.status_file import STATUS_BYTES, STATUS_EVERY, StatusFile, Tally
from edge_runtime.stopping import StopSignals
from edge_runtime.timestamps import local

if TYPE_CHECKING:
    from watchdog.observers.api import BaseObserver

__all__ = ["STATUS_BYTES", "Blocked", "Daemon", "run_watch"]

log = logging.getLogger(__name__)

TRIM_EVERY = 10.0  # at most this often, freed memory goes back to the OS when the queue runs dry
#: A scan OUT would not take this many times in a row, each after the probe said OUT takes writes
#: again, is the scan's own problem (a folder in the way, say): it gets an error record.
MAX_WRITE_TRIES = 3
ERROR_WAIT_FIRST = 1.0  # seconds the loop waits after an unexpected error, doubling up to RETRY_MAX


class Daemon:
    """Processes the scans of a :class:`WatchedFolder` as they become complete, until stopped.

    Its parts: the job (ledger, scheduler), the folder, the status file (:class:`StatusFile`), the
    back-off while OUT takes no writes (:class:`Backoff`), the review page (:class:`PageKeeper`) and
    the DICOM node; :meth:`run` is the loop that calls them.
    """

    def __init__(
        self,
        job: Job,
        folder: WatchedFolder,
        rescan: float = 60.0,
        node: Node | None = None,
        page: PageKeeper | None = None,
    ) -> None:
        self.job = job
        self.node = node or Node()
        self.folder = folder
        self.page = page  #: the review page (--report), rewritten every few seconds when something changed
        self.rescan_every = rescan
        self.stop_requested = threading.Event()
        self.tally = Tally()
        self.backoff = Backoff(job.out_dir)
        self.status = StatusFile(job, folder, self.node, self.tally)
        self.stop_reason = ""
        self._write_tries: dict[str, int] = {}  # scans OUT would not take: how often in a row
        self._loop_error: str | None = None  # the last unexpected error, logged in full once
        self._error_wait = ERROR_WAIT_FIRST
        self._observer: BaseObserver | None = None  # on IN while run() runs
        self._last_rescan = self._last_trim = 0.0
        self._worked = False  # scans were done since memory was last given back

    @property
    def blocked(self) -> Blocked | None:
        """OUT not taking writes, as the daemon last found (None: it takes them)."""
        return self.backoff.blocked

    @blocked.setter
    def blocked(self, value: Blocked | None) -> None:
        self.backoff.blocked = value

    def request_stop(self, reason: str = "stop requested") -> None:
        """Finish the scans in hand, then leave :meth:`run` (safe from a signal handler).

        ``reason`` (a signal's name) goes into the status file's ``exit``.
        """
        self.stop_reason = reason
        self.stop_requested.set()
        self.folder.wake.set()

    def write_status(self, state: str = "running", exit_info: dict | None = None) -> None:
        """Rewrite ``OUT/.edge-seg/status.json`` now (:class:`StatusFile`)."""
        self.status.write(self.backoff.blocked, state, exit_info)

    # -- the loop ----------------------------------------------------------------------------------
    def run(self) -> int:
        """Follow the folder until stopped; 0 (a crash raises, with the status file saying ``crashed``)."""
        self._start()
        state, exit_info = "stopped", None
        try:
            while not self.stop_requested.is_set():
                try:
                    self._turn()
                    self._loop_error, self._error_wait = None, ERROR_WAIT_FIRST
                except Exception as exc:  # the daemon must not die of one bad scan or a passing I/O error
                    self._survive(exc)
        except BaseException as exc:
            state, exit_info = "crashed", {"error": f"{type(exc).__name__}: {exc}", "time": local()}
            raise
        finally:
            self._finish(state, exit_info)
        changed = self.job.settings_changed
        since = f"; OUT's settings changed at start: {'; '.join(changed)}" if changed else ""
        log_summary(f"stopped: {self.tally.done} segmented, {self.tally.failed} failed since start{since}")
        return 0

    def _turn(self) -> None:
        """One pass: probe a blocked OUT, the ready scans through the job, the folder's upkeep, the status
        file and the review page; then, with nothing ready, sleep until something arrives or is due."""
        if self.backoff.probe(self.folder.queued()):
            self.folder.retry_now()
            self.write_status()
        ready, worked, wait = self._work()
        now = time.monotonic()
        self._keep_watching(now)
        self.status.dirty = self.status.dirty or worked  # rewritten soon after a change, else as a heartbeat
        self.status.keep(self.backoff.blocked, now)
        if self.page is not None and self.backoff.blocked is None:  # (OUT takes no writes while blocked)
            self.page.maybe_write()
        self._worked = self._worked or worked
        if not ready:
            self._idle(now, self.backoff.wait(now, STATUS_EVERY) or wait)

    def _work(self) -> tuple[list[str], bool, float]:
        """The scans ready now that need work, through the scheduler: (ready, any done, how long to wait)."""
        if self.backoff.blocked is not None:  # while OUT takes no writes, scans wait in the queue
            return [], False, 1.0
        scheduler = self.job.scheduler
        ready, fresh, wait = self.folder.take_ready(limit=scheduler.batch_size * scheduler.workers)
        todo = [r for r in ready if self.job.planner.needs_work(r, retry_failed=False)]
        self.job.planner.taking(todo)
        if todo:
            for outcome in scheduler.process(todo, defer=fresh.__contains__):
                self._handle(outcome)
        return ready, bool(todo), wait

    def _idle(self, now: float, wait: float) -> None:
        """Nothing ready: give freed memory back after work, then sleep until an arrival, the page or a probe."""
        if self._worked and now - self._last_trim >= TRIM_EVERY:  # idle again after work
            self._worked, self._last_trim = False, now
            release_free_memory()
        page_due = self.page.due_in() if self.page is not None else None
        if self.status.dirty:
            wait = min(wait, 1.0)
        self.folder.wake.wait(wait if page_due is None else min(wait, page_due + 0.05))
        self.folder.wake.clear()

    def _survive(self, exc: Exception) -> None:
        """An unexpected error in a pass: logged in full once (the same again, one debug line), then a back-off."""
        what = f"{type(exc).__name__}: {exc}"
        if what != self._loop_error:
            self._loop_error = what
            log.exception("unexpected error in the watch loop; continuing")
        else:
            log.debug("the same error again in the watch loop: %s", what)
        self.stop_requested.wait(self._error_wait)
        self._error_wait = min(self._error_wait * 2, RETRY_MAX)

    # -- the folder --------------------------------------------------------------------------------
    def _start(self) -> None:
        folder = self.folder
        self._observer = folder.start_observer()
        log.info(
            "watching %s (%s); masks go to %s; settle %g s, rescan every %g s",
            folder.root,
            folder.observer_kind,
            self.job.out_dir,
            folder.settle,
            self.rescan_every,
        )
        queued = folder.rescan()
        if queued:
            log.info("%d scan(s) without up-to-date masks found at start", queued)
        if folder.skipped:
            log.info("not scans, left alone: %s (-v names them)", describe_skipped(folder.skipped))
        self._last_rescan = time.monotonic()
        self.write_status()

    def _keep_watching(self, now: float) -> None:
        """Rescan when due or asked (IN back after it was gone), and keep an observer on IN."""
        folder = self.folder
        if folder.missing and folder.root.is_dir():  # IN is back: look at once
            folder.rescan_now.set()
        if folder.rescan_now.is_set() or now - self._last_rescan >= self.rescan_every:
            folder.rescan_now.clear()
            self._last_rescan = now
            folder.rescan()
        if folder.reattach.is_set():  # IN was removed and made again
            folder.reattach.clear()
            if self._observer is not None:
                self._observer.stop()
            self._observer = folder.start_observer()
        elif self._observer is None or not self._observer.is_alive():
            log.error("the file-system observer stopped; restarting it")
            self._observer = folder.start_observer()
            folder.request_rescan()

    def _finish(self, state: str, exit_info: dict | None) -> None:
        """Stop the observer, sync the ledger, say how the daemon ended, and write the page a last time."""
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
        try:
            self.job.ledger.sync()
        except OSError as exc:  # the records are in the kernel still; close_job says it if they stay there
            log.debug("cannot sync the ledger: %s", exc)
        finally:
            self.write_status(state, exit_info or {"time": local(), "reason": self.stop_reason})
        if self.page is not None and state != "crashed" and self.backoff.blocked is None:
            self.page.write(finished=True)

    # -- outcomes ----------------------------------------------------------------------------------
    def _handle(self, outcome: Outcome) -> None:
        if outcome.status == Status.CHANGED:
            log.debug("wait %s: %s", outcome.rel, outcome.reason)
            self.folder.requeue(outcome.rel)
            return
        if outcome.status == Status.UNWRITTEN:
            self._unwritten(outcome)
            return
        self._write_tries.pop(outcome.rel, None)
        log_outcome(outcome)
        self.node.on_outcome(outcome)
        if self.page is not None and outcome.status in (Status.OK, Status.FAILED):
            self.page.changed()
        if outcome.status == Status.OK:
            self.tally.done += 1
        elif outcome.status == Status.FAILED:
            self.tally.failed += 1
            self.tally.last_error = {"scan": outcome.rel, "reason": outcome.reason, "time": local()}

    def _unwritten(self, outcome: Outcome) -> None:
        """OUT would not take a scan's outputs: keep the scan for later, stop taking new ones, say so once."""
        log_outcome(outcome)
        tries = self._write_tries.get(outcome.rel, 0) + 1
        if tries >= MAX_WRITE_TRIES:  # OUT takes other writes, but never this scan's: its own problem
            self._write_tries.pop(outcome.rel, None)
            error = WriteFailed(outcome.rel, f"cannot write its outputs: {outcome.reason}", kind=ErrorKind.WRITE)
            self._handle(self.job.fail(error))
            return
        self._write_tries[outcome.rel] = tries
        self.folder.requeue(outcome.rel)
        if self.backoff.block(outcome):
            self.write_status()


def run_watch(settings: RunSettings) -> int:
    """Entry point for ``edge-seg --watch``."""
    from edge_runtime.errors import SetupError

    if settings.run.force:
        raise SetupError("--force is for one-shot runs; to redo everything, stop the daemon and run once with --force")
    settle_allocator()  # before the worker threads exist: RSS falls back after bursts (edge_runtime.memory)
    if settings.node.listen is not None:
        prepare_inbox(settings.in_dir)
    with StopSignals("finishing the scans in hand, then stopping") as stop:
        job = open_job(settings.in_dir, settings.out_dir, settings.job, settings.run, daemon=True)
        node: Node | None = None
        try:
            watch = settings.watch
            folder = WatchedFolder(
                job.in_dir, lambda rel: job.planner.needs_work(rel, retry_failed=False), watch.settle, watch.polling
            )
            node = open_node(job, settings.node, verbose=logging.getLogger().isEnabledFor(logging.DEBUG))
            page = PageKeeper(job, ["edge-seg", *settings.argv], watch=True) if "review" in job.spec.outputs else None
            daemon = Daemon(job, folder, rescan=watch.rescan, node=node, page=page)
            stop.on_stop = lambda: daemon.request_stop(stop.name)
            if stop.requested.is_set():  # a signal during start-up
                daemon.request_stop(stop.name)
            code = daemon.run()
        finally:
            if node is not None:
                node.close()
            closed = close_job(job)
        return code if closed else 1  # the unit file restarts it, to redo what it could not record
