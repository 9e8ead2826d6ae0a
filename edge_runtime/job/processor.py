"""One batch of scans, from their files to written outputs: the part of a job that runs on a worker.

:meth:`Processor.work` reads, hashes, decodes and preprocesses each scan of a batch, runs the model
once over all their frames, post-processes, has each output writer write its files atomically and
fsyncs the folders once. It never touches the ledger's done and error records: it returns, per scan,
what happened (:data:`Result`), and the client records it (:mod:`edge_runtime.job.recorder`), so the
same code runs on a worker thread of this process or on a Dask worker on another machine
(:mod:`edge_runtime.job.cluster`). It never decides which scans need work (:mod:`edge_runtime.job.plan`),
how batches are spread (:mod:`edge_runtime.job.scheduler`) nor who keeps an output name: each scan
comes with its :class:`~edge_runtime.outputs.naming.Names`, and one whose outputs another scan keeps
is handed back :class:`Unnamed`, with nothing written (:mod:`edge_runtime.outputs.naming`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.core.segmenter import Segmentation, Segmenter
from edge_runtime.errors import ErrorKind, ScanError
from edge_runtime.files.durable import sync_dirs, unwritable
from edge_runtime.files.scans import Scan, read_scan
from edge_runtime.job.ledger import ScanState
from edge_runtime.job.outcome import Outcome, Status
from edge_runtime.job.settings import JobSpec, RunOptions
from edge_runtime.outputs.base import DICOM_MADE, INSTEAD, OutputWriter, ScanResult
from edge_runtime.outputs.layout import relative
from edge_runtime.outputs.naming import Names

log = logging.getLogger(__name__)


class ScanChanged(ScanError):
    """The file changed while it was being read: it is still being written."""


class SecondStageFailed(ScanError):
    """A two-stage model's second pass (run while post-processing) failed for this scan: it fails as inference does."""


class WriteFailed(ScanError):
    """The scan was read, but its outputs could not be written (never a file still being written).

    ``problem`` (:func:`edge_runtime.files.durable.unwritable`) when OUT cannot take writes now (disk
    full, read-only, ...): the client pauses the scan rather than blaming it; ``filename`` is the path.
    ``kind``: :attr:`ErrorKind.WRITE` when OUT refused the writes, :attr:`ErrorKind.SCAN` when a writer
    refused the scan.
    """

    def __init__(
        self,
        path: str | Path,
        reason: str,
        problem: str | None = None,
        filename: str | None = None,
        kind: ErrorKind = ErrorKind.SCAN,
    ):
        super().__init__(path, reason)
        self.problem = problem
        self.filename = filename
        self.kind = kind

    def __reduce__(self) -> tuple[type[WriteFailed], tuple[str, str, str | None, str | None, ErrorKind]]:  # type: ignore[override]
        return (type(self), (self.path, self.reason, self.problem, self.filename, self.kind))

    @classmethod
    def of(cls, rel: str, exc: OSError, reason: str) -> WriteFailed:
        """The failure ``exc`` of writing scan ``rel``'s outputs, said as ``reason``."""
        filename = os.fsdecode(exc.filename) if exc.filename else None
        return cls(rel, reason, unwritable(exc), filename, ErrorKind.WRITE)


@dataclass
class Loaded:
    """A scan read and preprocessed, on its way through inference to its outputs."""

    rel: str
    scan: Scan
    tensors: np.ndarray  # (frames, h, w, c)
    timings: dict[str, float]


@dataclass
class Written:
    """A scan whose outputs are written and their folders synced: the client records it done."""

    outcome: Outcome
    state: ScanState  #: what its ledger records say about it


@dataclass
class Unnamed:
    """A scan read and segmented whose outputs include names other scans keep (:attr:`Names.taken`):
    nothing was written; the client decides (:meth:`edge_runtime.outputs.naming.Naming.contest`)."""

    rel: str
    outputs: list[str]  #: what it would write, paths relative to OUT


@dataclass
class Unchanged:
    """A scan whose bytes were done already with this signature (it was touched or copied over itself):
    nothing was written, and the client records it done as it is now."""

    rel: str
    size: int
    mtime_ns: int
    timings: dict[str, float]


