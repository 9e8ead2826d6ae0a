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
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from edge_runtime import timestamps
from edge_runtime.errors import ErrorKind, ScanError, one_line
from edge_runtime.files.durable import sweep_temp_files_of, unwritable, write_atomic
from edge_runtime.job.ledger import Ledger
from edge_runtime.job.outcome import Outcome, Status
from edge_runtime.job.processor import ScanChanged, Unchanged, WriteFailed, Written
from edge_runtime.outputs.layout import error_path
from edge_runtime.outputs.naming import displaced_reason

log = logging.getLogger(__name__)

#: The results the recorder takes: a worker's, less the :class:`~edge_runtime.job.processor.Unnamed`
#: ones (the scheduler has the naming decide those first).
Recorded = Written | Unchanged | ScanError


class Recorder:
    """Turns a batch's results into ledger records and outcomes, for the scans under ``in_dir``.

    ``waits_for_changes`` (a daemon): a scan modified while being read is ``changed``, which the
    watcher takes again once it settles; otherwise (a one-shot, which does not wait) it is ``failed``
    at once. Either way it gets no error record: the next run reads it again.
    """

    def __init__(
        self,
        ledger: Ledger,
        in_dir: Path,
        out_dir: Path,
        signature: str,
        fsync: bool = True,
        *,
        waits_for_changes: bool = False,
    ) -> None:
        self.ledger = ledger
        self.waits_for_changes = waits_for_changes
        self.in_dir = in_dir
        self.out_dir = out_dir
        self.signature = signature
        self.fsync = fsync
        #: the outputs recorded done (POSIX paths under OUT), while :attr:`keep_outputs` (for :meth:`sweep_leftovers`)
        self.keep_outputs = False
        self.outputs: set[str] = set()

    def known(self, batch: Iterable[str]) -> dict[str, str]:
        """For the scans of a batch done already with this signature (outputs still there): their sha256.

        A worker that reads the same bytes again writes nothing for them (a touched or copied-over file).
        """
        known = {}
        for rel in batch:
            rec = self.ledger.get(rel)
            if rec and rec["event"] == "done" and rec["sig"] == self.signature and self.ledger.outputs_exist(rec):
                known[rel] = rec["sha256"]
        return known

    def record(self, results: list[Recorded], defer: Callable[[str], bool] | None = None) -> Iterator[Outcome]:
        """Record one batch's results, in order, yielding each scan's outcome.

        ``defer(rel)``, when given and true for a scan that could not be read, turns its failure into a
        ``changed`` outcome with no error record (the watcher retries files modified a moment ago).
        """
        # The batch's done records first, in one transaction (not held across the yields below: the
        # ledger's lock would keep the worker threads' begin records waiting on the caller).
        with self.ledger.batch():
            done = {i: self.record_done(res) for i, res in enumerate(results) if isinstance(res, Written)}
        for i, res in enumerate(results):
            if isinstance(res, Written):
                yield done[i]
            elif isinstance(res, Unchanged):
                outputs = self.ledger.touched(res.rel, res.size, res.mtime_ns)
                yield Outcome(res.rel, Status.SKIPPED, outputs, "content unchanged", res.timings)
            elif isinstance(res, ScanChanged) or (
                defer is not None and not isinstance(res, WriteFailed) and defer(res.path)
            ):
                changed = Status.CHANGED if self.waits_for_changes else Status.FAILED
                yield Outcome(res.path, changed, [], res.reason)  # maybe still being written
            elif isinstance(res, WriteFailed) and res.problem is not None:
                yield _unwritten(res.path, res.problem, res.reason, res.filename)
            else:
                yield self.fail(res.path, res)

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
            return self.fail(rel, WriteFailed(rel, reason, kind=ErrorKind.WRITE))
        return _unwritten(rel, problem, reason, os.fsdecode(exc.filename) if exc.filename else None, exc)

    def sweep_leftovers(self) -> int:
        """Remove what a worker lost in the middle of writing left: temporary files of the outputs recorded.

        Only once every batch came back (their scans were written again, by another worker).
        """
        outputs, self.outputs = self.outputs, set()
        return sweep_temp_files_of([self.out_dir / o for o in sorted(outputs)])

    def displace(self, rel: str, by: str, shared: str, keep: Iterable[str]) -> Outcome:
        """Scan ``rel``, done before, loses its outputs to ``by``, named like the mask it shares (``shared``).

        Called before ``by``'s outputs (``keep``) are written: ``rel`` gets its error record and the
        ledger's, then its outputs that ``by`` does not write again are removed (the other frames of a
        multi-frame scan, its report). An OSError (OUT full, say) is left to the caller, which then
        writes nothing for ``by`` either (:meth:`unwritten`).
        """
        old = set((self.ledger.get(rel) or {}).get("outputs", [])) - set(keep)
        reason = displaced_reason(rel, by, shared)
        self._error_record(rel, reason)
        for out in sorted(old):
            with contextlib.suppress(FileNotFoundError):
                (self.out_dir / out).unlink()
        return Outcome(rel, Status.FAILED, [], reason)

    def unwritten(self, rel: str, exc: OSError, reason: str) -> Outcome:
        """Scan ``rel`` is not written because OUT refused a record it needed first (``exc``, said as ``reason``)."""
        return self._write_failure(rel, exc, f"{reason}: {exc.strerror or exc}")

    def _error_record(self, rel: str, reason: str, kind: ErrorKind = ErrorKind.SCAN) -> None:
        """The error file beside the scan's mask, then the ledger's record (OSError when OUT refuses them)."""
        size, mtime = _stat(self.in_dir / rel)
        now = timestamps.local()
        # one line a field, whatever the name holds; the review page takes the scan from the file's own path
        text = f"scan: {one_line(rel)}\nreason: {one_line(reason)}\ntime: {now}\nsize: {size} bytes\n"
        write_atomic(error_path(self.out_dir, rel), text, fsync=self.fsync)
        self.ledger.error(rel, size, mtime, reason, kind)

    def fail(self, rel: str, exc: ScanError) -> Outcome:
        """Record a scan that could not be processed: error file beside its mask, ledger record."""
        try:
            self._error_record(rel, exc.reason, exc.kind)
        except OSError as err:
            if unwritable(err) is not None:  # recorded once OUT can be written again
                return self._write_failure(rel, err, f"cannot write its error record: {err.strerror or err}")
            log.error("cannot write the error record for %s: %s", rel, err)
            size, mtime = _stat(self.in_dir / rel)
            try:
                self.ledger.error(rel, size, mtime, exc.reason, exc.kind)
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


def _unwritten(rel: str, problem: str, reason: str, filename: str | None, exc: OSError | None = None) -> Outcome:
    """A scan OUT could not take now (disk full, read-only, ...): nothing recorded, to be done again later."""
    detail = (f"{exc.strerror or exc}" if exc is not None else reason.rpartition(": ")[2]) + (
        f": {filename}" if filename else ""
    )
    facts = {"problem": problem, "path": filename}
    return Outcome(rel, Status.UNWRITTEN, [], f"{problem} ({detail})", facts=facts)
