"""Recording what the workers did: the ledger's done and error records, error files, outcomes.

The workers (threads of this process, or Dask workers elsewhere) only write outputs
(:meth:`edge_runtime.job.processor.Processor.work`); the one process that holds the ledger records
their results here, batch by batch as they come back. A batch whose worker was lost is run again
somewhere else and comes back once, so nothing is recorded twice, and nothing is recorded before its
outputs are on disk.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from edge_runtime.errors import ScanError, one_line
from edge_runtime.files.durable import sweep_temp_files_of, unwritable, write_atomic
from edge_runtime.job.ledger import Ledger
from edge_runtime.job.outcome import Outcome, Status
from edge_runtime.job.plan import Planner, displaced_reason
from edge_runtime.job.processor import Result, ScanChanged, Unchanged, WriteFailed, Written
from edge_runtime.outputs.layout import error_path

log = logging.getLogger(__name__)


class Recorder:
    """Turns a batch's results into ledger records and outcomes, for the scans under ``in_dir``."""

    def __init__(
        self,
        ledger: Ledger,
        in_dir: Path,
        out_dir: Path,
        signature: str,
        fsync: bool = True,
        planner: Planner | None = None,
    ) -> None:
        self.ledger = ledger
        #: whose output-name reservations (taken on worker threads of this process) end once recorded
        self.planner = planner
        self.in_dir = in_dir
        self.out_dir = out_dir
        self.signature = signature
        self.fsync = fsync
        #: the outputs recorded done (POSIX paths under OUT), while :attr:`keep_outputs` (for :meth:`sweep_leftovers`)
        self.keep_outputs = False
        self.outputs: set[str] = set()
        self._mutex = threading.Lock()
        self._displaced: list[tuple[str, Outcome]] = []  # (by, scan done before that lost its outputs to it)

    def known(self, batch: Iterable[str | ScanError]) -> dict[str, str]:
        """For the scans of a batch done already with this signature (outputs still there): their sha256.

        A worker that reads the same bytes again writes nothing for them (a touched or copied-over file).
        """
        known = {}
        for rel in batch:
            if isinstance(rel, str):
                rec = self.ledger.get(rel)
                if rec and rec["event"] == "done" and rec["sig"] == self.signature and self.ledger.outputs_exist(rec):
                    known[rel] = rec["sha256"]
        return known

    def record(self, results: list[Result], defer: Callable[[str], bool] | None = None) -> Iterator[Outcome]:
        """Record one batch's results, in order, yielding each scan's outcome.

        ``defer(rel)``, when given and true for a scan that could not be read, turns its failure into a
        ``changed`` outcome with no error record (the watcher retries files modified a moment ago).
        """
        try:
            yield from self._record(results, defer)
        finally:
            if self.planner is not None:  # recorded or given up: the ledger speaks for them now
                for res in results:
                    self.planner.release(res.outcome.rel if isinstance(res, Written) else _rel(res))

    def _record(self, results: list[Result], defer: Callable[[str], bool] | None) -> Iterator[Outcome]:
        # A Dask worker's scans that took output names from scans done before: those lose them now.
        results = [self._take_names(r) if isinstance(r, Written) and r.displaced else r for r in results]
        # The batch's done records first, in one transaction (not held across the yields below: the
        # ledger's lock would keep the worker threads' begin records waiting on the caller).
        with self.ledger.batch():
            done = {i: self.record_done(res) for i, res in enumerate(results) if isinstance(res, Written)}
        # the scans this batch's scans took outputs from, unless they are in it (their own outcome says why)
        rels = {res.outcome.rel if isinstance(res, Written) else _rel(res) for res in results}
        with self._mutex:
            mine = [(by, lost) for by, lost in self._displaced if by in rels]
            self._displaced = [(by, lost) for by, lost in self._displaced if by not in rels]
        yield from (lost for _, lost in mine if lost.rel not in rels)
        for i, res in enumerate(results):
            if isinstance(res, Written):
                yield done[i]
            elif isinstance(res, Unchanged):
                outputs = self.ledger.touched(res.rel, res.size, res.mtime_ns)
                yield Outcome(res.rel, Status.SKIPPED, outputs, "content unchanged", res.timings)
            elif isinstance(res, ScanChanged) or (
                defer is not None and not isinstance(res, WriteFailed) and defer(res.path)
            ):
                yield Outcome(res.path, Status.CHANGED, [], res.reason)  # maybe still being written
            elif isinstance(res, WriteFailed) and res.problem is not None:
                yield _unwritten(res.path, res.problem, res.reason, res.filename)
            else:
                yield self.fail(res.path, res)

    def _take_names(self, written: Written) -> Result:
        """A scan written on a Dask worker that took output names from scans done before
        (:attr:`Written.displaced`): they are recorded as displaced, as :meth:`displace` does in one process
        before the writes. If OUT refuses that, the scan is not recorded done (it is done again later)."""
        rel = written.outcome.rel
        try:
            for other, shared in written.displaced:
                self.displace(other, rel, shared, written.outcome.outputs)
        except OSError as exc:
            return WriteFailed.of(rel, exc, f"cannot record the scan whose outputs it takes: {exc.strerror or exc}")
        return written

    def record_done(self, written: Written) -> Outcome:
        """A scan whose outputs are on disk (the worker synced their folders): its done record.

        :meth:`record` calls it inside :meth:`Ledger.batch`, one transaction for a batch's done records.
        """
        rel = written.outcome.rel
        try:
            self.ledger.done(written.state, written.outcome.outputs)
        except OSError as exc:
            return self._write_failure(rel, exc, f"cannot record its outputs: {exc.strerror or exc}")
        if self.keep_outputs:
            self.outputs.update(written.outcome.outputs)
        with contextlib.suppress(OSError):  # a stale error record; the next success removes it
            error_path(self.out_dir, rel).unlink(missing_ok=True)
        return written.outcome

    def _write_failure(self, rel: str, exc: OSError, reason: str) -> Outcome:
        """What the scan could not have written: a pause for OUT (nothing recorded), or the scan's error."""
        problem = unwritable(exc)
        if problem is None:
            return self.fail(rel, ScanError(rel, reason))
        return _unwritten(rel, problem, reason, os.fsdecode(exc.filename) if exc.filename else None, exc)

    def sweep_leftovers(self) -> int:
        """Remove what a worker lost in the middle of writing left: temporary files of the outputs recorded.

        Only once every batch came back (their scans were written again, by another worker).
        """
        outputs, self.outputs = self.outputs, set()
        return sweep_temp_files_of([self.out_dir / o for o in sorted(outputs)])

    def displace(self, rel: str, by: str, shared: str, keep: Iterable[str]) -> None:
        """Scan ``rel``, done before, loses its outputs to ``by``, named like the mask it shares (``shared``).

        Called on the worker that is about to write ``by``'s outputs (``keep``), before it writes any:
        ``rel`` gets its error record and the ledger's, then its outputs that ``by`` does not write again
        are removed (the other frames of a multi-frame scan, its report). An OSError (OUT full, say) is
        left to the caller, which then writes nothing for ``by`` either.
        """
        old = set((self.ledger.get(rel) or {}).get("outputs", [])) - set(keep)
        reason = displaced_reason(rel, by, shared)
        self._error_record(rel, reason)
        for out in sorted(old):
            with contextlib.suppress(FileNotFoundError):
                (self.out_dir / out).unlink()
        with self._mutex:  # its FAIL outcome comes with by's batch
            self._displaced.append((by, Outcome(rel, Status.FAILED, [], reason)))

    def _error_record(self, rel: str, reason: str) -> None:
        """The error file beside the scan's mask, then the ledger's record (OSError when OUT refuses them)."""
        size, mtime = _stat(self.in_dir / rel)
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        # one line a field, whatever the name holds; the review page takes the scan from the file's own path
        text = f"scan: {one_line(rel)}\nreason: {one_line(reason)}\ntime: {now}\nsize: {size} bytes\n"
        write_atomic(error_path(self.out_dir, rel), text, fsync=self.fsync)
        self.ledger.error(rel, size, mtime, reason)

    def fail(self, rel: str, exc: ScanError) -> Outcome:
        """Record a scan that could not be processed: error file beside its mask, ledger record."""
        try:
            self._error_record(rel, exc.reason)
        except OSError as err:
            if unwritable(err) is not None:  # recorded once OUT can be written again
                return self._write_failure(rel, err, f"cannot write its error record: {err.strerror or err}")
            log.error("cannot write the error record for %s: %s", rel, err)
            size, mtime = _stat(self.in_dir / rel)
            try:
                self.ledger.error(rel, size, mtime, exc.reason)
            except OSError as err2:
                return self._write_failure(rel, err2, f"cannot record its error: {err2.strerror or err2}")
        return Outcome(rel, Status.FAILED, [], exc.reason)


def _stat(path: Path) -> tuple[int, int]:
    """Size and mtime (ns) of a scan, or -1, -1 when it is gone."""
    try:
        st = os.stat(path)
    except OSError:
        return -1, -1
    return st.st_size, st.st_mtime_ns


def _rel(res: Unchanged | ScanError) -> str:
    return res.rel if isinstance(res, Unchanged) else res.path


def _unwritten(rel: str, problem: str, reason: str, filename: str | None, exc: OSError | None = None) -> Outcome:
    """A scan OUT could not take now (disk full, read-only, ...): nothing recorded, to be done again later."""
    detail = (f"{exc.strerror or exc}" if exc is not None else reason.rpartition(": ")[2]) + (
        f": {filename}" if filename else ""
    )
    facts = {"problem": problem, "path": filename}
    return Outcome(rel, Status.UNWRITTEN, [], f"{problem} ({detail})", facts=facts)