#: One scan's inference result: (frames, h, w) probability maps and (frames,) presence scores or None.
Prediction = tuple[np.ndarray, np.ndarray | None]

#: What :meth:`Processor.work` gives back for each scan of a batch: its outputs written, its content
#: unchanged, its outputs' names kept by other scans, or the error that kept it from being read or
#: written (which the client turns into an error record, or a ``changed`` outcome for a file still
#: being written).
Result = Written | Unchanged | Unnamed | ScanError

#: Called with a scan's state and its outputs just before they are written: the ledger's ``begin``.
BeginHook = Callable[[ScanState, list[str]], None]


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


class Processor:
    """Turns batches of scans under ``in_dir`` into outputs under ``out_dir``.

    ``begin``, when given, is called for each scan just before its outputs are written: in this process,
    the ledger's ``begin`` record, which lets a crash after the writes be recovered as done. A Dask worker
    has no ledger and passes None.
    """

    def __init__(
        self,
        segmenter: Segmenter,
        spec: JobSpec,
        options: RunOptions,
        writers: list[OutputWriter],
        in_dir: Path,
        out_dir: Path,
        begin: BeginHook | None = None,
    ) -> None:
        self.segmenter = segmenter
        self.spec = spec
        self.options = options
        self.writers = writers
        self.in_dir = in_dir
        self.out_dir = out_dir
        self.begin = begin
        self.signature = spec.signature

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

    def postprocess(self, items: list[Loaded], predictions: list[Prediction]) -> list[list[Segmentation]]:
        """Every frame of several scans to its masks; a second stage's crops of them all go in one run.

        Raises :class:`SecondStageFailed` (for the first scan) when that run fails.
        """
        t0 = time.perf_counter()
        frames = [f for it in items for f in it.scan.frames]
        probs: list[np.ndarray] = []
        scores: list[float | None] = []
        for maps, presence in predictions:
            probs += list(maps)
            scores += [None] * len(maps) if presence is None else [float(q) for q in presence]
        try:
            segs = self.segmenter.postprocess_batch(
                probs, [f.shape[:2] for f in frames], self.spec.thresholds, scores, frames
            )
        except Exception as exc:  # only the second stage's onnxruntime pass can fail here
            if self.segmenter.info.refine is None:
                raise
            rel = items[0].rel
            log.debug("second stage failed for %s", rel, exc_info=True)  # its FAIL line says why
            raise SecondStageFailed(rel, f"inference failed (second stage): {type(exc).__name__}: {exc}") from None
        per_frame = _ms(t0) / max(1, len(frames))
        out, start = [], 0
        for it in items:
            n = len(it.scan.frames)
            out.append(segs[start : start + n])
            it.timings["postprocess"] = per_frame * n
            start += n
        return out

    def finish(self, item: Loaded, segs: list[Segmentation], names: Names) -> Written | Unnamed:
        """Write a scan's outputs atomically (their folders are synced by :meth:`work`), unless another scan
        keeps one of their names (:class:`Unnamed`, nothing written)."""
        rel, scan = item.rel, item.scan
        planned = [(writer, writer.paths(rel, scan)) for writer in self.writers]
        outputs = [relative(self.out_dir, p) for _, paths in planned for p in paths]
        if names.contested(outputs):
            return Unnamed(rel, outputs)
        state = ScanState(
            rel=rel,
            size=scan.size,
            mtime_ns=scan.mtime_ns,
            sha256=scan.sha256,
            sig=self.signature,
            model=self.spec.model.sha256[:16],
            frames=len(scan.frames),
        )
        if self.begin is not None:
            self.begin(state, outputs)
        facts: dict[str, Any] = {}
        dicom = []
        for writer, paths in planned:
            t1 = time.perf_counter()
            got = dict(writer.write(ScanResult(rel, scan, segs, paths, item.timings)) or {})
            for named, instead in got.pop(INSTEAD, {}).items():  # an error record stands for a file not made
                outputs[outputs.index(relative(self.out_dir, Path(named)))] = relative(self.out_dir, Path(instead))
            dicom += got.pop(DICOM_MADE, [])
            facts.update(got)
            item.timings[writer.stage] = _ms(t1)
        return Written(Outcome(rel, Status.OK, outputs, "", item.timings, facts, dicom), state)

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

    def _safe_postprocess(
        self, items: list[Loaded], predictions: list[Prediction]
    ) -> list[list[Segmentation] | ScanError]:
        """postprocess(); if it fails for a batch (its second-stage run, say), each scan alone, so that only a
        scan that still fails gets an error and the others are written."""
        try:
            return list(self.postprocess(items, predictions))
        except Exception as exc:
            if len(items) > 1:
                return [r for it, p in zip(items, predictions, strict=True) for r in self._safe_postprocess([it], [p])]
            if isinstance(exc, SecondStageFailed):
                return [exc]
            log.exception("unexpected error post-processing %s", items[0].rel)  # a bug: its traceback
            return [ScanError(items[0].rel, f"unexpected error: {type(exc).__name__}: {exc}")]

    def _safe_finish(self, item: Loaded, segs: list[Segmentation], names: Names) -> Written | Unnamed | ScanError:
        try:
            return self.finish(item, segs, names)
        except ScanError as exc:  # a writer refused the scan
            return WriteFailed(item.rel, exc.reason)
        except OSError as exc:
            return WriteFailed.of(item.rel, exc, f"cannot write its outputs: {exc.strerror or exc}")
        except Exception as exc:
            log.exception("unexpected error writing the outputs of %s", item.rel)
            return WriteFailed(item.rel, f"unexpected error: {type(exc).__name__}: {exc}")

    def work(self, batch: list[Names | ScanError], known: Mapping[str, str] | None = None) -> list[Result]:
        """Load, infer and write one batch of scans on the calling thread, then sync the folders written.

        ``known`` maps a scan to the sha256 of the content already done with this job's signature; a
        scan read with those bytes again is :class:`Unchanged` and nothing is written for it (unless
        ``force``). Returns one entry per scan, in order; an entry that already is a ScanError (refused
        before it was read) is passed through. Every output of a :class:`Written` scan is on disk
        (with ``fsync``: its folder synced) before this returns, so the client may record it done.
        """
        known = {} if self.options.force or known is None else known
        names = {item.rel: item for item in batch if isinstance(item, Names)}
        got = [item if isinstance(item, ScanError) else self._safe_load(item.rel) for item in batch]
        results: list[Result | Loaded] = []
        for g in got:
            if isinstance(g, Loaded) and known.get(g.rel) == g.scan.sha256:
                results.append(Unchanged(g.rel, g.scan.size, g.scan.mtime_ns, g.timings))
            else:
                results.append(g)
        loaded = [g for g in results if isinstance(g, Loaded)]
        predictions = self._safe_infer(loaded) if loaded else []
        # the masks of every scan inferred, in one postprocess (the second stage's crops in one run)
        ok = [(i, p) for i, p in enumerate(predictions) if not isinstance(p, ScanError)]
        segmented = self._safe_postprocess([loaded[i] for i, _ in ok], [p for _, p in ok]) if ok else []
        per_scan: list[list[Segmentation] | ScanError] = [p if isinstance(p, ScanError) else [] for p in predictions]
        for (i, _), segs in zip(ok, segmented, strict=True):
            per_scan[i] = segs
        masks = iter(per_scan)
        done: list[Result] = []
        for r in results:
            if not isinstance(r, Loaded):
                done.append(r)
                continue
            segs = next(masks)
            done.append(segs if isinstance(segs, ScanError) else self._safe_finish(r, segs, names[r.rel]))
        if self.options.fsync:
            # The renames must be on disk before the ledger says "done"; one sync of the folders for a
            # whole batch rather than one per scan saves a folder fsync per scan (bench/README.md).
            sync_dirs([(self.out_dir / o).parent for w in done if isinstance(w, Written) for o in w.outcome.outputs])
        return done
