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
stays on disk (SQLite, read a row at a time), and the only state that grows is the planner's note of
the output names claimed since start. The folder itself is followed by
:class:`edge_runtime.job.sources.WatchedFolder`; this module is the loop around it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edge_runtime._version import __version__
from edge_runtime.errors import ErrorKind
from edge_runtime.files.durable import probe_writable, rewrite_in_place, unwritable, write_atomic
from edge_runtime.job.assemble import Job, close_job, open_job
from edge_runtime.job.discovery import describe_skipped
from edge_runtime.job.outcome import Outcome, Status, log_outcome, log_summary
from edge_runtime.job.processor import WriteFailed
from edge_runtime.job.review import PageKeeper
from edge_runtime.job.settings import RunSettings
from edge_runtime.job.sources import WatchedFolder
from edge_runtime.memory import release_free_memory, settle_allocator
from edge_runtime.node import Node, open_node, prepare_inbox
from edge_runtime.outputs.layout import STATE_DIR
from edge_runtime.stopping import StopSignals

log = logging.getLogger(__name__)

STATUS_NAME = "status.json"
STATUS_EVERY = 5.0  # seconds between status file rewrites
TRIM_EVERY = 10.0  # at most this often, freed memory goes back to the OS when the queue runs dry
STATUS_BYTES = 4096  # the status file is padded to this size (one block), to be rewritable on a full disk
RETRY_FIRST = 5.0  # seconds before OUT is probed again after a write failed, doubling ...
RETRY_MAX = 60.0  # ... up to this
#: A scan OUT would not take this many times in a row, each after the probe said OUT takes writes
#: again, is the scan's own problem (a folder in the way, say): it gets an error record.
MAX_WRITE_TRIES = 3
ERROR_WAIT_FIRST = 1.0  # seconds the loop waits after an unexpected error, doubling up to RETRY_MAX


@dataclass
class Blocked:
    """OUT stopped taking writes: what the status file and the one log line say, and when to look again."""

    problem: str  #: ``"disk full"``, ``"read-only file system"``, ... (:func:`edge_runtime.files.durable.unwritable`)
    detail: str  #: the error, with the file it was about
    folder: Path  #: where the write failed, which the probe tries
    since: float  #: time.time() it began
    delay: float = RETRY_FIRST  #: seconds until the next probe, doubling up to RETRY_MAX
    next_try: float = 0.0  #: time.monotonic() of the next probe


