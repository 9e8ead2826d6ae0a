"""One batch of scans, from their files to recorded outputs.

:meth:`Processor.work` reads, hashes, decodes and preprocesses each scan of a batch, runs the model
once over all their frames, post-processes, has each output writer write its files atomically, fsyncs
the folders once and records the scans done in the ledger. It runs on whichever thread (or, later,
machine) the scheduler gives it; it never decides which scans need work (:mod:`edge_runtime.job.plan`)
nor how batches are spread (:mod:`edge_runtime.job.scheduler`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.core.segmenter import Segmenter
from edge_runtime.errors import ScanError
from edge_runtime.files.durable import sync_dirs, unwritable, write_atomic
from edge_runtime.files.scans import Scan, read_scan
from edge_runtime.job.ledger import Ledger, ScanState
from edge_runtime.job.outcome import Outcome, Status
from edge_runtime.job.plan import Planner
from edge_runtime.job.settings import JobSpec, RunOptions
from edge_runtime.outputs.base import OutputWriter, ScanResult
from edge_runtime.outputs.layout import error_path, relative

log = logging.getLogger(__name__)


class ScanChanged(ScanError):
    """The file changed while it was being read: it is still being written."""


@dataclass
class Loaded:
    """A scan read and preprocessed, on its way through inference to its outputs."""

    rel: str
    scan: Scan
    tensors: np.ndarray  # (frames, h, w, c)
    timings: dict[str, float]


@dataclass
class Written:
    """A scan whose outputs are written, waiting for :meth:`Processor.record_done`."""

    outcome: Outcome
    state: ScanState  #: what its ledger records say about it
    folders: list[Path]  #: where its outputs went, to fsync before it is recorded done


#: One scan's inference result: (frames, h, w) probability maps and (frames,) presence scores or None.
Prediction = tuple[np.ndarray, np.ndarray | None]

#: What :meth:`Processor.work` gives back for each scan of a batch: its outcome, or the error that kept
#: it from being read (which the scheduler turns into an error record or a ``changed`` outcome).
Result = Outcome | ScanError


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


class Processor:
    """Turns batches of scans under ``in_dir`` into outputs under ``out_dir``, recording each in ``ledger``."""

    def __init__(
        self,
        segmenter: Segmenter,
        spec: JobSpec,
        options: RunOptions,
        writers: list[OutputWriter],
        ledger: Ledger,
        in_dir: Path,
        out_dir: Path,
        planner: Planner | None = None,
    ) -> None:
        self.segmenter = segmenter
        self.spec = spec
        self.options = options
        self.writers = writers
        self.ledger = ledger
        self.in_dir = in_dir
        self.out_dir = out_dir
        self.signature = spec.signature
        #: reserves each scan's output names before they are written (none: no check, for tests and tools)
        self.planner = planner

    # -- stages -------------------------------------------------------------------------------------
    def load(self, rel: str) -> Loaded:
        """Read, hash, decode and preprocess one scan (thread-safe). Raises ScanError."""
        path = self.in_dir / rel
        t0 = time.perf_counter()
        try:
            scan = read_scan(path)
        except ScanError as exc:
            if not os.path.lexists(path):  # removed after it was listed: not a bad scan (the watcher drops it)
                raise ScanChanged(rel, "the file disappeared before it could be read") from None
            raise exc from None
        t1 = time.perf_counter()
        try:
            st = os.stat(path)
        except OSError:
            raise ScanChanged(rel, "the file disappeared while it was being read") from None
        if (st.st_size, st.st_mtime_ns) != (scan.size, scan.mtime_ns):
            raise ScanChanged(rel, "the file changed while it was being read (still being written?)")
        frames = [self.segmenter.preprocess(f) for f in scan.frames]
        tensors = frames[0][None] if len(frames) == 1 else np.stack(frames)  # infer() copies them into its batch
        return Loaded(rel, scan, tensors, {"read": (t1 - t0) * 1000.0, "preprocess": _ms(t1)})

    def infer(self, items: list[Loaded]) -> list[Prediction]:
        """Batched inference for several loaded scans: per scan, its (frames, h, w) maps and presence scores."""
        t0 = time.perf_counter()
        batch = items[0].tensors if len(items) == 1 else np.concatenate([it.tensors for it in items])
        bs = max(1, self.options.batch_size)
        chunks = [self.segmenter.run(batch[i : i + bs]) for i in range(0, len(batch), bs)]
        probs = chunks[0][0] if len(chunks) == 1 else np.concatenate([c[0] for c in chunks])
        presence = None if chunks[0][1] is None else np.concatenate([c[1] for c in chunks if c[1] is not None])
        per_frame = _ms(t0) / len(batch)
        out: list[Prediction] = []
        start = 0
        for it in items:
            n = len(it.tensors)
            out.append((probs[start : start + n], None if presence is None else presence[start : start + n]))
            it.timings["inference"] = per_frame * n
            start += n
        return out

    def finish(self, item: Loaded, prediction: Prediction) -> Outcome | Written:
        """Post-process and write the outputs atomically; :meth:`record_done` then records the scan as done.

        Returns a ``skipped`` :class:`Outcome` when the same content was already done with this signature.
        """
        rel, scan = item.rel, item.scan
        # The same bytes already done with this signature (the file was touched or copied over itself).
        if not self.options.force and self.ledger.done_with_content(rel, scan.sha256, self.signature):
            outputs = self.ledger.touched(rel, scan.size, scan.mtime_ns)
            return Outcome(rel, Status.SKIPPED, outputs, "content unchanged", item.timings)
        t0 = time.perf_counter()
        thresholds = self.spec.thresholds
        probs, presence = prediction
        scores: list[float | None] = [None] * len(probs) if presence is None else [float(q) for q in presence]
        segs = [
            self.segmenter.postprocess(p, f.shape[:2], thresholds, q)
            for p, q, f in zip(probs, scores, scan.frames, strict=True)
        ]
        item.timings["postprocess"] = _ms(t0)
        planned = [(writer, writer.paths(rel, scan)) for writer in self.writers]
        outputs = [relative(self.out_dir, p) for _, paths in planned for p in paths]
        if self.planner is not None:
            try:
                self.planner.reserve(rel, outputs)  # another scan's outputs of the same name: refused
            except ScanError as exc:
                return self.fail(rel, exc)
        state = ScanState(
            rel=rel,
            size=scan.size,
            mtime_ns=scan.mtime_ns,
            sha256=scan.sha256,
            sig=self.signature,
            model=self.spec.model.sha256[:16],
            frames=len(scan.frames),
        )
        self.ledger.begin(state, outputs)
        facts: dict[str, Any] = {}
        for writer, paths in planned:
            t1 = time.perf_counter()
            facts.update(writer.write(ScanResult(rel, scan, segs, paths, item.timings)) or {})
            item.timings[writer.stage] = _ms(t1)
        folders = [p.parent for _, paths in planned for p in paths]
        return Written(Outcome(rel, Status.OK, outputs, "", item.timings, facts), state, folders)

    def record_done(self, written: list[Written]) -> list[Outcome]:
        """Record scans whose outputs :meth:`finish` wrote as done, after one fsync of their folders.

        The renames must be on disk before the ledger says "done"; syncing the folders once for a
        whole batch rather than once per scan saves a folder fsync per scan (bench/README.md).
        """
        if self.options.fsync:
            sync_dirs([folder for w in written for folder in w.folders])
        outcomes = []
        with self.ledger.batch():  # one transaction for the batch's done records
            for w in written:
                try:
                    self.ledger.done(w.state, w.outcome.outputs)
                except OSError as exc:
                    reason = f"cannot record its outputs: {exc.strerror or exc}"
                    outcomes.append(self._write_failure(w.outcome.rel, exc, reason))
                    continue
                with contextlib.suppress(OSError):  # a stale error record; the next success removes it
                    error_path(self.out_dir, w.outcome.rel).unlink(missing_ok=True)
                outcomes.append(w.outcome)
        return outcomes

    def _write_failure(self, rel: str, exc: OSError, reason: str) -> Outcome:
        """An output the scan could not have written: a pause for OUT (nothing recorded), or the scan's error."""
        problem = unwritable(exc)
        if problem is None:
            return self.fail(rel, ScanError(rel, reason))
        detail = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
        facts = {"problem": problem, "path": os.fsdecode(exc.filename) if exc.filename else None}
        return Outcome(rel, Status.UNWRITTEN, [], f"{problem} ({detail})", facts=facts)

    def fail(self, rel: str, exc: ScanError) -> Outcome:
        """Record a scan that could not be processed: error file beside its mask, ledger record."""
        try:
            st = os.stat(self.in_dir / rel)
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            size, mtime = -1, -1
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        text = f"scan: {rel}\nreason: {exc.reason}\ntime: {now}\nsize: {size} bytes\n"
        try:
            write_atomic(error_path(self.out_dir, rel), text, fsync=self.options.fsync)
            self.ledger.error(rel, size, mtime, exc.reason)
        except OSError as err:
            if unwritable(err) is not None:  # recorded once OUT can be written again
                return self._write_failure(rel, err, f"cannot write its error record: {err.strerror or err}")
            log.error("cannot write the error record for %s: %s", rel, err)
            try:
                self.ledger.error(rel, size, mtime, exc.reason)
            except OSError as err2:
                return self._write_failure(rel, err2, f"cannot record its error: {err2.strerror or err2}")
        return Outcome(rel, Status.FAILED, [], exc.reason)

    # -- one batch ------------------------------------------------------------------------------------
    def _safe_load(self, rel: str) -> Loaded | ScanError:
        """load(), with any failure returned as a ScanError whose ``path`` is ``rel``."""
        try:
            return self.load(rel)
        except ScanError as exc:
            return type(exc)(rel, exc.reason)
        except Exception as exc:  # a bug or an OS oddity must not stop the other scans
            log.exception("unexpected error reading %s", rel)
            return ScanError(rel, f"unexpected error: {type(exc).__name__}: {exc}")

    def _safe_infer(self, items: list[Loaded]) -> list[Prediction | ScanError]:
        """infer(); if the batch fails (onnxruntime out of memory, say), each scan alone, and a scan that
        still fails gets a ScanError rather than taking its batch and the run down."""
        try:
            return list(self.infer(items))
        except Exception as exc:
            if len(items) == 1:
                log.debug("inference failed for %s", items[0].rel, exc_info=True)  # its FAIL line says why
                return [ScanError(items[0].rel, f"inference failed: {type(exc).__name__}: {exc}")]
            log.warning("inference failed for a batch of %d scans (%s); trying them one by one", len(items), exc)
            return [r for it in items for r in self._safe_infer([it])]

    def _safe_finish(self, item: Loaded, prediction: Prediction) -> Outcome | Written:
        try:
            return self.finish(item, prediction)
        except ScanError as exc:  # a writer found the scan unfit for its output (e.g. DICOM results)
            return self.fail(item.rel, ScanError(item.rel, exc.reason))
        except OSError as exc:
            return self._write_failure(item.rel, exc, f"cannot write its outputs: {exc.strerror or exc}")
        except Exception as exc:
            log.exception("unexpected error writing the outputs of %s", item.rel)
            return self.fail(item.rel, ScanError(item.rel, f"unexpected error: {type(exc).__name__}: {exc}"))

    def work(self, batch: list[str | ScanError]) -> list[Result]:
        """Load, infer, finish and record one batch of scans on the calling thread.

        Returns one entry per scan, in order: its :class:`Outcome`, or the :class:`ScanError` that kept
        it from being read (an entry that already is a ScanError -- its output names were taken -- is
        passed through).
        """
        got = [item if isinstance(item, ScanError) else self._safe_load(item) for item in batch]
        loaded = [g for g in got if isinstance(g, Loaded)]
        predictions = iter(self._safe_infer(loaded) if loaded else [])
        results: list[Outcome | Written | ScanError] = []
        for g in got:
            if not isinstance(g, Loaded):
                results.append(g)
                continue
            prediction = next(predictions)
            results.append(prediction if isinstance(prediction, ScanError) else self._safe_finish(g, prediction))
        written = [r for r in results if isinstance(r, Written)]
        try:
            recorded = iter(self.record_done(written))
            return [next(recorded) if isinstance(r, Written) else r for r in results]
        finally:
            if self.planner is not None:  # recorded or given up: the ledger speaks for them now
                for g in loaded:
                    self.planner.release(g.rel)