class Daemon:
    """Processes the scans of a :class:`WatchedFolder` as they become complete, until stopped."""

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
        self.started = time.time()
        self.done = 0
        self.failed = 0
        self.last_error: dict | None = None
        self.blocked: Blocked | None = None
        self._write_tries: dict[str, int] = {}  # scans OUT would not take: how often in a row
        self._status_warned = False
        self._loop_error: str | None = None  # the last unexpected error, logged in full once
        self.stop_reason = ""

    def request_stop(self, reason: str = "stop requested") -> None:
        """Finish the scans in hand, then leave :meth:`run` (safe from a signal handler).

        ``reason`` (a signal's name) goes into the status file's ``exit``.
        """
        self.stop_reason = reason
        self.stop_requested.set()
        self.folder.wake.set()

    # -- status ------------------------------------------------------------------------------------
    def write_status(self, state: str = "running", exit_info: dict | None = None) -> None:
        """Rewrite ``OUT/.edge-seg/status.json``: the state, and a heartbeat a monitor can check (docs/OUTPUTS.md)."""
        job = self.job
        info = job.spec.model
        now = time.time()
        blocked = self.blocked
        status = {
            "state": "blocked" if state == "running" and blocked is not None else state,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "version": __version__,
            "started": _iso(self.started),
            "updated": _iso(now),
            "heartbeat": now,
            "heartbeat_every_s": STATUS_EVERY,
            "input": str(job.in_dir),
            "output": str(job.out_dir),
            "observer": self.folder.observer_kind,
            "model": {"name": info.name, "version": info.version, "path": str(info.path), "sha256": info.sha256},
            "thresholds": list(job.spec.thresholds),
            "outputs": list(job.spec.kinds),
            "done": self.done,
            "failed": self.failed,
            "queued": self.folder.queued(),
            "problem": None
            if blocked is None
            else {"what": blocked.problem, "detail": blocked.detail, "since": _iso(blocked.since)},
            "last_error": self.last_error,
            "ledger": job.ledger.counts(),
            "exit": exit_info,
            **self.node.status(),  # the DICOM listener and the outbox, when there are
        }
        text = json.dumps(status, indent=2)
        # Padded to a fixed size, so that on a full disk it can still be rewritten in its own blocks.
        data = (text + " " * max(0, STATUS_BYTES - len(text) - 1) + "\n").encode("utf-8")
        path = job.out_dir / STATE_DIR / STATUS_NAME
        try:
            try:
                write_atomic(path, data, fsync=False)
            except OSError as exc:
                if unwritable(exc) is None or not path.exists() or path.stat().st_size < len(data):
                    raise
                rewrite_in_place(path, data)
            self._status_warned = False
        except OSError as exc:
            if not self._status_warned:  # once, until it works again
                self._status_warned = True
                log.warning("cannot write the status file: %s", exc)

    # -- running -----------------------------------------------------------------------------------
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
            self.done += 1
        elif outcome.status == Status.FAILED:
            self.failed += 1
            self.last_error = {"scan": outcome.rel, "reason": outcome.reason, "time": _iso(time.time())}

    def _unwritten(self, outcome: Outcome) -> None:
        """OUT would not take a scan's outputs: keep the scan for later, stop taking new ones, say so once."""
        log_outcome(outcome)
        tries = self._write_tries.get(outcome.rel, 0) + 1
        if tries >= MAX_WRITE_TRIES:  # OUT takes other writes, but never this scan's: its own problem
            self._write_tries.pop(outcome.rel, None)
            error = WriteFailed(outcome.rel, f"cannot write its outputs: {outcome.reason}", kind=ErrorKind.WRITE)
            self._handle(self.job.scheduler.recorder.fail(outcome.rel, error))
            return
        self._write_tries[outcome.rel] = tries
        self.folder.requeue(outcome.rel)
        if self.blocked is None:
            problem = str(outcome.facts.get("problem", "cannot write"))
            failed_at = outcome.facts.get("path")
            folder = Path(failed_at).parent if failed_at else self.job.out_dir
            self.blocked = Blocked(problem, outcome.reason, folder, time.time())
            self.blocked.next_try = time.monotonic() + self.blocked.delay
            log.error(
                "cannot write to %s: %s; not taking new scans, and retrying (every %g s, then up to %g s)",
                self.job.out_dir,
                outcome.reason,
                RETRY_FIRST,
                RETRY_MAX,
            )
            self.write_status()

    def _probe(self) -> None:
        """While blocked: is OUT writable again? One log line when it is; nothing while it is not."""
        blocked = self.blocked
        if blocked is None or time.monotonic() < blocked.next_try:
            return
        if probe_writable(blocked.folder) is not None:
            blocked.delay = min(blocked.delay * 2, RETRY_MAX)
            blocked.next_try = time.monotonic() + blocked.delay
            return
        self.blocked = None
        log.warning(
            "%s can be written again after %.0f s (%s before); taking scans again, %d waiting",
            self.job.out_dir,
            time.time() - blocked.since,
            blocked.problem,
            self.folder.queued(),
        )
        self.folder.retry_now()
        self.write_status()

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
        if folder.skipped:
            log.info("not scans, left alone: %s (-v names them)", describe_skipped(folder.skipped))
        last_rescan = last_status = time.monotonic()
        status_dirty = worked = False
        last_trim = 0.0
        error_wait = ERROR_WAIT_FIRST
        self.write_status()
        batch = scheduler.batch_size * scheduler.workers  # a burst keeps every worker busy
        state, exit_info = "stopped", None
        try:
            while not self.stop_requested.is_set():
                try:
                    self._probe()
                    todo: list[str] = []
                    ready: list[str] = []
                    wait = 1.0
                    if self.blocked is None:  # while OUT takes no writes, scans wait in the queue
                        ready, fresh, wait = folder.take_ready(limit=batch)
                        todo = [r for r in ready if planner.needs_work(r, retry_failed=False)]
                        if todo:
                            for outcome in scheduler.process(todo, defer=fresh.__contains__):
                                self._handle(outcome)
                    now = time.monotonic()
                    if folder.missing and folder.root.is_dir():  # IN is back: look at once
                        folder.rescan_now.set()
                    if folder.rescan_now.is_set() or now - last_rescan >= self.rescan_every:
                        folder.rescan_now.clear()
                        last_rescan = now
                        folder.rescan()
                    if folder.reattach.is_set():  # IN was removed and made again
                        folder.reattach.clear()
                        observer.stop()
                        observer = folder.start_observer()
                    elif not observer.is_alive():
                        log.error("the file-system observer stopped; restarting it")
                        observer = folder.start_observer()
                        folder.request_rescan()
                    # Rewrite the status every few seconds as a heartbeat, and soon after any change.
                    status_dirty = status_dirty or bool(todo)
                    if now - last_status >= STATUS_EVERY or (status_dirty and now - last_status >= 1.0):
                        last_status, status_dirty = now, False
                        self.write_status()
                    if self.page is not None and self.blocked is None:  # (OUT takes no writes while blocked)
                        self.page.maybe_write()
                    if todo:
                        worked = True
                    if self.blocked is not None:
                        wait = max(0.05, min(self.blocked.next_try - now, STATUS_EVERY))
                    if not ready:
                        if worked and now - last_trim >= TRIM_EVERY:  # idle again after work
                            worked, last_trim = False, now
                            release_free_memory()
                        page_due = self.page.due_in() if self.page is not None else None
                        if status_dirty:
                            wait = min(wait, 1.0)
                        folder.wake.wait(wait if page_due is None else min(wait, page_due + 0.05))
                        folder.wake.clear()
                    self._loop_error, error_wait = None, ERROR_WAIT_FIRST
                except Exception as exc:  # the daemon must not die of one bad scan or a passing I/O error
                    what = f"{type(exc).__name__}: {exc}"
                    if what != self._loop_error:  # in full once; the same error again is one line at debug
                        self._loop_error = what
                        log.exception("unexpected error in the watch loop; continuing")
                    else:
                        log.debug("the same error again in the watch loop: %s", what)
                    self.stop_requested.wait(error_wait)
                    error_wait = min(error_wait * 2, RETRY_MAX)
        except BaseException as exc:
            state, exit_info = "crashed", {"error": f"{type(exc).__name__}: {exc}", "time": _iso(time.time())}
            raise
        finally:
            observer.stop()
            observer.join(timeout=5)
            try:
                job.ledger.sync()
            except OSError as exc:  # the records are in the kernel still; close_job says it if they stay there
                log.debug("cannot sync the ledger: %s", exc)
            finally:
                self.write_status(state, exit_info or {"time": _iso(time.time()), "reason": self.stop_reason})
            if self.page is not None and state != "crashed" and self.blocked is None:
                self.page.write(finished=True)
        changed = (
            f"; OUT's settings changed at start: {'; '.join(job.settings_changed)}" if job.settings_changed else ""
        )
        log_summary(f"stopped: {self.done} segmented, {self.failed} failed since start{changed}")
        return 0


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))


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
